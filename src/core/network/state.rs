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
}

/// The file format: plain lists, one entry per connection.
#[derive(Serialize, Deserialize)]
struct StoredState {
    version: u32,
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

/// Reads and writes the state file; every write is atomic and durable (temp file, fsync,
/// rename, fsync of the directory), so a crash leaves the old or the new state, never half.
pub struct StateStore {
    dir: PathBuf,
}

const STATE_FILE: &str = "network.json";

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn load(&self) -> io::Result<State> {
        match std::fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path().display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State {
                next_link: 1,
                ..State::default()
            }),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, state: &State) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        {
            let mut file = File::create(&tmp)?;
            let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        sync_dir(&self.dir)
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
        let store = StateStore::new(dir.path());
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
}
