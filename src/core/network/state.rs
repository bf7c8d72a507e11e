//! The desired topology, and its crash-safe persistence.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::nft::Protocol;
use crate::core::recovery::crash_point_unsynced;

/// A unicast Ethernet address, written `2a:5b:22:67:67:67`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("\"{s}\" is not a MAC address (expected six hex bytes like 2a:5b:22:67:67:67)")
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 == 1 || bytes == [0; 6] {
            return Err(format!("{s} is not a unicast MAC address"));
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One container's network, as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNet {
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub internet: bool,
    /// Number of the host-side veth, `gv-<link>`; never reused.
    pub link: u32,
}

/// Where a port forward leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardTarget {
    pub container: String,
    pub internal_port: u16,
}

/// A port forward as stored: (external port, protocol) -> (container, internal port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub external_port: u16,
    pub protocol: Protocol,
    pub container: String,
    pub internal_port: u16,
}

/// The whole desired topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredState", into = "StoredState")]
pub struct State {
    pub next_link: u32,
    pub containers: BTreeMap<String, ContainerNet>,
    /// Symmetric adjacency: `b` in `connections[a]` exactly when `a` in `connections[b]`.
    pub connections: BTreeMap<String, BTreeSet<String>>,
    pub forwards: BTreeMap<(Protocol, u16), ForwardTarget>,
}

impl State {
    pub fn peers(&self, name: &str) -> impl Iterator<Item = &String> {
        self.connections.get(name).into_iter().flatten()
    }

    pub fn is_connected(&self, a: &str, b: &str) -> bool {
        self.connections.get(a).is_some_and(|p| p.contains(b))
    }

    /// Applies one change in place and returns what undoes it. Total: a change that refers
    /// to something missing (a connection to an unknown container) changes nothing, so
    /// replaying a journal can never fail half-way.
    pub fn apply(&mut self, change: &Change) -> Undo {
        let next_link = self.next_link;
        let changes = match change {
            Change::Put { name, net } => self.put(name, net),
            Change::Remove { name } => self.remove(name),
            Change::Connect { a, b } => self.connect(a, b),
            Change::Disconnect { a, b } => self.disconnect(a, b),
            Change::AddForward { forward } => self.add_forward(forward),
            Change::RemoveForward {
                protocol,
                external_port,
            } => self.remove_forward((*protocol, *external_port)),
        };
        Undo { next_link, changes }
    }

    fn put(&mut self, name: &str, net: &ContainerNet) -> Vec<Change> {
        let old = self.containers.insert(name.to_string(), net.clone());
        self.next_link = self.next_link.max(net.link.saturating_add(1)).max(1);
        vec![match old {
            Some(old) => Change::Put {
                name: name.to_string(),
                net: old,
            },
            None => Change::Remove {
                name: name.to_string(),
            },
        }]
    }

    /// Removes a container with its connections and forwards.
    fn remove(&mut self, name: &str) -> Vec<Change> {
        let Some(old) = self.containers.remove(name) else {
            return Vec::new();
        };
        let mut undo = vec![Change::Put {
            name: name.to_string(),
            net: old,
        }];
        for peer in self.connections.remove(name).unwrap_or_default() {
            if let Some(p) = self.connections.get_mut(&peer) {
                p.remove(name);
                if p.is_empty() {
                    self.connections.remove(&peer);
                }
            }
            undo.push(Change::Connect {
                a: name.to_string(),
                b: peer,
            });
        }
        let keys: Vec<(Protocol, u16)> = self
            .forwards
            .iter()
            .filter(|(_, t)| t.container == name)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            undo.extend(self.remove_forward(key));
        }
        undo
    }

    fn connect(&mut self, a: &str, b: &str) -> Vec<Change> {
        let valid = a != b && self.containers.contains_key(a) && self.containers.contains_key(b);
        if !valid || self.is_connected(a, b) {
            return Vec::new();
        }
        for (x, y) in [(a, b), (b, a)] {
            self.connections
                .entry(x.to_string())
                .or_default()
                .insert(y.to_string());
        }
        vec![Change::Disconnect {
            a: a.to_string(),
            b: b.to_string(),
        }]
    }

    fn disconnect(&mut self, a: &str, b: &str) -> Vec<Change> {
        if !self.is_connected(a, b) {
            return Vec::new();
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(peers) = self.connections.get_mut(x) {
                peers.remove(y);
                if peers.is_empty() {
                    self.connections.remove(x);
                }
            }
        }
        vec![Change::Connect {
            a: a.to_string(),
            b: b.to_string(),
        }]
    }

    fn add_forward(&mut self, forward: &PortForward) -> Vec<Change> {
        if !self.containers.contains_key(&forward.container) {
            return Vec::new();
        }
        let key = (forward.protocol, forward.external_port);
        let target = ForwardTarget {
            container: forward.container.clone(),
            internal_port: forward.internal_port,
        };
        vec![match self.forwards.insert(key, target) {
            Some(old) => Change::AddForward {
                forward: forward_of(key, old),
            },
            None => Change::RemoveForward {
                protocol: key.0,
                external_port: key.1,
            },
        }]
    }

    fn remove_forward(&mut self, key: (Protocol, u16)) -> Vec<Change> {
        match self.forwards.remove(&key) {
            Some(old) => vec![Change::AddForward {
                forward: forward_of(key, old),
            }],
            None => Vec::new(),
        }
    }

    /// Puts back what [`State::apply`] changed.
    pub fn revert(&mut self, undo: Undo) {
        for change in &undo.changes {
            self.apply(change);
        }
        self.next_link = undo.next_link;
    }
}

fn forward_of((protocol, external_port): (Protocol, u16), t: ForwardTarget) -> PortForward {
    PortForward {
        external_port,
        protocol,
        container: t.container,
        internal_port: t.internal_port,
    }
}

/// One change of the topology: what the dataplane's operations do to [`State`], and what
/// the journal records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A container is added, or its addresses or internet flag change.
    Put {
        name: String,
        net: ContainerNet,
    },
    /// A container goes, with its connections and port forwards.
    Remove {
        name: String,
    },
    Connect {
        a: String,
        b: String,
    },
    Disconnect {
        a: String,
        b: String,
    },
    AddForward {
        forward: PortForward,
    },
    RemoveForward {
        protocol: Protocol,
        external_port: u16,
    },
}

/// What undoes an applied [`Change`] (in memory only).
#[derive(Debug)]
pub struct Undo {
    next_link: u32,
    changes: Vec<Change>,
}

/// The file format: plain lists, one entry per connection.
#[derive(Serialize, Deserialize)]
struct StoredState {
    version: u32,
    /// The last journal record this snapshot includes (0: none; absent in old files).
    #[serde(default)]
    seq: u64,
    next_link: u32,
    containers: BTreeMap<String, ContainerNet>,
    connections: Vec<[String; 2]>,
    forwards: Vec<PortForward>,
}

const FORMAT_VERSION: u32 = 1;

impl From<State> for StoredState {
    fn from(s: State) -> Self {
        let connections = s
            .connections
            .iter()
            .flat_map(|(a, peers)| {
                peers
                    .iter()
                    .filter(move |b| a < *b)
                    .map(move |b| [a.clone(), b.clone()])
            })
            .collect();
        let forwards = s
            .forwards
            .into_iter()
            .map(|((protocol, external_port), t)| PortForward {
                external_port,
                protocol,
                container: t.container,
                internal_port: t.internal_port,
            })
            .collect();
        StoredState {
            version: FORMAT_VERSION,
            seq: 0,
            next_link: s.next_link,
            containers: s.containers,
            connections,
            forwards,
        }
    }
}

impl From<StoredState> for State {
    fn from(s: StoredState) -> Self {
        let mut state = State {
            next_link: s.next_link,
            containers: s.containers,
            ..State::default()
        };
        for [a, b] in s.connections {
            if a != b && state.containers.contains_key(&a) && state.containers.contains_key(&b) {
                state
                    .connections
                    .entry(a.clone())
                    .or_default()
                    .insert(b.clone());
                state.connections.entry(b).or_default().insert(a);
            }
        }
        for f in s.forwards {
            if state.containers.contains_key(&f.container) {
                state.forwards.insert(
                    (f.protocol, f.external_port),
                    ForwardTarget {
                        container: f.container,
                        internal_port: f.internal_port,
                    },
                );
            }
        }
        let max_link = state.containers.values().map(|c| c.link).max().unwrap_or(0);
        state.next_link = state.next_link.max(max_link + 1).max(1);
        state
    }
}

/// The topology on disk: a snapshot (`network.json`) plus an append-only journal
/// (`network.journal`) of the [`Change`]s made since, one JSON line each.
///
/// Recording a change appends one short line and `fdatasync`s it: the cost does not depend on
/// the size of the topology. When the journal has grown past twice the snapshot (and a
/// floor), it is compacted: a new snapshot, tagged with the sequence number of the last
/// record it includes, is written to a temp file, fsynced, renamed over the old one (and the
/// directory fsynced), then the journal is emptied. Loading replays the records with a higher
/// sequence number than the snapshot's, so a crash at any point of a compaction loses nothing
/// and applies nothing twice; a torn last line (a crash during an append, never
/// acknowledged) is dropped. The amortised cost per change stays constant.
pub struct StateStore {
    dir: PathBuf,
    /// Open for appending once [`StateStore::load`] has checked the journal.
    journal: Option<File>,
    /// Sequence number of the last record written (or included in the snapshot).
    seq: u64,
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// Compaction waits until the journal holds at least this many bytes.
    compact_floor: u64,
}

const STATE_FILE: &str = "network.json";
const JOURNAL_FILE: &str = "network.journal";
const COMPACT_FLOOR: u64 = 64 * 1024;

/// One line of the journal.
#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    change: Change,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore {
            dir: dir.into(),
            journal: None,
            seq: 0,
            journal_bytes: 0,
            snapshot_bytes: 0,
            compact_floor: COMPACT_FLOOR,
        }
    }

    /// Compaction threshold for tests.
    #[cfg(test)]
    pub fn with_compact_floor(mut self, bytes: u64) -> Self {
        self.compact_floor = bytes;
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// Reads the snapshot and replays the journal; cuts a torn tail off the journal so that
    /// later appends start on a fresh line.
    pub fn load(&mut self) -> io::Result<State> {
        let (state, good, len) = self.replay()?;
        std::fs::create_dir_all(&self.dir)?;
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_path())?;
        if good < len {
            journal.set_len(good as u64)?;
            journal.sync_all()?;
        }
        self.journal_bytes = good as u64;
        self.journal = Some(journal);
        Ok(state)
    }

    /// The stored state (snapshot and journal) as the daemon would load it, changing no
    /// file: for `gantry check` beside a running daemon.
    pub fn read(dir: impl Into<PathBuf>) -> io::Result<State> {
        Self::new(dir).replay().map(|(state, _, _)| state)
    }

    /// The snapshot with the journal's newer records applied; also the length of the
    /// journal's good part and of the whole journal.
    fn replay(&mut self) -> io::Result<(State, usize, usize)> {
        let (mut state, snapshot_seq) = self.read_snapshot()?;
        self.seq = snapshot_seq;
        let bytes = match std::fs::read(self.journal_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut good = 0usize;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                break; // torn: the append never completed
            }
            let record: Record = match serde_json::from_slice(line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        file = %self.journal_path().display(),
                        offset = good,
                        error = %e,
                        "ignoring the network journal from an unreadable record on"
                    );
                    break;
                }
            };
            good += line.len();
            if record.seq > self.seq {
                state.apply(&record.change);
                self.seq = record.seq;
            }
        }
        Ok((state, good, bytes.len()))
    }

    fn read_snapshot(&mut self) -> io::Result<(State, u64)> {
        match std::fs::read(self.path()) {
            Ok(bytes) => {
                self.snapshot_bytes = bytes.len() as u64;
                let stored: StoredState = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", self.path().display()),
                    )
                })?;
                let seq = stored.seq;
                Ok((State::from(stored), seq))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((
                State {
                    next_link: 1,
                    ..State::default()
                },
                0,
            )),
            Err(e) => Err(e),
        }
    }

    /// Makes `change` durable; `after` is the state with it applied (for compaction).
    pub fn record(&mut self, change: &Change, after: &State) -> io::Result<()> {
        let (path, durable) = (self.journal_path(), self.journal_bytes);
        let Some(journal) = self.journal.as_mut() else {
            // An earlier append failed half-way: a snapshot makes everything durable again.
            return self.save(after);
        };
        let seq = self.seq + 1;
        let mut line = serde_json::to_vec(&Record {
            seq,
            change: change.clone(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        let written = journal.write_all(&line).and_then(|()| {
            crash_point_unsynced("network.journal.unsynced", &path, durable);
            journal.sync_data()
        });
        if let Err(e) = written {
            // Cut off whatever part got written; if even that fails, stop appending.
            let cut = journal
                .set_len(self.journal_bytes)
                .and_then(|()| journal.sync_all());
            if cut.is_err() {
                self.journal = None;
            }
            return Err(e);
        }
        self.seq = seq;
        self.journal_bytes += line.len() as u64;
        if self.journal_bytes > self.compact_floor.max(2 * self.snapshot_bytes) {
            // The change is durable already; a failed compaction only postpones it.
            if let Err(e) = self.compact(after) {
                tracing::warn!(error = %e, "cannot compact the network journal");
            }
        }
        Ok(())
    }

    /// Replaces everything stored by `state` (a snapshot, then an empty journal).
    pub fn save(&mut self, state: &State) -> io::Result<()> {
        self.compact(state)
    }

    fn compact(&mut self, state: &State) -> io::Result<()> {
        self.write_snapshot(state)?;
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_path())?;
        journal.set_len(0)?;
        journal.sync_all()?;
        self.journal = Some(journal);
        self.journal_bytes = 0;
        Ok(())
    }

    /// The first half of a compaction: the snapshot (with the current sequence number) in
    /// place of the old one, atomically and durably. The journal is left as it is.
    pub(crate) fn write_snapshot(&mut self, state: &State) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut stored = StoredState::from(state.clone());
        stored.seq = self.seq;
        let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        sync_dir(&self.dir)?;
        self.snapshot_bytes = bytes.len() as u64;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        let mac: MacAddr = "2a:5b:22:67:67:6F".parse().unwrap();
        assert_eq!(mac.to_string(), "2a:5b:22:67:67:6f");
        assert!("2a:5b:22:67:67".parse::<MacAddr>().is_err());
        assert!("2a:5b:22:67:67:67:01".parse::<MacAddr>().is_err());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err(), "multicast");
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("zz:5b:22:67:67:67".parse::<MacAddr>().is_err());
    }

    #[test]
    fn state_round_trips_and_stays_symmetric() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path());
        let mut state = store.load().unwrap();
        assert_eq!(state.next_link, 1);
        for (i, name) in ["a", "b"].iter().enumerate() {
            state.containers.insert(
                name.to_string(),
                ContainerNet {
                    mac: "02:00:00:00:00:01".parse().unwrap(),
                    ipv4: Some(Ipv4Addr::new(198, 18, 0, 2 + i as u8)),
                    ipv6: None,
                    internet: false,
                    link: 1 + i as u32,
                },
            );
        }
        state.next_link = 3;
        state
            .connections
            .entry("a".into())
            .or_default()
            .insert("b".into());
        state
            .connections
            .entry("b".into())
            .or_default()
            .insert("a".into());
        state.forwards.insert(
            (Protocol::Tcp, 8080),
            ForwardTarget {
                container: "a".into(),
                internal_port: 80,
            },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.contains(r#""connections":[["a","b"]]"#), "{text}");
        assert!(!dir.path().join("network.json.tmp").exists());
    }

    fn net(i: u8) -> ContainerNet {
        ContainerNet {
            mac: format!("02:00:00:00:01:{i:02x}").parse().unwrap(),
            ipv4: Some(Ipv4Addr::new(198, 18, 1, i)),
            ipv6: Some(format!("2001:db8:1::{i:x}").parse().unwrap()),
            internet: i.is_multiple_of(2),
            link: u32::from(i),
        }
    }

    /// A history touching every kind of change, including ones a plain replay of the whole
    /// journal over a newer snapshot would get wrong (a re-added container, a moved forward).
    fn history() -> Vec<Change> {
        let put = |i: u8| Change::Put {
            name: format!("c{i}"),
            net: net(i),
        };
        let pair = |a: u8, b: u8| (format!("c{a}"), format!("c{b}"));
        let mut out = Vec::new();
        for i in 1..=6 {
            out.push(put(i));
        }
        for (a, b) in [pair(1, 2), pair(2, 3), pair(1, 3), pair(4, 5)] {
            out.push(Change::Connect { a, b });
        }
        let (a, b) = pair(2, 3);
        out.push(Change::Disconnect { a, b });
        out.push(Change::AddForward {
            forward: PortForward {
                external_port: 8080,
                protocol: Protocol::Tcp,
                container: "c1".into(),
                internal_port: 80,
            },
        });
        out.push(Change::Remove { name: "c1".into() });
        let mut again = net(1);
        again.link = 7;
        out.push(Change::Put {
            name: "c1".into(),
            net: again,
        });
        out.push(Change::AddForward {
            forward: PortForward {
                external_port: 8080,
                protocol: Protocol::Tcp,
                container: "c4".into(),
                internal_port: 81,
            },
        });
        let mut moved = net(5);
        moved.ipv4 = Some(Ipv4Addr::new(198, 18, 1, 55));
        out.push(Change::Put {
            name: "c5".into(),
            net: moved,
        });
        out.push(Change::RemoveForward {
            protocol: Protocol::Udp,
            external_port: 53,
        });
        let (a, b) = pair(1, 6);
        out.push(Change::Connect { a, b });
        out
    }

    /// The state each prefix of `history()` leads to, computed in memory only.
    fn expected(n: usize) -> State {
        let mut state = State {
            next_link: 1,
            ..State::default()
        };
        for change in &history()[..n] {
            state.apply(change);
        }
        state
    }

    fn load(dir: &Path) -> State {
        StateStore::new(dir).load().unwrap()
    }

    #[test]
    fn apply_and_revert_are_inverse() {
        let mut state = State {
            next_link: 1,
            ..State::default()
        };
        for change in history() {
            let before = state.clone();
            let undo = state.apply(&change);
            let after = state.clone();
            state.revert(undo);
            assert_eq!(state, before, "revert of {change:?}");
            state = after;
        }
        assert!(state.is_connected("c1", "c6") && state.is_connected("c6", "c1"));
        assert!(!state.is_connected("c1", "c2"), "dropped with the first c1");
        assert_eq!(state.forwards[&(Protocol::Tcp, 8080)].container, "c4");
        assert_eq!(state.next_link, 8);
    }

    #[test]
    fn journal_replays_and_compacts_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        // A tiny floor: compactions happen every few records.
        let mut store = StateStore::new(dir.path()).with_compact_floor(300);
        let mut state = store.load().unwrap();
        let mut compactions = 0;
        for (i, change) in history().iter().enumerate() {
            let len_before = std::fs::metadata(store.journal_path()).unwrap().len();
            state.apply(change);
            store.record(change, &state).unwrap();
            let len_after = std::fs::metadata(store.journal_path()).unwrap().len();
            if len_after < len_before {
                compactions += 1;
            }
            // What a crash right now would come back to.
            assert_eq!(load(dir.path()), expected(i + 1), "after record {i}");
        }
        assert!(compactions >= 2, "{compactions} compactions");
        // Without compaction, everything stays in the journal and replays the same.
        let dir2 = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir2.path());
        let mut state = store.load().unwrap();
        for change in history() {
            state.apply(&change);
            store.record(&change, &state).unwrap();
        }
        assert!(!store.path().exists(), "no snapshot below the floor");
        assert_eq!(load(dir2.path()), expected(history().len()));
    }

    #[test]
    fn crash_mid_compaction_leaves_a_consistent_state() {
        let all = history();
        let half = all.len() / 2;
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path());
        let mut state = store.load().unwrap();
        for change in &all[..half] {
            state.apply(change);
            store.record(change, &state).unwrap();
        }
        store.save(&state).unwrap(); // a snapshot at `half`, empty journal
        for change in &all[half..] {
            state.apply(change);
            store.record(change, &state).unwrap();
        }
        let full = expected(all.len());
        assert_eq!(state, full);
        let journal = std::fs::read(store.journal_path()).unwrap();

        // 1. Crash while writing the new snapshot: a half-written temp file is ignored.
        let snap = std::fs::read(store.path()).unwrap();
        std::fs::write(dir.path().join("network.json.tmp"), &snap[..snap.len() / 2]).unwrap();
        assert_eq!(load(dir.path()), full);

        // 2. Crash after the rename, before the journal was emptied: the new snapshot
        //    includes every record of the journal, and none is applied twice.
        store.write_snapshot(&state).unwrap();
        assert_eq!(std::fs::read(store.journal_path()).unwrap(), journal);
        assert_eq!(load(dir.path()), full);
        // ... and a store opened there goes on appending after the last sequence number.
        let mut reopened = StateStore::new(dir.path());
        let mut state = reopened.load().unwrap();
        let extra = Change::Disconnect {
            a: "c1".into(),
            b: "c6".into(),
        };
        state.apply(&extra);
        reopened.record(&extra, &state).unwrap();
        assert!(!load(dir.path()).is_connected("c1", "c6"));
        assert_eq!(load(dir.path()), state);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_appending_goes_on() {
        let all = history();
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path());
        let mut state = store.load().unwrap();
        for change in &all[..5] {
            state.apply(change);
            store.record(change, &state).unwrap();
        }
        drop(store);
        // A crash in the middle of appending the sixth record.
        let line = serde_json::to_vec(&Record {
            seq: 6,
            change: all[5].clone(),
        })
        .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        file.write_all(&line[..line.len() / 2]).unwrap();
        drop(file);
        let mut store = StateStore::new(dir.path());
        let mut state = store.load().unwrap();
        assert_eq!(state, expected(5));
        for change in &all[5..] {
            state.apply(change);
            store.record(change, &state).unwrap();
        }
        assert_eq!(load(dir.path()), expected(all.len()));
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<Record>(l).is_ok()),
            "{text}"
        );
    }

    #[test]
    fn snapshots_without_a_sequence_number_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"version":1,"next_link":3,"containers":{},"connections":[],"forwards":[]}"#,
        )
        .unwrap();
        let state = load(dir.path());
        assert_eq!(state.next_link, 3);
    }
}
