//! Interrupted operations end in a known state: gantry is made to fail in the middle of
//! every long operation (at each named crash point, by SIGKILL at random moments, by dockerd
//! going away, by a full state filesystem, by a torn last write) and restarted, and one
//! oracle (`faults/oracle.rs`) compares its view with Docker and the kernel each time.
//!
//! Each test builds its own world (`faults/world.rs`: a network namespace with a private
//! containerd and dockerd), so the oracle sees exactly what gantry made and dockerd can be
//! restarted; at most `GANTRY_FAULTS_WORLDS` (default 2) worlds exist at once. Needs root, `ip`, `nsenter`, `nft`, dockerd, containerd
//! and the test dockerd of `scripts/test.sh` (for the test image): `#[ignore]`d, run by
//! `scripts/test.sh`.
//!
//! `GANTRY_SOAK=1` runs the seeded random-kill loop for `GANTRY_SOAK_SECS` (default 1200)
//! instead of its few CI rounds, and prints how many fault runs it did.

mod common;
#[path = "faults/daemon.rs"]
mod daemon;
#[path = "faults/drivers.rs"]
mod drivers;
#[path = "faults/oracle.rs"]
mod oracle;
#[allow(dead_code)]
#[path = "../src/core/recovery/points.rs"]
mod points;
#[path = "faults/runner.rs"]
mod runner;
#[path = "faults/world.rs"]
mod world;

use std::sync::Mutex;
use std::time::Duration;

use runner::{crash_run, Report, Run, Tear};
use world::World;

/// At most this many worlds at once (`GANTRY_FAULTS_WORLDS`, default 2): each has its own
/// dockerd, and the machine may be small.
fn worlds_at_once() -> usize {
    let n = std::env::var("GANTRY_FAULTS_WORLDS")
        .ok()
        .and_then(|v| v.parse().ok());
    n.unwrap_or(2).max(1)
}

/// A turn to build and use a world, given back on drop; turns are given in the order they
/// were asked for.
struct Turn;

/// (turns asked for, turns given back).
static TURNS: (Mutex<(u64, u64)>, std::sync::Condvar) =
    (Mutex::new((0, 0)), std::sync::Condvar::new());

impl Turn {
    fn take() -> Turn {
        let (counts, freed) = &TURNS;
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = c.0;
        c.0 += 1;
        while ticket >= c.1 + worlds_at_once() as u64 {
            c = freed.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (counts, freed) = &TURNS;
        counts.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        freed.notify_all();
    }
}

/// A world of the test's own, with the test thread inside its namespace. The turn must
/// outlive the world (declare it first). It takes the test dockerd's host (what
/// `require_docker!` yields: the test image comes from there), so a test without one skips,
/// or fails under CI, before building anything.
fn world(_test_dockerd: String) -> (Turn, World) {
    let turn = Turn::take();
    let world = World::new();
    daemon::enter(&world);
    (turn, world)
}

fn soak() -> bool {
    std::env::var("GANTRY_SOAK").is_ok_and(|v| v == "1")
}

/// The operations whose crash points each group runs (groups run in worlds side by side).
const GROUPS: [&[&str]; 8] = [
    &["start"],
    &["stop", "delete"],
    &["import", "load-image", "refresh"],
    &["rebuild", "update", "purge"],
    &[
        "snapshot",
        "backup",
        "provision",
        "service-create",
        "import-image",
    ],
    &["flow-create", "flow-update", "flow-delete"],
    &["template-import", "build", "instantiate", "pool-install"],
    &[
        "intervirt-add",
        "intervirt-remove",
        "intervirt-update",
        "intervirt-wipe",
    ],
];

#[test]
fn every_operation_with_crash_points_is_in_a_group() {
    for p in points::POINTS {
        assert!(
            GROUPS.iter().any(|g| g.contains(&p.op)),
            "{p:?}: add its operation to GROUPS"
        );
    }
}

/// Crashes at every crash point of the operations `ops` (an unsynced one twice: its write
/// dropped, then torn), restarts, checks.
fn crash_points(ops: &[&str]) {
    let (_turn, world) = world(common::docker_host().unwrap_or_default());
    let mut report = Report::default();
    // GANTRY_FAULTS_ONLY=<text>[,<text>...]: only the points whose name or operation
    // contains one of them.
    let only = std::env::var("GANTRY_FAULTS_ONLY").unwrap_or_default();
    for (i, point) in points::POINTS.iter().enumerate() {
        let picked = only
            .split(',')
            .any(|o| point.name.contains(o) || point.op.contains(o));
        if !ops.contains(&point.op) || !picked {
            continue;
        }
        let tears: &[Tear] = match point.crash {
            points::Crash::Exit => &[Tear::Missing],
            points::Crash::Unsynced => &[Tear::Missing, Tear::Torn],
        };
        for (j, tear) in tears.iter().enumerate() {
            let what = format!("{}@{} ({}, {tear:?})", point.name, point.hit, point.op);
            report.add(&what, crash_run(&world, &format!("p{i}-{j}"), point, *tear));
        }
    }
    report.finish(&format!("crash points of {ops:?}"));
}

/// Every crash point, the groups in worlds of their own side by side.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn every_crash_point_ends_in_a_known_state() {
    let _host = require_docker!();
    let failed = side_by_side(&GROUPS, crash_points);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Runs `f` for each of `items` on a thread of its own; the messages of those that failed.
fn side_by_side<T: Copy + Send + 'static>(items: &[T], f: fn(T)) -> Vec<String> {
    let threads: Vec<_> = items
        .iter()
        .map(|&i| std::thread::spawn(move || f(i)))
        .collect();
    let panics = threads.into_iter().filter_map(|t| t.join().err());
    panics
        .map(|e| {
            e.downcast::<String>()
                .map_or("a thread failed".to_string(), |m| *m)
        })
        .collect()
}

/// The import a SIGKILL interrupted while Docker was still registering an image it had
/// received whole (the crash point 20 ms after the second 128 MiB image went out): the
/// restart's recovery runs while that load is in flight, and the image Docker creates
/// afterwards is removed too (it used to survive the restart). Docker could be quicker than
/// the restart (it was not in 4 tries of 4); up to three tries, each of which must leave
/// nothing, until one saw the race.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_image_docker_finishes_loading_after_the_crash_is_removed() {
    let (_turn, world) = world(require_docker!());
    let raced = (0..3).any(|n| late_load(&world, n));
    assert!(
        raced,
        "Docker always finished before the recovery looked: raise GANTRY_FAULTS_BIG_MIB"
    );
}

/// One try: whether the recovery saw the image appear after it had looked.
fn late_load(world: &World, n: usize) -> bool {
    let mut run = Run::new(world, &format!("late-load-{n}"), "import", "");
    run.big = true;
    // Twice the crash points' big images (128 MiB by default, as in the report that found
    // it): Docker must still be registering one when gantry is back.
    world.big_images(2 * drivers::big_mib());
    // SIGKILL once the whole second image went to Docker (and Docker has not answered).
    run.crash_at("import.load-in-flight@2").unwrap();
    let problems = run.restart_and_check();
    assert!(problems.is_empty(), "{problems:#?}");
    let late = "removed an image Docker loaded after an interrupted operation";
    let raced = run.d.log().contains(late);
    eprintln!("late load, try {n}: the recovery saw the image appear: {raced}");
    raced
}

/// An import crashed once the first image's manifest was noted (Docker never got that
/// image whole), then tried again at once after the restart, as an operator would, while
/// the recovery still watches for the first image: the new import must keep its images (the
/// watch used to remove the first one as soon as the new import had loaded it again).
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_import_tried_again_at_once_keeps_its_images() {
    let (_turn, world) = world(require_docker!());
    let mut run = Run::new(&world, "retry", "import", "");
    run.big = true;
    run.crash_at("import.manifest-noted@1").unwrap();
    let id = run.made.apps[0].clone();
    let bundle = drivers::big_bundle(&world, id.trim_end_matches(":1"));
    // A load Docker has in flight keeps the watch going (whoever's it is): the import tried
    // again surely meets the watch.
    let held = world.hold_a_load();
    run.d.start(None);
    let (status, body) = std::thread::scope(|s| {
        let retry = s.spawn(|| drivers::import(&run.d, &bundle));
        std::thread::sleep(Duration::from_secs(3));
        held.end();
        retry.join().unwrap()
    });
    assert_eq!(status, 200, "the import tried again: {body}");
    let waited = run.d.log().contains("waiting for the clean-up");
    // The oracle, then the app is started (which needs every image it recorded).
    let problems = run.check();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(waited, "the import tried again did not meet the watch");
}

/// A start killed after the first of three chained services started: the restart finishes
/// it (the app used to stay Partially Running).
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_start_killed_midway_is_finished() {
    let (_turn, world) = world(require_docker!());
    let mut run = Run::new(&world, "half-start", "start", "");
    let id = run.made.apps[0].clone();
    run.crash_at("compose.up.service-started@1").unwrap();
    let running = world.docker_lines(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.gantry.app-id={id}"),
    ]);
    assert_eq!(
        running.len(),
        1,
        "the crash did not leave the app half started"
    );
    run.d.start(None);
    assert_eq!(drivers::status_of(&run.d, &id), "Running");
    let problems = run.check();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The operations a seeded loop interrupts, with how long each runs at most (ms).
const KILLABLE: &[(&str, u64)] = &[
    ("import", 1500),
    ("load-image", 800),
    ("start", 2000),
    ("stop", 2000),
    ("delete", 2000),
    ("refresh", 300),
    ("rebuild", 2000),
    ("update", 3000),
    ("purge", 2000),
    ("snapshot", 800),
    ("backup", 800),
    ("provision", 2500),
    ("service-create", 1000),
    ("import-image", 1500),
    ("flow-create", 500),
    ("flow-update", 2500),
    ("flow-delete", 500),
    ("intervirt-add", 1200),
    ("intervirt-remove", 1500),
    ("intervirt-update", 800),
    ("intervirt-wipe", 1000),
];

fn seed() -> u64 {
    let seed = std::env::var("GANTRY_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    seed.unwrap_or(0x5eed_cafe)
}

/// SIGKILL at a random moment of a random operation, in a seeded, bounded loop (one round
/// per operation; GANTRY_SOAK=1: for GANTRY_SOAK_SECS).
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn sigkill_at_random_moments() {
    let (_turn, world) = world(require_docker!());
    let seed = seed();
    let mut rng = runner::Rng::new(seed);
    let mut report = Report::default();
    let soak_secs: u64 = std::env::var("GANTRY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1200);
    let began = std::time::Instant::now();
    for round in 0.. {
        let more = match soak() {
            true => began.elapsed() < Duration::from_secs(soak_secs),
            false => round < KILLABLE.len(),
        };
        if !more {
            break;
        }
        let (op, max) = KILLABLE[rng.below(KILLABLE.len() as u64) as usize];
        let delay = rng.below(max);
        let mut run = Run::new(&world, &format!("k{round}"), op, "");
        let request = run.trigger();
        std::thread::sleep(Duration::from_millis(delay));
        run.d.kill();
        let _ = request.join();
        report.add(
            &format!("SIGKILL {delay} ms into {op} (seed {seed})"),
            run.restart_and_check(),
        );
    }
    report.finish(&format!("random kills (seed {seed})"));
}

/// dockerd stopped (its containers with it) in the middle of an operation and started again
/// while gantry runs on: once Docker answers, nothing is half done and nothing is busy.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn dockerd_restarted_mid_operation() {
    let (_turn, mut world) = world(require_docker!());
    let mut report = Report::default();
    let ops = [
        ("import", 300),
        ("start", 400),
        // Stop and delete: once the app's first container has stopped (`dockerd_moment`).
        ("stop", 0),
        ("delete", 0),
        ("intervirt-add", 200),
    ];
    let rounds = if soak() { 3 } else { 1 };
    let mut runs: Vec<(usize, &str, u64)> = (0..rounds)
        .flat_map(|r| ops.iter().map(move |&(op, delay)| (r, op, delay)))
        .collect();
    if soak() {
        // Then once each operation the later dialects added.
        runs.extend(LATER_OPS.iter().map(|&(op, delay)| (rounds, op, delay)));
    }
    for (round, op, delay) in runs {
        let problems = dockerd_run_in_working_docker(&mut world, round, op, delay);
        report.add(&format!("dockerd restarted {delay} ms into {op}"), problems);
    }
    report.finish("dockerd restarts");
}

/// A dockerd run, repeated (twice at most) in a fresh world when dockerd itself cannot start
/// again: with no Docker there is nothing to judge gantry by. Said loudly each time.
fn dockerd_run_in_working_docker(
    world: &mut World,
    round: usize,
    op: &'static str,
    delay: u64,
) -> Vec<String> {
    for attempt in 0.. {
        let tag = match attempt {
            0 => format!("d{round}-{op}"),
            n => format!("d{round}-{op}-r{n}"),
        };
        match dockerd_run(world, &tag, op, delay) {
            Ok(problems) => return problems,
            Err(fault) if attempt < 2 => {
                eprintln!("    DOCKER FAULT, not gantry's: {fault}");
                eprintln!("    (the run is repeated in a fresh world: a new dockerd on new data)");
                let fresh = World::new();
                daemon::enter(&fresh);
                *world = fresh;
            }
            Err(fault) => return vec![format!("dockerd could not start again, 3 times: {fault}")],
        }
    }
    unreachable!("the loop returns")
}

/// The operations of the Distillery, duxcore and Flow Manager dialects, with when dockerd is
/// stopped under them in soak mode (ms).
const LATER_OPS: &[(&str, u64)] = &[
    ("rebuild", 400),
    ("update", 600),
    ("purge", 400),
    ("provision", 800),
    ("service-create", 300),
    ("import-image", 300),
    ("flow-create", 200),
    ("flow-update", 600),
    ("flow-delete", 200),
];

fn dockerd_run(
    world: &World,
    tag: &str,
    op: &'static str,
    delay: u64,
) -> Result<Vec<String>, String> {
    let mut run = Run::new(world, tag, op, "");
    let request = run.trigger();
    dockerd_moment(world, tag, op, delay);
    world.stop_dockerd();
    let answer = request.join().ok().flatten();
    world.try_start_dockerd()?;
    eprintln!("    ({op} answered {answer:?})");
    run.note_committed_loads();
    let reachable = common::wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        (run.d.get("/healthz").1["status"] == "ok").then_some(())
    });
    let mut problems = run.check();
    if reachable.is_none() {
        problems.push("gantry never saw Docker again".into());
    }
    Ok(problems)
}

/// Waits for the moment dockerd is stopped under `op`: `delay` ms in; for a stop or a
/// delete, as soon as one of the app's running containers has stopped (10 s at most), so
/// dockerd goes down while gantry takes the others down. Not later: Docker 20.10 stopped
/// while it removes the app's network (the last step) may never start again (a
/// `reservePools` panic at each start; three runs in a row once the machine was fast enough
/// for a fixed 400 ms to land there).
fn dockerd_moment(world: &World, tag: &str, op: &str, delay: u64) {
    std::thread::sleep(Duration::from_millis(delay));
    if !matches!(op, "stop" | "delete") {
        return;
    }
    let name = format!("name={tag}");
    let running = || {
        let args = ["ps", "-q", "--filter", &name, "--filter", "status=running"];
        String::from_utf8_lossy(&world.docker(&args).stdout)
            .split_whitespace()
            .count()
    };
    let before = running();
    let fewer = common::wait_for(Duration::from_secs(10), Duration::from_millis(2), || {
        (before == 0 || running() < before).then_some(())
    });
    if fewer.is_none() {
        eprintln!("    (none of the {before} containers of {tag} stopped within 10 s)");
    }
}

/// A tmpfs of fixed size, unmounted on drop (also when the test fails).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &std::path::Path, mib: u32) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let size = format!("size={mib}m");
        common::run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &size,
                "gantry-fault",
                at.to_str().unwrap(),
            ],
        );
        SmallFs(at.to_path_buf())
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.0).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = common::run("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

/// The state directory on a small filesystem that fills up during an import: while the
/// upload is written, and while the import's intent is. Each import fails, leaves nothing,
/// and gantry goes on serving: an import that fits works afterwards.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_full_state_filesystem_fails_imports_cleanly() {
    let (_turn, world) = world(require_docker!());
    let dir = world.dir.join("run-small");
    let fs = SmallFs::mount(&dir.join("state"), 16);
    let mut run = Run::new(&world, "small", "import", "[apps]\nreserve_bytes = 0\n");
    let [(i1, t1), (i2, t2)] = world.app_images();
    let compose = drivers::chain_compose(i1, i2);
    let asset = vec![7u8; 24 << 20];
    let mut report = Report::default();
    let cases = [
        "the upload fills the filesystem",
        "the filesystem is full before the intent",
    ];
    for (n, what) in cases.iter().enumerate() {
        let filler = (n == 1).then(|| fill(&fs));
        let name = format!("Full{n}");
        let bundle = drivers::stored_zip(&[
            (
                "config.yml",
                format!("Name: {name}\nVersion: 1\n").as_bytes(),
            ),
            ("compose.yaml", compose.as_bytes()),
            ("assets/big.bin", &asset),
            ("docker/one.tar", t1),
            ("docker/two.tar", t2),
        ]);
        let (status, body) = drivers::import(&run.d, &bundle);
        let mut problems = Vec::new();
        if status == 200 || status == 0 {
            problems.push(format!("the import answered {status} {body}"));
        }
        drop(filler);
        let _ = std::fs::remove_file(dir.join("state/filler"));
        problems.extend(oracle::check(&world, &run.d, &run.made));
        report.add(what, problems);
    }
    // A bundle that fits goes in.
    let (status, body) = drivers::import(&run.d, &drivers::chain_bundle(&world, "Fits"));
    assert_eq!(status, 200, "{body}");
    report.add("an import that fits, afterwards", run.check());
    report.finish("a full state filesystem");
}

/// Fills `fs` up to its last 2 KiB with a file (`filler`), kept while it is open.
fn fill(fs: &SmallFs) -> std::fs::File {
    use std::io::Write;
    let path = fs.0.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while fs.free() > 2048 {
        let n = (fs.free() - 2048).min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n.max(1)]).is_err() {
            break;
        }
    }
    f
}
