//! The dataplane against the real kernel, nft, iptables and containers from the test dockerd.
//!
//! Everything happens in namespaces these tests create: a "guest" namespace runs the whole
//! dataplane (host veth ends, routes, nft table, iptables FORWARD policy drop as Docker
//! leaves it), a "wan" namespace is the outside world behind the guest's uplink. The
//! containers' own namespaces belong to the test dockerd; only their `eth0` comes from here.
//! Ignored by a plain `cargo test`; `scripts/test.sh` runs them (it sets
//! GANTRY_TEST_DOCKER_HOST). Run without the test dockerd, they skip loudly, or fail under CI.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::netlink::{enter_netns, run_in_netns};
use super::*;

const IMAGE: &str = "gantry-test/busybox:latest";
const SERVER_PORT: u16 = 7000;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "gantry-nt-{}-{}{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace owned by the test; deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(tag: &str) -> Self {
        let name = unique(tag);
        ok("ip", &["netns", "add", &name]);
        let ns = TestNetns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
    fn run(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend(cmd);
        run("ip", &args)
    }
    fn ok(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend(cmd);
        ok("ip", &args)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A container from the test dockerd, with `--network none`; removed on drop.
struct TestContainer {
    host: String,
    name: String,
}

impl TestContainer {
    fn start(host: &str, tag: &str) -> Self {
        let name = format!(
            "gnt-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        ok(
            "docker",
            &[
                "-H",
                host,
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                &name,
                IMAGE,
                "sleep",
                "900",
            ],
        );
        TestContainer {
            host: host.into(),
            name,
        }
    }
    fn docker(&self, args: &[&str]) -> Output {
        let mut all = vec!["-H", self.host.as_str()];
        all.extend(args);
        run("docker", &all)
    }
    fn pid(&self) -> u32 {
        let out = self.docker(&["inspect", "-f", "{{.State.Pid}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
    fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend(cmd);
        self.docker(&args)
    }
    /// A TCP server that answers every connection with the container's tag.
    fn serve(&self, answer: &str) {
        let out = self.docker(&[
            "exec", "-d", &self.name, "nc", "-ll", "-p", "7000", "-e", "echo", answer,
        ]);
        assert!(out.status.success());
    }
    fn ping(&self, to: IpAddr) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", &to.to_string()])
            .status
            .success()
    }
    /// One probe that must go unanswered (a short wait: a reachable peer answers at once).
    fn blocked(&self, to: IpAddr) -> bool {
        !self
            .exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    }
    /// Pings up to three times (a fresh neighbour or route may drop the first packet).
    fn reaches(&self, to: IpAddr) -> bool {
        (0..3).any(|_| self.ping(to))
    }
    fn fetch(&self, to: IpAddr, port: u16) -> Option<String> {
        let out = self.exec(&["nc", "-w", "1", &to.to_string(), &port.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    }
    fn eth0_addresses(&self) -> BTreeSet<String> {
        let out = self.exec(&["ip", "-o", "addr", "show", "dev", "eth0"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().skip_while(|w| !w.starts_with("inet"));
                Some(format!("{} {}", words.next()?, words.next()?))
            })
            .filter(|a| !a.contains("fe80:"))
            .collect()
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", &self.name]);
    }
}

/// TCP servers in the wan namespace that record who connected.
struct WanServer {
    seen: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WanServer {
    fn start(ns: &Path, addrs: &[SocketAddr]) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for addr in addrs {
            let (addr, seen, stop) = (*addr, seen.clone(), stop.clone());
            let file = std::fs::File::open(ns).unwrap();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                enter_netns(&file).unwrap();
                let listener = TcpListener::bind(addr).unwrap();
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                // Bounded: at most 15 minutes of 20 ms polls.
                for _ in 0..45_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            seen.lock().unwrap().push(peer.ip());
                            let _ = s.write_all(b"wan\n");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }));
            ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        WanServer {
            seen,
            stop,
            threads,
        }
    }
    fn last_peer(&self) -> Option<IpAddr> {
        self.seen.lock().unwrap().last().copied()
    }
}

impl Drop for WanServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from inside namespace `ns` and returns what the server said.
fn fetch_from(ns: &Path, to: SocketAddr) -> Option<String> {
    run_in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text.trim().to_string())
    })
    .unwrap()
}

fn a4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}
fn a6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last)
}
const GUEST4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const WAN4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);
const WAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

/// A guest namespace with an uplink to a wan namespace, and iptables as Docker leaves it.
struct World {
    guest: TestNetns,
    wan: TestNetns,
    state_dir: tempfile::TempDir,
}

impl World {
    fn new(docker_user: bool) -> Self {
        let guest = TestNetns::new("g");
        let wan = TestNetns::new("w");
        guest.ok(&[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", &wan.name,
        ]);
        guest.ok(&["ip", "addr", "add", "198.19.0.2/24", "dev", "up0"]);
        guest.ok(&[
            "ip",
            "addr",
            "add",
            "2001:db8:ff::2/64",
            "dev",
            "up0",
            "nodad",
        ]);
        guest.ok(&["ip", "link", "set", "up0", "up"]);
        wan.ok(&["ip", "addr", "add", "198.19.0.1/24", "dev", "wan0"]);
        wan.ok(&[
            "ip",
            "addr",
            "add",
            "2001:db8:ff::1/64",
            "dev",
            "wan0",
            "nodad",
        ]);
        wan.ok(&["ip", "link", "set", "wan0", "up"]);
        guest.ok(&["ip", "route", "add", "default", "via", "198.19.0.1"]);
        guest.ok(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:ff::1",
        ]);
        for tool in ["iptables", "ip6tables"] {
            guest.ok(&[tool, "-P", "FORWARD", "DROP"]);
            if docker_user {
                guest.ok(&[tool, "-N", "DOCKER-USER"]);
                guest.ok(&[tool, "-A", "DOCKER-USER", "-j", "RETURN"]);
                guest.ok(&[tool, "-I", "FORWARD", "-j", "DOCKER-USER"]);
            }
        }
        World {
            guest,
            wan,
            state_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn agent(&self) -> DataplaneHandle {
        DataplaneHandle::start(DataplaneConfig {
            state_dir: self.state_dir.path().into(),
            netns: Some(self.guest.path()),
        })
        .unwrap()
    }

    /// Starts an agent as gantry does at boot: attach the running containers, then reapply.
    fn boot(&self, containers: &[(&str, &TestContainer)]) -> DataplaneHandle {
        let agent = self.agent();
        let pids: Vec<(String, u32)> = containers
            .iter()
            .map(|(n, c)| (n.to_string(), c.pid()))
            .collect();
        agent
            .run_blocking(move |d| {
                for (name, pid) in pids {
                    d.attach(&name, pid)?;
                }
                d.reapply()
            })
            .unwrap()
            .unwrap();
        agent
    }

    /// gantry's table as JSON without handles, set elements sorted.
    fn ruleset(&self) -> serde_json::Value {
        let text = self
            .guest
            .ok(&["nft", "-j", "list", "table", "inet", "gantry"]);
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        fn normalize(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    map.remove("handle");
                    if let Some(serde_json::Value::Array(elems)) = map.get_mut("elem") {
                        elems.sort_by_key(|e| e.to_string());
                    }
                    map.values_mut().for_each(normalize);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(normalize),
                _ => {}
            }
        }
        normalize(&mut json);
        json["nftables"]
            .as_array_mut()
            .unwrap()
            .retain(|o| o.get("metainfo").is_none());
        json
    }

    fn gantry_links(&self) -> Vec<String> {
        let text = self.guest.ok(&["ip", "-o", "link", "show"]);
        let mut links: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n.starts_with(LINK_PREFIX))
            .collect();
        links.sort();
        links
    }

    fn gantry_routes(&self) -> Vec<String> {
        let mut routes: Vec<String> = ["-4", "-6"]
            .iter()
            .flat_map(|f| {
                self.guest
                    .ok(&["ip", f, "route", "show", "proto", "198"])
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        routes.sort();
        routes
    }

    fn iptables_rules(&self) -> Vec<String> {
        ["iptables", "ip6tables"]
            .iter()
            .flat_map(|t| {
                self.guest
                    .ok(&[t, "-S"])
                    .lines()
                    .filter(|l| l.contains("gantry"))
                    .map(|l| format!("{t} {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn table_exists(&self) -> bool {
        self.guest
            .run(&["nft", "list", "table", "inet", "gantry"])
            .status
            .success()
    }
}

fn spec(name: &str, n: u8) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        mac: format!("02:42:c6:12:00:{n:02x}").parse().unwrap(),
        ipv4: Some(a4(n)),
        ipv6: Some(a6(n as u16)),
        internet: false,
    }
}

/// Checks that exactly the connected pairs talk (ping both families, TCP both ways).
fn assert_only_connected(
    names: &[(&str, &TestContainer, IpAddr, IpAddr)],
    connected: &[(&str, &str)],
) {
    for (from, fc, _, _) in names {
        for (to, _, v4, v6) in names {
            if from == to {
                continue;
            }
            let linked = connected
                .iter()
                .any(|(x, y)| (x == from && y == to) || (x == to && y == from));
            if linked {
                assert!(fc.reaches(*v4), "{from} -> {to} ({v4}) should answer");
                assert!(fc.reaches(*v6), "{from} -> {to} ({v6}) should answer");
                assert_eq!(
                    fc.fetch(*v4, SERVER_PORT).as_deref(),
                    Some(*to),
                    "{from} -> {to} tcp v4"
                );
                assert_eq!(
                    fc.fetch(*v6, SERVER_PORT).as_deref(),
                    Some(*to),
                    "{from} -> {to} tcp v6"
                );
            } else {
                assert!(fc.blocked(*v4), "{from} -> {to} ({v4}) must not answer");
                assert!(fc.blocked(*v6), "{from} -> {to} ({v6}) must not answer");
                assert_eq!(
                    fc.fetch(*v4, SERVER_PORT),
                    None,
                    "{from} -> {to} tcp v4 must fail"
                );
            }
        }
    }
}

/// Three real containers on the dataplane, a server on the "internet" side, and the agent:
/// the scene `dataplane_with_real_containers` plays its phases in.
struct Scene {
    world: World,
    ca: TestContainer,
    cb: TestContainer,
    cc: TestContainer,
    wan: WanServer,
}

type Row<'a> = (&'static str, &'a TestContainer, IpAddr, IpAddr);

impl Scene {
    fn new(host: &str) -> Self {
        let world = World::new(true);
        let wan = WanServer::start(
            &world.wan.path(),
            &[
                SocketAddr::from((WAN4, 9000)),
                SocketAddr::from((WAN6, 9000)),
            ],
        );
        Scene {
            ca: TestContainer::start(host, "a"),
            cb: TestContainer::start(host, "b"),
            cc: TestContainer::start(host, "c"),
            world,
            wan,
        }
    }

    /// The containers with the addresses they have (b's last bytes given).
    fn table(&self, b4: u8, b6: u16) -> Vec<Row<'_>> {
        vec![
            ("a", &self.ca, IpAddr::V4(a4(2)), IpAddr::V6(a6(2))),
            ("b", &self.cb, IpAddr::V4(a4(b4)), IpAddr::V6(a6(b6))),
            ("c", &self.cc, IpAddr::V4(a4(4)), IpAddr::V6(a6(4))),
        ]
    }

    fn all(&self) -> [(&'static str, &TestContainer); 3] {
        [("a", &self.ca), ("b", &self.cb), ("c", &self.cc)]
    }

    fn via_wan(&self, addr: IpAddr) -> Option<String> {
        fetch_from(&self.world.wan.path(), SocketAddr::from((addr, 8080)))
    }
}

/// Runs `f` on the dataplane and asserts it succeeded.
fn apply<T: Send + 'static>(
    agent: &DataplaneHandle,
    f: impl FnOnce(&mut super::Dataplane) -> Result<T, NetworkError> + Send + 'static,
) -> T {
    agent.run_blocking(f).unwrap().unwrap()
}

fn attach_all(s: &Scene, agent: &DataplaneHandle) {
    let pids = [("a", s.ca.pid()), ("b", s.cb.pid()), ("c", s.cc.pid())];
    apply(agent, move |d| {
        d.reapply()?;
        for (i, (name, pid)) in pids.iter().enumerate() {
            d.add_container(spec(name, 2 + i as u8))?;
            d.attach(name, *pid)?;
        }
        Ok(())
    });
    for (n, c) in s.all() {
        c.serve(n);
    }
    assert_eq!(
        s.ca.eth0_addresses(),
        BTreeSet::from([
            "inet 198.18.0.2/32".to_string(),
            "inet6 2001:db8:1::2/128".to_string()
        ])
    );
    let mac = s.ca.exec(&["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(
        String::from_utf8_lossy(&mac.stdout).trim(),
        "02:42:c6:12:00:02"
    );
}

/// Isolated by default; then exactly the connected pairs talk.
fn connections(s: &Scene, agent: &DataplaneHandle) {
    assert_only_connected(&s.table(3, 3), &[]);
    apply(agent, |d| d.connect("a", "b"));
    assert_only_connected(&s.table(3, 3), &[("a", "b")]);
    apply(agent, |d| d.connect("b", "c"));
    apply(agent, |d| d.disconnect("a", "b"));
    assert_only_connected(&s.table(3, 3), &[("b", "c")]);
    apply(agent, |d| d.connect("a", "b"));
}

/// Internet on and off, masqueraded behind the guest's uplink address.
fn internet(s: &Scene, agent: &DataplaneHandle) {
    let (ca, cb) = (&s.ca, &s.cb);
    assert_eq!(ca.fetch(IpAddr::V4(WAN4), 9000), None);
    assert!(ca.blocked(IpAddr::V6(WAN6)));
    apply(agent, |d| d.set_internet("a", true));
    assert_eq!(ca.fetch(IpAddr::V4(WAN4), 9000).as_deref(), Some("wan"));
    assert_eq!(s.wan.last_peer(), Some(IpAddr::V4(GUEST4)));
    assert_eq!(ca.fetch(IpAddr::V6(WAN6), 9000).as_deref(), Some("wan"));
    assert_eq!(s.wan.last_peer(), Some(IpAddr::V6(GUEST6)));
    assert!(ca.reaches(IpAddr::V6(WAN6)));
    assert_eq!(cb.fetch(IpAddr::V4(WAN4), 9000), None, "b has no internet");
    apply(agent, |d| d.set_internet("a", false));
    assert_eq!(ca.fetch(IpAddr::V4(WAN4), 9000), None);
    assert!(ca.blocked(IpAddr::V4(WAN4)));
}

/// Port forward: from wan (both families), from the guest itself, duplicate refused.
fn forwards(s: &Scene, agent: &DataplaneHandle) {
    let forward = PortForward {
        external_port: 8080,
        protocol: Protocol::Tcp,
        container: "b".into(),
        internal_port: SERVER_PORT,
    };
    let f = forward.clone();
    apply(agent, move |d| d.add_forward(f));
    assert_eq!(s.via_wan(IpAddr::V4(GUEST4)).as_deref(), Some("b"));
    assert_eq!(s.via_wan(IpAddr::V6(GUEST6)).as_deref(), Some("b"));
    let from_guest = fetch_from(&s.world.guest.path(), SocketAddr::from((GUEST4, 8080)));
    assert_eq!(from_guest.as_deref(), Some("b"));
    let dup = PortForward {
        container: "c".into(),
        ..forward
    };
    assert!(matches!(
        agent.run_blocking(move |d| d.add_forward(dup)).unwrap(),
        Err(NetworkError::AlreadyExists(_))
    ));
    assert_eq!(
        fetch_from(&s.world.wan.path(), SocketAddr::from((GUEST4, 8081))),
        None
    );
}

/// A changed address works, the old one does not, and connections and forwards follow.
fn readdress(s: &Scene, agent: &DataplaneHandle) {
    let ca = &s.ca;
    apply(agent, |d| d.set_ipv4("b", a4(30)));
    apply(agent, |d| d.set_ipv6("b", a6(0x30)));
    assert!(ca.reaches(IpAddr::V4(a4(30))));
    assert!(ca.reaches(IpAddr::V6(a6(0x30))));
    assert!(ca.blocked(IpAddr::V4(a4(3))));
    assert!(ca.blocked(IpAddr::V6(a6(3))));
    assert_eq!(
        s.cb.eth0_addresses(),
        BTreeSet::from([
            "inet 198.18.0.30/32".to_string(),
            "inet6 2001:db8:1::30/128".to_string()
        ])
    );
    assert_eq!(s.via_wan(IpAddr::V4(GUEST4)).as_deref(), Some("b"));
    assert_eq!(s.via_wan(IpAddr::V6(GUEST6)).as_deref(), Some("b"));
    assert_only_connected(&s.table(30, 0x30), &[("a", "b"), ("b", "c")]);
}

/// Stop and start: the container comes back with a new namespace and gets its network.
fn container_restart(s: &Scene, agent: &DataplaneHandle) {
    let ca = &s.ca;
    assert!(ca.docker(&["stop", "-t", "1", &ca.name]).status.success());
    apply(agent, |d| d.detach("a"));
    assert!(ca.docker(&["start", &ca.name]).status.success());
    let pid = ca.pid();
    apply(agent, move |d| d.attach("a", pid));
    ca.serve("a");
    assert_only_connected(&s.table(30, 0x30), &[("a", "b"), ("b", "c")]);
}

/// What the kernel holds of gantry's dataplane.
#[derive(Debug, PartialEq)]
struct Kernel {
    ruleset: serde_json::Value,
    links: Vec<String>,
    routes: Vec<String>,
    rules: Vec<String>,
}

impl Kernel {
    fn of(world: &World) -> Self {
        Kernel {
            ruleset: world.ruleset(),
            links: world.gantry_links(),
            routes: world.gantry_routes(),
            rules: world.iptables_rules(),
        }
    }
}

/// Restarting the agent (twice) re-applies to an identical ruleset and topology.
fn agent_restarts(s: &Scene, agent: DataplaneHandle) -> Kernel {
    let before = Kernel::of(&s.world);
    assert_eq!(before.links, vec!["gv-1", "gv-2", "gv-3"]);
    assert_eq!(before.rules.len(), 4, "{:?}", before.rules);
    agent.stop();
    for _ in 0..2 {
        s.world.boot(&s.all()).stop();
        assert_eq!(Kernel::of(&s.world), before);
        assert_eq!(s.ca.eth0_addresses().len(), 2);
    }
    assert_only_connected(&s.table(30, 0x30), &[("a", "b"), ("b", "c")]);
    assert_eq!(s.via_wan(IpAddr::V4(GUEST4)).as_deref(), Some("b"));
    before
}

/// A simulated reboot: links, table and FORWARD rules gone; re-applying restores all.
fn reboot(s: &Scene, before: &Kernel) -> DataplaneHandle {
    let guest = &s.world.guest;
    for link in &before.links {
        guest.ok(&["ip", "link", "del", link]);
    }
    guest.ok(&["nft", "delete", "table", "inet", "gantry"]);
    for tool in ["iptables", "ip6tables"] {
        guest.ok(&[tool, "-F", "DOCKER-USER"]);
        guest.ok(&[tool, "-A", "DOCKER-USER", "-j", "RETURN"]);
    }
    assert!(s.ca.blocked(IpAddr::V4(a4(30))));
    let agent = s.world.boot(&s.all());
    let after = Kernel::of(&s.world);
    assert_eq!(
        (&after.ruleset, &after.links, &after.routes),
        (&before.ruleset, &before.links, &before.routes)
    );
    assert_only_connected(&s.table(30, 0x30), &[("a", "b"), ("b", "c")]);
    assert_eq!(s.via_wan(IpAddr::V4(GUEST4)).as_deref(), Some("b"));
    agent
}

/// Wipe leaves nothing behind.
fn wipe(s: &Scene, agent: &DataplaneHandle) {
    apply(agent, |d| d.wipe());
    assert!(s.world.gantry_links().is_empty());
    assert!(s.world.gantry_routes().is_empty());
    assert!(!s.world.table_exists());
    assert!(s.world.iptables_rules().is_empty());
    assert!(!s.ca.exec(&["ip", "link", "show", "eth0"]).status.success());
    assert!(agent
        .run_blocking(|d| d.state().containers.is_empty())
        .unwrap());
}

#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn dataplane_with_real_containers() {
    let Some(host) =
        crate::testutil::docker_host("network::kernel_tests::dataplane_with_real_containers")
    else {
        return;
    };
    let scene = Scene::new(&host);
    let agent = scene.world.agent();
    attach_all(&scene, &agent);
    connections(&scene, &agent);
    internet(&scene, &agent);
    forwards(&scene, &agent);
    readdress(&scene, &agent);
    container_restart(&scene, &agent);
    let before = agent_restarts(&scene, agent);
    let agent = reboot(&scene, &before);
    wipe(&scene, &agent);
    agent.stop();
}

/// Without DOCKER-USER, a FORWARD policy drop gets gantry's accept rules in FORWARD itself.
#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn forward_policy_drop_without_docker_user() {
    let Some(host) = crate::testutil::docker_host(
        "network::kernel_tests::forward_policy_drop_without_docker_user",
    ) else {
        return;
    };
    let world = World::new(false);
    let ca = TestContainer::start(&host, "a");
    let cb = TestContainer::start(&host, "b");
    let all = [("a", &ca), ("b", &cb)];
    let agent = world.agent();
    agent
        .run_blocking(|d| {
            d.add_container(spec("a", 2))?;
            d.add_container(spec("b", 3))?;
            d.connect("a", "b")
        })
        .unwrap()
        .unwrap();
    agent.stop();
    world.boot(&all).stop();
    let rules = world.iptables_rules();
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(rules.iter().all(|r| r.contains("-A FORWARD")), "{rules:?}");
    assert!(ca.reaches(IpAddr::V4(a4(3))));
    assert!(cb.reaches(IpAddr::V6(a6(2))));
    let agent = world.agent();
    agent.run_blocking(|d| d.wipe()).unwrap().unwrap();
    assert!(world.iptables_rules().is_empty());
    assert!(!world.table_exists());
}

/// Every file under `dir` with its contents, to show that a reader changed nothing.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

/// `gantry check`'s comparison against the kernel: the table as the journal says while the
/// dataplane runs, then a set flushed and the table deleted behind gantry's back; the state
/// directory is read, never changed.
#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn the_consistency_check_sees_the_table_changed_behind_gantrys_back() {
    if crate::testutil::docker_host(
        "network::kernel_tests::the_consistency_check_sees_the_table_changed_behind_gantrys_back",
    )
    .is_none()
    {
        return;
    }
    let world = World::new(true);
    let agent = world.agent();
    let forward = PortForward {
        external_port: 8080,
        protocol: Protocol::Tcp,
        container: "b".into(),
        internal_port: SERVER_PORT,
    };
    agent
        .run_blocking(move |d| {
            d.add_container(spec("a", 2))?;
            d.add_container(spec("b", 3))?;
            d.connect("a", "b")?;
            d.add_forward(forward)
        })
        .unwrap()
        .unwrap();
    let config = DataplaneConfig {
        state_dir: world.state_dir.path().into(),
        netns: Some(world.guest.path()),
    };
    let stored = files_under(world.state_dir.path());

    let c = consistency::check(&config).unwrap();
    assert_eq!(c.containers, 2);
    assert!(c.kernel.is_some());
    assert!(c.differences().is_empty(), "{:?}", c.differences());
    assert!(c.stored.values().sum::<usize>() >= 5, "{:?}", c.stored);
    assert_eq!(files_under(world.state_dir.path()), stored);
    agent.stop();
    let stored = files_under(world.state_dir.path());

    // A set that holds elements, emptied with nft.
    let ruleset = world.ruleset();
    let set = ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| {
            let s = o.get("set")?;
            s["elem"].as_array().filter(|e| !e.is_empty())?;
            s["name"].as_str().map(str::to_string)
        })
        .expect("a set with elements");
    world
        .guest
        .ok(&["nft", "flush", "set", "inet", "gantry", &set]);
    let c = consistency::check(&config).unwrap();
    assert_eq!(
        c.differences(),
        vec![format!("{set}: stored {}, kernel 0", c.stored[&set])]
    );

    world
        .guest
        .ok(&["nft", "delete", "table", "inet", "gantry"]);
    let c = consistency::check(&config).unwrap();
    assert_eq!(c.kernel, None);
    assert_eq!(c.containers, 2);
    assert!(!c.differences().is_empty());
    assert_eq!(files_under(world.state_dir.path()), stored);
}
