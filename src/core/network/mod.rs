//! Container networking without Docker's: gantry plumbs every (Intervirt) container itself.
//!
//! Topology (docs/NETWORK.md has the reasoning): routed, one veth pair per container. The
//! host end `gv-<n>` stays in the guest's namespace; the other end is created directly in the
//! container's namespace as `eth0`, with the client's MAC, its IPv4 as /32 and IPv6 as /128
//! (DAD off), and default routes via link-local gateways that are permanent neighbour entries
//! pointing at the host end's MAC. The host routes each container address to its veth.
//! Policy lives in one nftables table ([`nft`]); everything that grows is a set element.
//!
//! [`Dataplane`] holds the desired state and applies it; it is synchronous and acts in the
//! network namespace of the thread that runs it. [`DataplaneHandle`] runs one on a dedicated
//! thread (optionally entered into a given namespace) for async callers.

pub mod consistency;
pub mod netlink;
pub mod nft;
pub mod state;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use netlink::{KernelNetlink, Netlink, NetlinkError, Netns, Route, GATEWAY_V4, GATEWAY_V6};
pub use nft::Protocol;
use nft::{Delta, Element, Elements, Firewall, FirewallError, NftFirewall};
use state::StateStore;
pub use state::{Change, ContainerNet, MacAddr, PortForward, State};

use super::ErrorKind;

/// Every host-side veth is `gv-<n>`; the firewall matches them with `gv-*`.
pub const LINK_PREFIX: &str = "gv-";
/// The container-side interface name.
pub const CONTAINER_IF: &str = "eth0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Netlink, nft or a sysctl failed.
    #[error("{0}")]
    Kernel(String),
    #[error("cannot store the network state: {0}")]
    Storage(String),
    #[error("the network dataplane is not running")]
    Stopped,
}

impl From<NetlinkError> for NetworkError {
    fn from(e: NetlinkError) -> Self {
        NetworkError::Kernel(e.to_string())
    }
}

impl From<FirewallError> for NetworkError {
    fn from(e: FirewallError) -> Self {
        NetworkError::Kernel(e.to_string())
    }
}

impl NetworkError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetworkError::Invalid(_) => ErrorKind::Invalid,
            NetworkError::NotFound(_) => ErrorKind::NotFound,
            NetworkError::AlreadyExists(_) => ErrorKind::Conflict,
            NetworkError::Stopped => ErrorKind::Unavailable,
            NetworkError::Kernel(_) | NetworkError::Storage(_) => ErrorKind::Failed,
        }
    }
}

pub type NetResult<T> = Result<T, NetworkError>;

/// What AddContainer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub internet: bool,
}

pub fn link_name(link: u32) -> String {
    format!("{LINK_PREFIX}{link}")
}

fn check_name(name: &str) -> NetResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "\"{name}\" is not a valid container name"
        )))
    }
}

fn check_ipv4(a: Ipv4Addr) -> NetResult<()> {
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_link_local()
    {
        return Err(NetworkError::Invalid(format!(
            "{a} cannot be a container address"
        )));
    }
    Ok(())
}

fn check_ipv6(a: Ipv6Addr) -> NetResult<()> {
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local() {
        return Err(NetworkError::Invalid(format!(
            "{a} cannot be a container address"
        )));
    }
    Ok(())
}

/// The set and map elements that mention any of `names` (their addresses, links, forwards).
fn elements_for(state: &State, names: &[&str]) -> Elements {
    let mut out = Elements::new();
    for name in names {
        let Some(c) = state.containers.get(*name) else {
            continue;
        };
        let dev = link_name(c.link);
        if let Some(a) = c.ipv4 {
            out.insert(Element::Source4(dev.clone(), a));
            if c.internet {
                out.insert(Element::Internet4(a));
            }
        }
        if let Some(a) = c.ipv6 {
            out.insert(Element::Source6(dev.clone(), a));
            if c.internet {
                out.insert(Element::Internet6(a));
            }
        }
        for peer in state.peers(name) {
            let Some(p) = state.containers.get(peer) else {
                continue;
            };
            if let (Some(a), Some(b)) = (c.ipv4, p.ipv4) {
                out.insert(Element::Link4(a, b));
                out.insert(Element::Link4(b, a));
            }
            if let (Some(a), Some(b)) = (c.ipv6, p.ipv6) {
                out.insert(Element::Link6(a, b));
                out.insert(Element::Link6(b, a));
            }
        }
    }
    for ((protocol, port), target) in &state.forwards {
        if !names.contains(&target.container.as_str()) {
            continue;
        }
        let Some(c) = state.containers.get(&target.container) else {
            continue;
        };
        out.insert(Element::ForwardPort(*protocol, *port, target.internal_port));
        if let Some(a) = c.ipv4 {
            out.insert(Element::ForwardAddr4(*protocol, *port, a));
        }
        if let Some(a) = c.ipv6 {
            out.insert(Element::ForwardAddr6(*protocol, *port, a));
        }
    }
    out
}

/// What a change can touch in the firewall.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Everything that mentions these containers.
    Containers(&'a [&'a str]),
    /// Only the connection between two containers.
    Pair(&'a str, &'a str),
}

fn elements_in(state: &State, scope: Scope) -> Elements {
    match scope {
        Scope::Containers(names) => elements_for(state, names),
        Scope::Pair(a, b) => {
            let mut out = Elements::new();
            let (Some(x), Some(y)) = (state.containers.get(a), state.containers.get(b)) else {
                return out;
            };
            if !state.is_connected(a, b) {
                return out;
            }
            if let (Some(p), Some(q)) = (x.ipv4, y.ipv4) {
                out.insert(Element::Link4(p, q));
                out.insert(Element::Link4(q, p));
            }
            if let (Some(p), Some(q)) = (x.ipv6, y.ipv6) {
                out.insert(Element::Link6(p, q));
                out.insert(Element::Link6(q, p));
            }
            out
        }
    }
}

fn elements_all(state: &State) -> Elements {
    let names: Vec<&str> = state.containers.keys().map(String::as_str).collect();
    elements_for(state, &names)
}

/// Where a dataplane keeps its state, and which namespace it acts in.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub state_dir: PathBuf,
    /// A network namespace file (`/run/netns/NAME`) to run in instead of gantry's own; for
    /// tests, and for a guest that keeps containers' uplink in a dedicated namespace.
    pub netns: Option<PathBuf>,
}

/// The desired topology and the code that makes the kernel match it.
pub struct Dataplane {
    state: State,
    store: StateStore,
    /// Running containers by name: the pid whose namespace holds their `eth0`.
    pids: HashMap<String, u32>,
    netlink: Box<dyn Netlink>,
    firewall: Box<dyn Firewall>,
    /// Whether gantry's table is known to be in place, so deltas can apply to it.
    table_applied: bool,
    host_prepared: bool,
}

impl Dataplane {
    /// Loads the stored topology. Nothing is applied until [`Dataplane::reapply`].
    pub fn open(
        state_dir: impl Into<PathBuf>,
        netlink: Box<dyn Netlink>,
        firewall: Box<dyn Firewall>,
    ) -> NetResult<Self> {
        let mut store = StateStore::new(state_dir);
        let state = store
            .load()
            .map_err(|e| NetworkError::Storage(e.to_string()))?;
        Ok(Dataplane {
            state,
            store,
            pids: HashMap::new(),
            netlink,
            firewall,
            table_applied: false,
            host_prepared: false,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn container(&self, name: &str) -> NetResult<&ContainerNet> {
        self.state
            .containers
            .get(name)
            .ok_or_else(|| NetworkError::NotFound(format!("Container {name} doesn't exist")))
    }

    /// The pid a running container was attached with.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.pids.get(name).copied()
    }

    fn check_unique_addresses(
        &self,
        name: &str,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> NetResult<()> {
        for (other, c) in &self.state.containers {
            if other == name {
                continue;
            }
            let taken = match (ipv4, ipv6) {
                (Some(a), _) if c.ipv4 == Some(a) => Some(a.to_string()),
                (_, Some(a)) if c.ipv6 == Some(a) => Some(a.to_string()),
                _ => None,
            };
            if let Some(addr) = taken {
                return Err(NetworkError::AlreadyExists(format!(
                    "{addr} is already used by container {other}"
                )));
            }
        }
        Ok(())
    }

    /// Applies `change`: to the state in memory, to the firewall (only the elements in
    /// `scope`, before and after), then records it durably. On failure nothing changes (the
    /// state and the firewall are put back). Costs nothing proportional to the topology.
    fn commit(&mut self, change: Change, scope: Scope) -> NetResult<()> {
        let before = elements_in(&self.state, scope);
        let undo = self.state.apply(&change);
        let after = elements_in(&self.state, scope);
        let delta = Delta::between(&before, &after);
        if let Err(e) = self.apply_firewall(&delta) {
            self.state.revert(undo);
            return Err(e);
        }
        let recorded = self.store.record(&change, &self.state);
        if let Err(e) = recorded {
            self.state.revert(undo);
            let back = Delta::between(&after, &before);
            if let Err(undo_err) = self.apply_firewall(&back) {
                tracing::warn!("could not restore the firewall after a failed save: {undo_err}");
            }
            return Err(NetworkError::Storage(e.to_string()));
        }
        Ok(())
    }

    /// Applies `delta` to the table, or rebuilds the table from the state in memory.
    fn apply_firewall(&mut self, delta: &Delta) -> NetResult<()> {
        if self.table_applied {
            match self.firewall.apply_delta(delta) {
                Ok(()) => return Ok(()),
                // The table drifted (flushed by someone, a reload): rebuild it whole.
                Err(e) => tracing::warn!("firewall update failed ({e}); re-applying the table"),
            }
        }
        self.table_applied = false;
        self.firewall.apply_all(&elements_all(&self.state))?;
        self.table_applied = true;
        Ok(())
    }

    // --- operations --------------------------------------------------------------------------

    /// Records a new container. Its link is plumbed by [`Dataplane::attach`] once it runs.
    pub fn add_container(&mut self, spec: ContainerSpec) -> NetResult<()> {
        check_name(&spec.name)?;
        if self.state.containers.contains_key(&spec.name) {
            return Err(NetworkError::AlreadyExists(format!(
                "Container {} already exists",
                spec.name
            )));
        }
        if let Some(a) = spec.ipv4 {
            check_ipv4(a)?;
        }
        if let Some(a) = spec.ipv6 {
            check_ipv6(a)?;
        }
        self.check_unique_addresses(&spec.name, spec.ipv4, spec.ipv6)?;
        let net = ContainerNet {
            mac: spec.mac,
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            internet: spec.internet,
            link: self.state.next_link.max(1),
        };
        let name = spec.name;
        self.commit(
            Change::Put {
                name: name.clone(),
                net,
            },
            Scope::Containers(&[&name]),
        )
    }

    /// Forgets a container with its connections and port forwards, and removes its link.
    pub fn remove_container(&mut self, name: &str) -> NetResult<()> {
        let link = self.container(name)?.link;
        self.commit(
            Change::Remove { name: name.into() },
            Scope::Containers(&[name]),
        )?;
        self.pids.remove(name);
        // A leftover link is harmless and swept by the next reapply.
        if let Err(e) = self.netlink.delete_link(Netns::Current, &link_name(link)) {
            tracing::warn!("could not delete the link of container {name}: {e}");
        }
        Ok(())
    }

    /// Plumbs a running container (process `pid`); idempotent, and the way back after the
    /// container restarted with a new namespace.
    pub fn attach(&mut self, name: &str, pid: u32) -> NetResult<()> {
        let c = self.container(name)?.clone();
        if pid == 0 {
            return Err(NetworkError::Invalid(format!(
                "container {name} is not running"
            )));
        }
        if self.netlink.shares_current_netns(pid)? {
            return Err(NetworkError::Invalid(format!(
                "process {pid} of container {name} shares gantry's network namespace"
            )));
        }
        self.prepare_host()?;
        let result = self.plumb(&c, pid);
        self.netlink.release();
        match result {
            Ok(()) => {
                self.pids.insert(name.to_string(), pid);
                Ok(())
            }
            Err(e) => {
                self.pids.remove(name);
                Err(e)
            }
        }
    }

    /// The container stopped: forget its namespace (its veth pair dies with it).
    pub fn detach(&mut self, name: &str) -> NetResult<()> {
        let link = self.container(name)?.link;
        self.pids.remove(name);
        self.netlink.delete_link(Netns::Current, &link_name(link))?;
        Ok(())
    }

    pub fn set_ipv4(&mut self, name: &str, ipv4: Ipv4Addr) -> NetResult<()> {
        check_ipv4(ipv4)?;
        self.set_addresses(name, Some(ipv4), None)
    }

    pub fn set_ipv6(&mut self, name: &str, ipv6: Ipv6Addr) -> NetResult<()> {
        check_ipv6(ipv6)?;
        self.set_addresses(name, None, Some(ipv6))
    }

    fn set_addresses(
        &mut self,
        name: &str,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> NetResult<()> {
        let old = self.container(name)?.clone();
        self.check_unique_addresses(name, ipv4, ipv6)?;
        let mut new = old.clone();
        new.ipv4 = ipv4.or(old.ipv4);
        new.ipv6 = ipv6.or(old.ipv6);
        if new == old {
            return Ok(());
        }
        let pid = self.pids.get(name).copied();
        if let Some(pid) = pid {
            let result = self.readdress(pid, &old, &new);
            self.netlink.release();
            result?;
        }
        let change = Change::Put {
            name: name.into(),
            net: new.clone(),
        };
        if let Err(e) = self.commit(change, Scope::Containers(&[name])) {
            if let Some(pid) = pid {
                if let Err(undo) = self.readdress(pid, &new, &old) {
                    tracing::warn!("could not restore the addresses of {name}: {undo}");
                }
                self.netlink.release();
            }
            return Err(e);
        }
        Ok(())
    }

    pub fn connect(&mut self, a: &str, b: &str) -> NetResult<()> {
        self.check_pair(a, b)?;
        if self.state.is_connected(a, b) {
            return Err(NetworkError::AlreadyExists(format!(
                "Containers {a} and {b} are already connected"
            )));
        }
        self.commit(
            Change::Connect {
                a: a.into(),
                b: b.into(),
            },
            Scope::Pair(a, b),
        )
    }

    pub fn disconnect(&mut self, a: &str, b: &str) -> NetResult<()> {
        self.check_pair(a, b)?;
        if !self.state.is_connected(a, b) {
            return Err(NetworkError::NotFound(format!(
                "Containers {a} and {b} are not connected"
            )));
        }
        self.commit(
            Change::Disconnect {
                a: a.into(),
                b: b.into(),
            },
            Scope::Pair(a, b),
        )
    }

    fn check_pair(&self, a: &str, b: &str) -> NetResult<()> {
        let missing: Vec<&str> = [a, b]
            .into_iter()
            .filter(|n| !self.state.containers.contains_key(*n))
            .collect();
        match missing.as_slice() {
            [] if a == b => Err(NetworkError::Invalid(format!(
                "cannot connect container {a} to itself"
            ))),
            [] => Ok(()),
            [one] => Err(NetworkError::NotFound(format!(
                "Container {one} doesn't exist"
            ))),
            _ => Err(NetworkError::NotFound(format!(
                "Containers {a} and {b} don't exist"
            ))),
        }
    }

    pub fn set_internet(&mut self, name: &str, enabled: bool) -> NetResult<()> {
        let mut net = self.container(name)?.clone();
        if net.internet == enabled {
            return Ok(());
        }
        net.internet = enabled;
        self.commit(
            Change::Put {
                name: name.into(),
                net,
            },
            Scope::Containers(&[name]),
        )
    }

    pub fn add_forward(&mut self, forward: PortForward) -> NetResult<()> {
        self.container(&forward.container)?;
        if forward.external_port == 0 || forward.internal_port == 0 {
            return Err(NetworkError::Invalid("port 0 cannot be forwarded".into()));
        }
        let key = (forward.protocol, forward.external_port);
        if let Some(existing) = self.state.forwards.get(&key) {
            return Err(NetworkError::AlreadyExists(format!(
                "Port forwarding {}/{} already exists (to {})",
                forward.external_port, forward.protocol, existing.container
            )));
        }
        let container = forward.container.clone();
        self.commit(
            Change::AddForward { forward },
            Scope::Containers(&[&container]),
        )
    }

    pub fn remove_forward(&mut self, external_port: u16, protocol: Protocol) -> NetResult<()> {
        let Some(target) = self.state.forwards.get(&(protocol, external_port)) else {
            return Err(NetworkError::NotFound(format!(
                "Port forwarding {external_port}/{protocol} doesn't exist"
            )));
        };
        let container = target.container.clone();
        self.commit(
            Change::RemoveForward {
                protocol,
                external_port,
            },
            Scope::Containers(&[&container]),
        )
    }

    /// Makes the kernel match the stored topology: the whole table in one transaction, host
    /// sysctls, every attached container's link, and sweeps leftovers (links and routes of
    /// containers that are gone). Idempotent; the thing to run at start and after a reload.
    /// Collects every error and reports them together, after doing all it can.
    pub fn reapply(&mut self) -> NetResult<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Err(e) = self.prepare_host() {
            errors.push(e.to_string());
        }
        self.table_applied = false;
        match self.firewall.apply_all(&elements_all(&self.state)) {
            Ok(()) => self.table_applied = true,
            Err(e) => errors.push(e.to_string()),
        }
        let attached: Vec<(String, u32)> = self.pids.iter().map(|(n, p)| (n.clone(), *p)).collect();
        for (name, pid) in attached {
            if let Err(e) = self.attach(&name, pid) {
                errors.push(format!("container {name}: {e}"));
            }
        }
        if let Err(e) = self.sweep() {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Kernel(errors.join("; ")))
        }
    }

    /// Removes all of gantry's network state: table, FORWARD rules, links, stored topology.
    pub fn wipe(&mut self) -> NetResult<()> {
        let mut errors: Vec<String> = Vec::new();
        if let Err(e) = self.firewall.remove_all() {
            errors.push(e.to_string());
        }
        self.table_applied = false;
        match self.netlink.links_with_prefix(LINK_PREFIX) {
            Ok(links) => {
                for link in links {
                    if let Err(e) = self.netlink.delete_link(Netns::Current, &link) {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        let empty = State {
            next_link: 1,
            ..State::default()
        };
        match self.store.save(&empty) {
            Ok(()) => {
                self.state = empty;
                self.pids.clear();
            }
            Err(e) => errors.push(format!("cannot store the network state: {e}")),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Kernel(errors.join("; ")))
        }
    }

    // --- plumbing ----------------------------------------------------------------------------

    fn prepare_host(&mut self) -> NetResult<()> {
        if self.host_prepared {
            return Ok(());
        }
        let mut settings = vec![("net/ipv4/ip_forward".to_string(), "1".to_string())];
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            settings.push(("net/ipv6/conf/all/forwarding".into(), "1".into()));
        }
        self.netlink.set_sysctls(Netns::Current, &settings)?;
        self.host_prepared = true;
        Ok(())
    }

    /// Whether `host` exists, and whether it and the container's `eth0` are the two ends of
    /// one veth.
    fn pair_intact(&mut self, host: &str, ns: Netns) -> NetResult<(bool, bool)> {
        let Some(h) = self.netlink.link(Netns::Current, host)? else {
            return Ok((false, false));
        };
        let Some(c) = self.netlink.link(ns, CONTAINER_IF)? else {
            return Ok((true, false));
        };
        Ok((
            true,
            h.peer_index == Some(c.index) && c.peer_index == Some(h.index),
        ))
    }

    fn plumb(&mut self, c: &ContainerNet, pid: u32) -> NetResult<()> {
        let host = link_name(c.link);
        let ns = Netns::Pid(pid);
        let (host_exists, intact) = self.pair_intact(&host, ns)?;
        if !intact {
            // Whatever is left of an earlier namespace goes; a foreign eth0 stops us.
            if host_exists {
                self.netlink.delete_link(Netns::Current, &host)?;
            }
            if self.netlink.link(ns, CONTAINER_IF)?.is_some() {
                return Err(NetworkError::Kernel(format!(
                    "process {pid} already has an {CONTAINER_IF} that gantry did not create"
                )));
            }
            self.netlink
                .create_veth(&host, CONTAINER_IF, c.mac.0, pid)?;
        }
        let host_mac = self
            .netlink
            .link(Netns::Current, &host)?
            .and_then(|l| l.mac)
            .ok_or_else(|| NetworkError::Kernel(format!("{host} has no MAC address")))?;

        // Container side.
        let mut sysctls = Vec::new();
        if c.ipv6.is_some() {
            for (key, value) in [
                ("disable_ipv6", "0"),
                ("accept_dad", "0"),
                ("autoconf", "0"),
                ("accept_ra", "0"),
            ] {
                sysctls.push((
                    format!("net/ipv6/conf/{CONTAINER_IF}/{key}"),
                    value.to_string(),
                ));
            }
        }
        if !sysctls.is_empty() {
            self.netlink.set_sysctls(ns, &sysctls)?;
        }
        let link = self.netlink.link(ns, CONTAINER_IF)?;
        if link.as_ref().and_then(|l| l.mac) != Some(c.mac.0) {
            self.netlink.set_mac(ns, CONTAINER_IF, c.mac.0)?;
        }
        self.netlink.set_up(ns, CONTAINER_IF)?;
        let wanted: Vec<(IpAddr, u8)> = c
            .ipv4
            .map(|a| (IpAddr::V4(a), 32))
            .into_iter()
            .chain(c.ipv6.map(|a| (IpAddr::V6(a), 128)))
            .collect();
        for (addr, len) in self.netlink.addresses(ns, CONTAINER_IF)? {
            if !wanted.contains(&(addr, len)) {
                self.netlink.del_address(ns, CONTAINER_IF, addr, len)?;
            }
        }
        for (addr, len) in &wanted {
            self.netlink.add_address(ns, CONTAINER_IF, *addr, *len)?;
        }
        let mut gateways: Vec<IpAddr> = Vec::new();
        if c.ipv4.is_some() {
            gateways.push(IpAddr::V4(GATEWAY_V4));
        }
        if c.ipv6.is_some() {
            gateways.push(IpAddr::V6(GATEWAY_V6));
        }
        for gateway in gateways {
            self.netlink
                .replace_neighbour(ns, CONTAINER_IF, gateway, host_mac)?;
            self.netlink.replace_route(
                ns,
                &Route::Default {
                    gateway,
                    dev: CONTAINER_IF.into(),
                },
            )?;
        }

        // Host side.
        self.netlink.set_up(Netns::Current, &host)?;
        for (addr, len) in &wanted {
            self.netlink.replace_route(
                Netns::Current,
                &Route::Direct {
                    addr: *addr,
                    len: *len,
                    dev: host.clone(),
                },
            )?;
            self.netlink
                .replace_neighbour(Netns::Current, &host, *addr, c.mac.0)?;
        }
        Ok(())
    }

    /// Moves a plumbed container from `old` addresses to `new` ones.
    fn readdress(&mut self, pid: u32, old: &ContainerNet, new: &ContainerNet) -> NetResult<()> {
        let ns = Netns::Pid(pid);
        let host = link_name(new.link);
        let pairs: [(Option<IpAddr>, Option<IpAddr>, u8); 2] = [
            (old.ipv4.map(IpAddr::V4), new.ipv4.map(IpAddr::V4), 32),
            (old.ipv6.map(IpAddr::V6), new.ipv6.map(IpAddr::V6), 128),
        ];
        for (before, after, len) in pairs {
            if before == after {
                continue;
            }
            if let Some(a) = after {
                if before.is_none() {
                    // The first address of a family: the container needs that family's
                    // gateway too; a full plumb does it all.
                    return self.plumb(new, pid);
                }
                self.netlink.add_address(ns, CONTAINER_IF, a, len)?;
                let route = Route::Direct {
                    addr: a,
                    len,
                    dev: host.clone(),
                };
                self.netlink.replace_route(Netns::Current, &route)?;
                self.netlink
                    .replace_neighbour(Netns::Current, &host, a, new.mac.0)?;
            }
            if let Some(b) = before {
                self.netlink.del_address(ns, CONTAINER_IF, b, len)?;
                let route = Route::Direct {
                    addr: b,
                    len,
                    dev: host.clone(),
                };
                self.netlink.del_route(Netns::Current, &route)?;
                self.netlink.del_neighbour(Netns::Current, &host, b)?;
            }
        }
        Ok(())
    }

    /// Deletes links and routes gantry made for containers that are gone or not running.
    fn sweep(&mut self) -> NetResult<()> {
        let mut live_links = BTreeSet::new();
        let mut wanted_routes = BTreeSet::new();
        for (name, c) in &self.state.containers {
            if !self.pids.contains_key(name) {
                continue;
            }
            let dev = link_name(c.link);
            if let Some(a) = c.ipv4 {
                wanted_routes.insert(Route::Direct {
                    addr: IpAddr::V4(a),
                    len: 32,
                    dev: dev.clone(),
                });
            }
            if let Some(a) = c.ipv6 {
                wanted_routes.insert(Route::Direct {
                    addr: IpAddr::V6(a),
                    len: 128,
                    dev: dev.clone(),
                });
            }
            live_links.insert(dev);
        }
        for link in self.netlink.links_with_prefix(LINK_PREFIX)? {
            if !live_links.contains(&link) {
                self.netlink.delete_link(Netns::Current, &link)?;
            }
        }
        for route in self.netlink.own_routes()? {
            if !wanted_routes.contains(&route) {
                self.netlink.del_route(Netns::Current, &route)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running a dataplane on its own thread

type Job = Box<dyn FnOnce(&mut Dataplane) + Send>;

/// A [`Dataplane`] on a dedicated thread ("gantry-net"), for async callers: the kernel calls
/// block, and entering a namespace must never happen on a tokio worker.
pub struct DataplaneHandle {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DataplaneHandle {
    /// Starts the thread (entering `config.netns` first, if given), opens the real netlink
    /// and nft implementations there, and loads the state. Blocks until that is done.
    pub fn start(config: DataplaneConfig) -> NetResult<Self> {
        Self::start_with(config, |_| {
            Ok((
                Box::new(KernelNetlink::new()?) as Box<dyn Netlink>,
                Box::new(NftFirewall::default()) as Box<dyn Firewall>,
            ))
        })
    }

    /// Like [`DataplaneHandle::start`], with the kernel seams built by `make` on the thread.
    pub fn start_with<F>(config: DataplaneConfig, make: F) -> NetResult<Self>
    where
        F: FnOnce(&DataplaneConfig) -> NetResult<(Box<dyn Netlink>, Box<dyn Firewall>)>
            + Send
            + 'static,
    {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<NetResult<()>>(1);
        let thread = std::thread::Builder::new()
            .name("gantry-net".into())
            .spawn(move || {
                let opened = (|| {
                    if let Some(path) = &config.netns {
                        enter_and_verify(path)?;
                    }
                    let (netlink, firewall) = make(&config)?;
                    Dataplane::open(&config.state_dir, netlink, firewall)
                })();
                let mut dataplane = match opened {
                    Ok(d) => {
                        let _ = ready_tx.send(Ok(()));
                        d
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    let run = std::panic::AssertUnwindSafe(|| job(&mut dataplane));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("a network dataplane operation panicked");
                    }
                }
            })
            .map_err(|e| NetworkError::Kernel(format!("cannot start the network thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(DataplaneHandle {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(NetworkError::Stopped)
            }
        }
    }

    /// Runs `f` on the dataplane thread and waits for it without blocking the runtime.
    pub async fn run<R, F>(&self, f: F) -> NetResult<R>
    where
        F: FnOnce(&mut Dataplane) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Box::new(move |d| {
            let _ = tx.send(f(d));
        }))?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Runs `f` on the dataplane thread, blocking the caller (not for async contexts).
    #[cfg(test)]
    pub fn run_blocking<R, F>(&self, f: F) -> NetResult<R>
    where
        F: FnOnce(&mut Dataplane) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Box::new(move |d| {
            let _ = tx.send(f(d));
        }))?;
        rx.recv().map_err(|_| NetworkError::Stopped)
    }

    fn send(&self, job: Job) -> NetResult<()> {
        self.jobs
            .as_ref()
            .ok_or(NetworkError::Stopped)?
            .send(job)
            .map_err(|_| NetworkError::Stopped)
    }

    /// Lets queued operations finish, then ends the thread.
    #[cfg(test)]
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DataplaneHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Enters the namespace at `path` for good (the dataplane thread only) and checks it took.
fn enter_and_verify(path: &std::path::Path) -> NetResult<()> {
    let fail = |e: std::io::Error| NetworkError::Kernel(format!("enter {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(fail)?;
    netlink::enter_netns(&file).map_err(fail)?;
    let want = netlink::netns_id(&path.to_string_lossy()).map_err(fail)?;
    let have = netlink::netns_id("/proc/thread-self/ns/net").map_err(fail)?;
    if want != have {
        return Err(NetworkError::Kernel(format!(
            "the network thread is not in {} after setns",
            path.display()
        )));
    }
    Ok(())
}
