//! A container's output as lines: frames split into lines per stream, and the last lines of
//! the log file Docker's `json-file` driver writes, read from its end.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::engine::LogLine;

/// The longest line a stream of lines holds back waiting for its end: a longer one comes in
/// pieces of this size (Docker's log drivers store a long line as 16 KiB messages too), so a
/// container writing without newlines does not grow the reader's memory.
pub const LINE_PIECE_MAX: usize = 16 * 1024;

/// Output chunks being split into lines, per stream (stdout, stderr).
pub struct LineSplitter {
    partial: [String; 2],
    /// A line longer than this (bytes) is passed on in pieces.
    max_line: usize,
    ready: VecDeque<LogLine>,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Default::default(),
            max_line: max_line.max(1),
            ready: VecDeque::new(),
        }
    }

    /// A chunk need not end at a line end: the rest waits for the next chunk of its stream.
    pub fn push(&mut self, stdout: bool, chunk: &[u8]) {
        let max = self.max_line;
        let buf = &mut self.partial[usize::from(stdout)];
        buf.push_str(&String::from_utf8_lossy(chunk));
        let mut emit = |text| self.ready.push_back(LogLine { stdout, text });
        while let Some(pos) = buf.find('\n') {
            let mut line: String = buf.drain(..=pos).collect();
            line.truncate(line.trim_end_matches(['\n', '\r']).len());
            while line.len() > max {
                emit(cut_front(&mut line, max));
            }
            emit(line);
        }
        while buf.len() > max {
            emit(cut_front(buf, max));
        }
    }

    /// At the end: the unterminated last lines.
    pub fn flush(&mut self) {
        for (i, rest) in std::mem::take(&mut self.partial).into_iter().enumerate() {
            if !rest.is_empty() {
                self.ready.push_back(LogLine {
                    stdout: i == 1,
                    text: rest,
                });
            }
        }
    }

    /// The next complete line, oldest first.
    pub fn next_line(&mut self) -> Option<LogLine> {
        self.ready.pop_front()
    }
}

/// Removes and returns the first `max` bytes of `text` (fewer, to end at a character).
fn cut_front(text: &mut String, max: usize) -> String {
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        cut = text.chars().next().map_or(0, char::len_utf8);
    }
    let rest = text.split_off(cut);
    std::mem::replace(text, rest)
}

/// One record of a `json-file` log: a line, or a piece of a long one, as the container wrote
/// it (with its newline, if it had one).
#[derive(serde::Deserialize)]
struct Record {
    log: String,
    stream: String,
}

/// The most of a log file's end read to find its last lines (a record holds at most 16 KiB
/// of output, which JSON escaping can make a few times longer).
const READ_MOST: u64 = 1 << 20;

/// The last `n` lines of a `json-file` log, read from the end of the file: the lines of its
/// last `2 n` records (a long line takes several), the last `n` of them. `None` when the file
/// cannot tell: a record does not parse, the records are too long to read here, or the file
/// holds fewer lines and an older (rotated) file may hold the rest.
pub fn json_file_tail(path: &Path, n: usize) -> io::Result<Option<Vec<String>>> {
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let file = File::open(path)?;
    let (text, whole) = read_end(&file, 2 * n)?;
    let mut records: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if !whole && !records.is_empty() {
        // The first line read may be the end of a record.
        records.remove(0);
    }
    if records.len() > 2 * n {
        records.drain(..records.len() - 2 * n);
    } else if !whole {
        return Ok(None);
    }
    let mut lines = LineSplitter::new(LINE_PIECE_MAX);
    for r in records {
        let Ok(r) = serde_json::from_str::<Record>(r) else {
            return Ok(None);
        };
        lines.push(r.stream != "stderr", r.log.as_bytes());
    }
    lines.flush();
    let mut out: VecDeque<String> = std::iter::from_fn(|| lines.next_line())
        .map(|l| l.text)
        .collect();
    if out.len() < n && whole && rotated(path) {
        return Ok(None);
    }
    while out.len() > n {
        out.pop_front();
    }
    Ok(Some(out.into()))
}

/// The end of `file` holding at least `n` whole records (lines), or the whole file: the text
/// and whether it is the whole file.
fn read_end(file: &File, n: usize) -> io::Result<(String, bool)> {
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let step = (64 * 1024).min(start);
        start -= step;
        let mut chunk = vec![0; step as usize];
        file.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        let newlines = buf.iter().filter(|b| **b == b'\n').count();
        if start == 0 || newlines > n || (len - start) >= READ_MOST {
            break;
        }
    }
    Ok((String::from_utf8_lossy(&buf).into_owned(), start == 0))
}

/// Whether the log was rotated: its older part is in `<file>.1` (or `.1.gz`).
fn rotated(path: &Path) -> bool {
    let name = path.as_os_str().to_string_lossy();
    [".1", ".1.gz"]
        .iter()
        .any(|s| Path::new(&format!("{name}{s}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[(bool, &str)]) -> Vec<(bool, String)> {
        let mut s = LineSplitter::new(max);
        for (stdout, c) in chunks {
            s.push(*stdout, c.as_bytes());
        }
        s.flush();
        std::iter::from_fn(|| s.next_line())
            .map(|l| (l.stdout, l.text))
            .collect()
    }

    #[test]
    fn a_long_line_comes_in_pieces_at_character_boundaries() {
        let text = format!("{}\n{}", "é".repeat(5), "x".repeat(9));
        let got: Vec<String> = split(4, &[(true, &text)])
            .into_iter()
            .map(|l| l.1)
            .collect();
        assert_eq!(got, ["éé", "éé", "é", "xxxx", "xxxx", "x"]);
    }

    fn record(log: &str, stream: &str) -> String {
        let r = serde_json::json!({"log": log, "stream": stream, "time": "2024-01-01T00:00:00Z"});
        format!("{r}\n")
    }

    #[test]
    fn the_last_records_of_a_json_file_log_become_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut text: String = (1..=5000)
            .map(|i| record(&format!("line{i}\n"), "stdout"))
            .collect();
        // A long line Docker stored in two records, the last written to stderr.
        text.push_str(&record("long-", "stderr"));
        text.push_str(&record("end\n", "stderr"));
        std::fs::write(&path, &text).unwrap();
        let got = json_file_tail(&path, 3).unwrap().unwrap();
        assert_eq!(got, ["line4999", "line5000", "long-end"]);
        // Fewer records than asked: all of them, unless an older file holds the rest.
        let short = dir.path().join("s-json.log");
        std::fs::write(&short, record("only\n", "stdout")).unwrap();
        assert_eq!(json_file_tail(&short, 5).unwrap().unwrap(), ["only"]);
        std::fs::write(dir.path().join("s-json.log.1"), "").unwrap();
        assert_eq!(json_file_tail(&short, 5).unwrap(), None);
        // Not a json-file log: it cannot tell.
        let other = dir.path().join("o.log");
        std::fs::write(&other, "plain text\n").unwrap();
        assert_eq!(json_file_tail(&other, 1).unwrap(), None);
        assert!(json_file_tail(&dir.path().join("missing"), 1).is_err());
        // Records longer than what is read here: it cannot tell.
        let huge = dir.path().join("h-json.log");
        let big = "x".repeat(600 * 1024);
        std::fs::write(
            &huge,
            [&big, &big, &big].map(|b| record(b, "stdout")).concat(),
        )
        .unwrap();
        assert_eq!(json_file_tail(&huge, 1).unwrap(), None);
    }
}
