//! One fault run: an operation set up and started, gantry made to fail in the middle (a
//! crash point, a SIGKILL, dockerd going away), gantry restarted on the same state, then the
//! oracle, the next operations and the clean-up, whose problems the run returns.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::daemon::{Crashed, Daemon};
use super::drivers::{self, Made, Names};
use super::oracle;
use super::points::{Crash, Point};
use super::world::World;

/// How the last write before an unsynced crash point is damaged (as a power cut would).
#[derive(Debug, Clone, Copy)]
pub enum Tear {
    /// None of it reached the disk.
    Missing,
    /// Half of it did.
    Torn,
}

/// A run in progress: its daemon, names and what it made.
pub struct Run<'w> {
    pub world: &'w World,
    pub d: Daemon,
    pub names: Names,
    pub made: Made,
    pub op: &'static str,
    /// The operation's images are big (loading them takes Docker a while).
    pub big: bool,
}

impl<'w> Run<'w> {
    /// A fresh daemon (its own state directory) with `op` set up.
    pub fn new(world: &'w World, tag: &str, op: &'static str, config: &str) -> Run<'w> {
        let dir: PathBuf = world.dir.join(format!("run-{tag}"));
        let mut d = Daemon::new(world, &dir, config);
        d.start(None);
        let mut names = Names::new(tag);
        let made = drivers::setup(op, world, &d, &mut names);
        Run {
            world,
            d,
            names,
            made,
            op,
            big: false,
        }
    }

    /// Starts the operation; the request's thread.
    pub fn trigger(&mut self) -> JoinHandle<Option<Value>> {
        let (world, d) = (self.world, &self.d);
        drivers::trigger(self.op, world, d, &mut self.names, &mut self.made, self.big)
    }

    /// After a fault: an image load whose intent is gone was committed (its image stays).
    pub fn note_committed_loads(&mut self) {
        let intents = std::fs::read_dir(self.d.state().join("intents"));
        let pending = intents.into_iter().flatten().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with("-load-image.json")
        });
        if !pending {
            self.made.loaded = self.made.loads.clone();
        }
        let intents = std::fs::read_dir(self.d.state().join("duxcore/intents"));
        let importing = intents.into_iter().flatten().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with("-import-image.json")
        });
        self.made.import_committed = self.op == "import-image" && !importing;
    }

    /// Restarts gantry armed with `spec` (`name@hit`) and runs the operation into it.
    pub fn crash_at(&mut self, spec: &str) -> Result<Crashed, String> {
        self.d.start(Some(spec));
        let request = self.trigger();
        let crashed = self.d.wait_crash(Duration::from_secs(120));
        let answer = request.join().ok().flatten();
        crashed.ok_or_else(|| {
            self.d.kill();
            let _ = oracle::left_over(self.world);
            format!("{spec} was never reached (the request answered {answer:?})")
        })
    }

    /// gantry again on the same state, then the oracle, the next operations and the
    /// clean-up: every problem found.
    pub fn restart_and_check(&mut self) -> Vec<String> {
        self.restart();
        self.check()
    }

    /// gantry again on the same state.
    pub fn restart(&mut self) {
        self.note_committed_loads();
        let clock = std::time::Instant::now();
        self.d.start(None);
        eprintln!("    (restarted in {:.1} s)", clock.elapsed().as_secs_f64());
    }

    /// The oracle, the next operations and the clean-up, on the running daemon.
    pub fn check(&mut self) -> Vec<String> {
        let clock = std::time::Instant::now();
        let mut problems = oracle::check(self.world, &self.d, &self.made);
        let checked = clock.elapsed();
        problems.extend(drivers::next_and_clean(
            self.world,
            &self.d,
            &self.made,
            &mut self.names,
            self.op,
        ));
        let next = clock.elapsed();
        self.d.kill();
        eprintln!(
            "    (oracle {:.1} s, next operations {:.1} s)",
            checked.as_secs_f64(),
            (next - checked).as_secs_f64()
        );
        if !problems.is_empty() {
            self.explain();
        }
        let left = oracle::left_over(self.world);
        problems.extend(
            left.into_iter()
                .map(|l| format!("left after the clean-up: {l}")),
        );
        problems
    }

    /// What a failed run leaves to read: gantry's log of this run (no debug lines) and
    /// Docker's containers.
    fn explain(&self) {
        let log = self.d.log();
        let lines = log.lines().filter(|l| !l.contains(" DEBUG "));
        eprintln!("    ----- gantry's log ({}):", self.d.dir.display());
        lines.for_each(|l| eprintln!("    | {l}"));
        let ps = self.world.docker(&["ps", "-a", "--no-trunc"]);
        eprintln!(
            "    ----- docker ps -a:\n{}",
            String::from_utf8_lossy(&ps.stdout)
        );
        eprintln!("    ----- dockerd's last errors:");
        let errors = self.world.dockerd_errors();
        errors.iter().for_each(|l| eprintln!("    | {l}"));
    }
}

/// Crashes `op` at `point`, damages the last write for an unsynced point, restarts; the
/// problems found. A load that must still be in flight at the crash uses big images.
pub fn crash_run(world: &World, tag: &str, point: &Point, tear: Tear) -> Vec<String> {
    let clock = std::time::Instant::now();
    let mut run = Run::new(world, tag, point.op, "");
    run.big = point.name.ends_with("load-in-flight");
    let set_up = clock.elapsed();
    let crashed = match run.crash_at(&format!("{}@{}", point.name, point.hit)) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let crashed_at = clock.elapsed();
    if point.crash == Crash::Unsynced {
        damage(&crashed.note, tear);
    }
    run.restart();
    // What the operation's rule makes of it (once nothing is pending), then the oracle.
    let _ = oracle::settle(&run.d);
    let log = run.d.log();
    let recovered = log
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("interrupted"));
    recovered.for_each(|l| eprintln!("    recovery: {}", l.split(" INFO ").nth(1).unwrap_or(l)));
    let mut problems = drivers::expected(point.op, point.name, world, &run.d, &run.made);
    problems.extend(run.check());
    eprintln!(
        "    (set up {:.1} s, crashed at {:.1} s, checked at {:.1} s)",
        set_up.as_secs_f64(),
        crashed_at.as_secs_f64(),
        clock.elapsed().as_secs_f64()
    );
    problems
}

/// Cuts the file a crash point named back to what was durable (Missing) or half-way
/// (Torn).
fn damage(note: &Value, tear: Tear) {
    let file = note["file"]
        .as_str()
        .expect("an unsynced crash point names its file");
    let durable = note["durable"].as_u64().unwrap_or(0);
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let keep = match tear {
        Tear::Missing => durable,
        Tear::Torn => durable + (len.saturating_sub(durable)) / 2,
    };
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(keep).unwrap();
}

/// A small deterministic generator (xorshift64*) for the seeded loops.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The fault runs' results, reported together.
#[derive(Default)]
pub struct Report {
    pub runs: usize,
    failures: Vec<String>,
}

impl Report {
    pub fn add(&mut self, what: &str, problems: Vec<String>) {
        self.runs += 1;
        let status = if problems.is_empty() { "ok" } else { "FAILED" };
        eprintln!("fault run {}: {what}: {status}", self.runs);
        for p in problems {
            eprintln!("    {p}");
            self.failures.push(format!("{what}: {p}"));
        }
    }

    /// Says how many runs `what` did, and fails with every problem found.
    pub fn finish(&self, what: &str) {
        eprintln!("{what}: {} fault runs", self.runs);
        assert!(
            self.failures.is_empty(),
            "{} problem(s) in {} fault runs:\n{}",
            self.failures.len(),
            self.runs,
            self.failures.join("\n")
        );
    }
}
