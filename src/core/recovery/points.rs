//! The crash points: every named step of every long operation where the fault tests make
//! gantry exit abruptly (see `crash.rs`). Pure data with no dependencies: the fault tests
//! (`tests/faults/`) include this file, run every row and check the state after a restart.
//!
//! A row is a point's name, the operation whose test driver reaches it and which hit of the
//! name to crash at (a compose step is hit once per service). Code names a point with
//! `recovery::crash_point("name")`; a unit test checks that the names in the code and the
//! rows here are the same, and that docs/DECISIONS.md ("Interrupted operations") lists every
//! one with its recovery rule.

/// How the fault tests treat the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The process exits there; everything written before is on disk.
    Exit,
    /// The process exits between a write and its fsync; the tests then tear or drop that last
    /// write (as a power cut would) before the restart.
    Unsynced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub name: &'static str,
    /// The operation whose driver reaches the point (an intent kind's name).
    pub op: &'static str,
    /// Crash at this hit of the name (1 = the first).
    pub hit: u32,
    pub crash: Crash,
}

const fn exit(name: &'static str, op: &'static str) -> Point {
    Point {
        name,
        op,
        hit: 1,
        crash: Crash::Exit,
    }
}

const fn nth(name: &'static str, op: &'static str, hit: u32) -> Point {
    Point {
        name,
        op,
        hit,
        crash: Crash::Exit,
    }
}

const fn unsynced(name: &'static str, op: &'static str) -> Point {
    Point {
        name,
        op,
        hit: 1,
        crash: Crash::Unsynced,
    }
}

/// Every crash point, by operation, in the order an operation reaches them.
pub const POINTS: &[Point] = &[
    // import (the REST import, images streamed while the upload arrives)
    exit("import.intent-written", "import"),
    unsynced("intent.unsynced", "import"),
    exit("import.manifest-noted", "import"),
    exit("import.load-in-flight", "import"),
    exit("import.image-loaded", "import"),
    unsynced("store.record.unsynced", "import"),
    exit("import.staged", "import"),
    exit("store.insert.renamed", "import"),
    exit("import.stored", "import"),
    // image load (POST /system/images)
    exit("load-image.intent-written", "load-image"),
    exit("load-image.manifest-noted", "load-image"),
    exit("load-image.load-in-flight", "load-image"),
    exit("load-image.loaded", "load-image"),
    // start (a chain of three services)
    exit("start.intent-written", "start"),
    exit("compose.up.prepared", "start"),
    exit("compose.up.created", "start"),
    nth("compose.up.service-started", "start", 1),
    nth("compose.up.service-started", "start", 2),
    exit("start.done", "start"),
    // stop
    exit("stop.intent-written", "stop"),
    exit("compose.down.container-stopped", "stop"),
    nth("compose.down.container-removed", "stop", 2),
    exit("compose.down.networks-removed", "stop"),
    exit("stop.done", "stop"),
    // delete
    exit("delete.intent-written", "delete"),
    exit("compose.down.container-removed", "delete"),
    exit("delete.stopped", "delete"),
    exit("delete.images-removed", "delete"),
    exit("store.remove.renamed", "delete"),
    // refresh of all apps
    exit("refresh.intent-written", "refresh"),
    // operations on app instances (the Distillery's calls)
    exit("rebuild.intent-written", "rebuild"),
    exit("rebuild.down", "rebuild"),
    nth("compose.up.service-started", "rebuild", 1),
    exit("rebuild.done", "rebuild"),
    exit("update.intent-written", "update"),
    exit("update.pulled", "update"),
    exit("compose.up.old-removed", "update"),
    exit("update.recreated", "update"),
    exit("update.committed", "update"),
    exit("purge.intent-written", "purge"),
    nth("compose.down.container-stopped", "purge", 1),
    exit("purge.stopped", "purge"),
    exit("purge.images-removed", "purge"),
    nth("store.remove.renamed", "purge", 1),
    exit("snapshot.intent-written", "snapshot"),
    exit("snapshot.written", "snapshot"),
    exit("backup.intent-written", "backup"),
    nth("snapshot.written", "backup", 1),
    exit("backup.renamed", "backup"),
    exit("backup.pruned", "backup"),
    exit("provision.intent-written", "provision"),
    nth("import.stored", "provision", 1),
    exit("provision.imported", "provision"),
    nth("compose.up.service-started", "provision", 1),
    exit("provision.done", "provision"),
    // templates (a template of two services built from the test image; no images of its own)
    nth("import.intent-written", "template-import", 1),
    nth("import.staged", "template-import", 1),
    nth("import.stored", "template-import", 1),
    exit("build.intent-written", "build"),
    exit("build.image-noted", "build"),
    nth("build.image-noted", "build", 3),
    exit("build.done", "build"),
    exit("instantiate.intent-written", "instantiate"),
    nth("build.image-noted", "instantiate", 2),
    exit("instantiate.stored", "instantiate"),
    // App Pool: installing an app from the store (a download into the pool's storage)
    exit("pool-install.intent-written", "pool-install"),
    exit("pool-install.downloaded", "pool-install"),
    exit("pool-install.staged", "pool-install"),
    exit("pool-install.stored", "pool-install"),
    // duxcore services
    exit("service-create.intent-written", "service-create"),
    exit("service-create.created", "service-create"),
    exit("service-create.recorded", "service-create"),
    exit("service-create.fetched", "service-create"),
    exit("import-image.intent-written", "import-image"),
    exit("import-image.in-flight", "import-image"),
    exit("import-image.imported", "import-image"),
    // Flow Manager
    exit("flow-create.intent-written", "flow-create"),
    exit("flow-create.created", "flow-create"),
    exit("flow-update.intent-written", "flow-update"),
    exit("flow-update.code-copied", "flow-update"),
    exit("flow-update.code-swapped", "flow-update"),
    exit("flow-update.stopped", "flow-update"),
    exit("flow-update.parked", "flow-update"),
    exit("flow-update.created", "flow-update"),
    exit("flow-update.started", "flow-update"),
    exit("flow-update.old-removed", "flow-update"),
    exit("flow-delete.intent-written", "flow-delete"),
    exit("flow-delete.removed", "flow-delete"),
    // Intervirt
    exit("intervirt-add.intent-written", "intervirt-add"),
    unsynced("network.journal.unsynced", "intervirt-add"),
    exit("intervirt-add.recorded", "intervirt-add"),
    exit("intervirt-add.created", "intervirt-add"),
    exit("intervirt-add.started", "intervirt-add"),
    exit("intervirt-add.attached", "intervirt-add"),
    exit("intervirt-remove.intent-written", "intervirt-remove"),
    exit("intervirt-remove.stopped", "intervirt-remove"),
    exit("intervirt-remove.removed", "intervirt-remove"),
    exit("intervirt-update.intent-written", "intervirt-update"),
    exit("intervirt-update.upgraded", "intervirt-update"),
    exit("intervirt-update.container-done", "intervirt-update"),
    exit("intervirt-wipe.intent-written", "intervirt-wipe"),
    exit("intervirt-wipe.containers-removed", "intervirt-wipe"),
];

/// Whether code may name `name` as a crash point.
pub fn is_known(name: &str) -> bool {
    POINTS.iter().any(|p| p.name == name)
}
