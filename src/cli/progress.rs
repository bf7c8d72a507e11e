//! Progress on stderr: on a terminal one line redrawn in place (bytes, rate, ETA, the
//! server's current step); elsewhere (a log, a pipe) each new server step as a line of its
//! own; nothing with `--quiet` or `--json`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the terminal line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Lines,
    Bar,
}

pub struct Progress {
    mode: Mode,
    label: String,
    total: Option<u64>,
    done: u64,
    began: Instant,
    step: String,
    fraction: Option<f64>,
    drawn: Option<Instant>,
}

impl Progress {
    /// Progress of `label`; `quiet` turns it off.
    pub fn new(label: &str, total: Option<u64>, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            label: label.to_string(),
            total,
            done: 0,
            began: Instant::now(),
            step: String::new(),
            fraction: None,
            drawn: None,
        }
    }

    pub fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
    }

    /// Bytes transferred so far.
    pub fn bytes(&mut self, done: u64) {
        self.done = done;
        self.draw(false);
    }

    /// The server's current step and how far it is, when it says.
    pub fn step(&mut self, step: &str, fraction: Option<f64>) {
        self.fraction = fraction;
        if step == self.step {
            self.draw(false);
            return;
        }
        self.step = step.to_string();
        if self.mode == Mode::Lines && !step.is_empty() {
            eprintln!("{}: {step}", self.label);
        }
        self.draw(true);
    }

    /// Ends the line, with a last redraw.
    pub fn finish(&mut self) {
        if self.mode == Mode::Bar && self.drawn.is_some() {
            self.draw(true);
            eprintln!();
        }
        self.mode = Mode::Off;
    }

    fn draw(&mut self, force: bool) {
        if self.mode != Mode::Bar {
            return;
        }
        let now = Instant::now();
        if !force && self.drawn.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.drawn = Some(now);
        let line = self.line(now - self.began, width());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    fn line(&self, elapsed: Duration, width: usize) -> String {
        let mut out = self.label.clone();
        if let Some(total) = self.total.filter(|t| *t > 0) {
            let f = (self.done as f64 / total as f64).clamp(0.0, 1.0);
            out.push_str(&format!(" {} {:>3.0}% ", bar(f, 20), f * 100.0));
            out.push_str(&format!("{}/{}", size(self.done), size(total)));
        } else if self.done > 0 {
            out.push_str(&format!(" {}", size(self.done)));
        }
        let secs = elapsed.as_secs_f64();
        if self.done > 0 && secs > 0.2 {
            let rate = self.done as f64 / secs;
            out.push_str(&format!(" {}/s", size(rate as u64)));
            if let Some(total) = self.total.filter(|t| *t > self.done && rate > 0.0) {
                let eta = (total - self.done) as f64 / rate;
                out.push_str(&format!(" ETA {}", duration(eta)));
            }
        }
        if !self.step.is_empty() {
            out.push_str(" | ");
            if let Some(f) = self.fraction {
                out.push_str(&format!("{:.0}% ", f * 100.0));
            }
            out.push_str(&self.step);
        }
        truncate(&out, width)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The terminal's width as the shell exports it, else 100 columns.
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|w| *w >= 20)
        .unwrap_or(100)
        - 1
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn bar(fraction: f64, cells: usize) -> String {
    let full = (fraction * cells as f64).round() as usize;
    format!(
        "[{}{}]",
        "#".repeat(full),
        "-".repeat(cells - full.min(cells))
    )
}

/// A byte count the way people read it: `512 B`, `1.5 KiB`, `27.0 MiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `42s`, `3m05s`, `1h02m`.
pub fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(27 << 20), "27.0 MiB");
        assert_eq!(duration(4.4), "4s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }

    #[test]
    fn the_line_shows_bytes_rate_eta_and_the_server_step() {
        let mut p = Progress::new("import", Some(100 << 20), true);
        p.done = 25 << 20;
        p.step = "loading docker/web.tar".into();
        p.fraction = Some(0.5);
        let line = p.line(Duration::from_secs(5), 200);
        assert!(
            line.starts_with("import [#####---------------]  25% 25.0 MiB/100.0 MiB"),
            "{line}"
        );
        assert!(
            line.contains(" 5.0 MiB/s ETA 15s | 50% loading docker/web.tar"),
            "{line}"
        );
        let mut p = Progress::new("start", None, true);
        p.step = "Creating web_1 ...".into();
        assert_eq!(
            p.line(Duration::from_secs(1), 200),
            "start | Creating web_1 ..."
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(bar(1.0, 4), "[####]");
    }
}
