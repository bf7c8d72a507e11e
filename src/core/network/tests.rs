//! Dataplane logic against the recording netlink fake and the element-holding firewall fake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::netlink::fake::FakeNetlink;
use super::netlink::{Netns, Route};
use super::nft::fake::FakeFirewall;
use super::nft::Element;
use super::*;

struct Rig {
    dataplane: Dataplane,
    netlink: FakeNetlink,
    firewall: FakeFirewall,
    dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let netlink = FakeNetlink::default();
    let firewall = FakeFirewall::default();
    let dataplane = Dataplane::open(
        dir.path(),
        Box::new(netlink.clone()),
        Box::new(firewall.clone()),
    )
    .unwrap();
    Rig {
        dataplane,
        netlink,
        firewall,
        dir,
    }
}

impl Rig {
    fn reopen(&mut self) {
        self.dataplane = Dataplane::open(
            self.dir.path(),
            Box::new(self.netlink.clone()),
            Box::new(self.firewall.clone()),
        )
        .unwrap();
    }
    fn table(&self) -> Elements {
        self.firewall.table.lock().unwrap().clone().unwrap()
    }
    fn live(&self, pid: u32) {
        self.netlink.live_pids.lock().unwrap().insert(pid);
    }
    /// The netlink fake's kernel as it is now.
    fn kernel(&self) -> netlink::fake::FakeKernel {
        self.netlink.kernel.lock().unwrap().clone()
    }
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

fn spec(name: &str, n: u8) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        mac: format!("02:00:00:00:00:{n:02x}").parse().unwrap(),
        ipv4: Some(v4(n)),
        ipv6: Some(v6(n as u16)),
        internet: false,
    }
}

fn tcp(external_port: u16, container: &str, internal_port: u16) -> PortForward {
    PortForward {
        external_port,
        protocol: Protocol::Tcp,
        container: container.into(),
        internal_port,
    }
}

/// Containers a and b (2, 3), connected.
fn a_connected_to_b(r: &mut Rig) {
    r.dataplane.add_container(spec("a", 2)).unwrap();
    r.dataplane.add_container(spec("b", 3)).unwrap();
    r.dataplane.connect("a", "b").unwrap();
}

/// Containers a, b and c (2, 3, 4), a connected to b, c on the internet, and TCP 8080
/// forwarded to port 80 of `forward_to`: six operations.
fn three_containers(r: &mut Rig, forward_to: &str) {
    r.dataplane.add_container(spec("a", 2)).unwrap();
    r.dataplane.add_container(spec("b", 3)).unwrap();
    r.dataplane.add_container(spec("c", 4)).unwrap();
    r.dataplane.connect("a", "b").unwrap();
    r.dataplane.set_internet("c", true).unwrap();
    r.dataplane.add_forward(tcp(8080, forward_to, 80)).unwrap();
}

#[test]
fn elements_follow_containers_connections_internet_and_forwards() {
    let mut r = rig();
    r.dataplane.reapply().unwrap();
    three_containers(&mut r, "b");
    let t = r.table();
    assert!(t.contains(&Element::Link4(v4(2), v4(3))));
    assert!(t.contains(&Element::Link4(v4(3), v4(2))));
    assert!(t.contains(&Element::Link6(v6(2), v6(3))));
    assert!(!t
        .iter()
        .any(|e| matches!(e, Element::Link4(a, _) if *a == v4(4))));
    assert!(t.contains(&Element::Internet4(v4(4))));
    assert!(t.contains(&Element::Internet6(v6(4))));
    assert!(!t.contains(&Element::Internet4(v4(2))));
    assert!(t.contains(&Element::Source4("gv-1".into(), v4(2))));
    assert!(t.contains(&Element::ForwardAddr4(Protocol::Tcp, 8080, v4(3))));
    assert!(t.contains(&Element::ForwardAddr6(Protocol::Tcp, 8080, v6(3))));
    assert!(t.contains(&Element::ForwardPort(Protocol::Tcp, 8080, 80)));
    // Deltas only: one full apply (reapply), everything else incremental.
    assert_eq!(*r.firewall.full_applies.lock().unwrap(), 1);
    assert_eq!(t, elements_all(r.dataplane.state()));

    r.dataplane.disconnect("a", "b").unwrap();
    r.dataplane.set_internet("c", false).unwrap();
    r.dataplane.remove_forward(8080, Protocol::Tcp).unwrap();
    let t = r.table();
    assert!(!t.iter().any(|e| matches!(
        e,
        Element::Link4(..) | Element::Link6(..) | Element::Internet4(_) | Element::ForwardPort(..)
    )));
    assert_eq!(t, elements_all(r.dataplane.state()));
}

#[test]
fn errors_for_duplicates_and_missing_things() {
    let mut r = rig();
    r.dataplane.add_container(spec("a", 2)).unwrap();
    r.dataplane.add_container(spec("b", 3)).unwrap();
    assert!(matches!(
        r.dataplane.add_container(spec("a", 9)),
        Err(NetworkError::AlreadyExists(_))
    ));
    assert!(matches!(
        r.dataplane.add_container(spec("z", 2)),
        Err(NetworkError::AlreadyExists(_))
    ));
    assert!(matches!(
        r.dataplane.connect("a", "nope"),
        Err(NetworkError::NotFound(_))
    ));
    assert!(matches!(
        r.dataplane.connect("x", "y"),
        Err(NetworkError::NotFound(m)) if m.contains("don't exist")
    ));
    assert!(matches!(
        r.dataplane.connect("a", "a"),
        Err(NetworkError::Invalid(_))
    ));
    r.dataplane.connect("a", "b").unwrap();
    assert!(matches!(
        r.dataplane.connect("b", "a"),
        Err(NetworkError::AlreadyExists(_))
    ));
    let fwd = tcp(8080, "a", 80);
    r.dataplane.add_forward(fwd.clone()).unwrap();
    let dup = PortForward {
        container: "b".into(),
        ..fwd.clone()
    };
    assert!(matches!(
        r.dataplane.add_forward(dup),
        Err(NetworkError::AlreadyExists(_))
    ));
    // The same port over udp is a different forward.
    r.dataplane
        .add_forward(PortForward {
            protocol: Protocol::Udp,
            ..fwd
        })
        .unwrap();
    assert!(matches!(
        r.dataplane.remove_forward(9, Protocol::Tcp),
        Err(NetworkError::NotFound(_))
    ));
    assert!(matches!(
        r.dataplane.set_ipv4("b", v4(2)),
        Err(NetworkError::AlreadyExists(_))
    ));
    assert!(matches!(
        r.dataplane.set_ipv4("b", Ipv4Addr::new(169, 254, 1, 1)),
        Err(NetworkError::Invalid(_))
    ));
    assert!(matches!(
        r.dataplane.set_internet("nope", true),
        Err(NetworkError::NotFound(_))
    ));
}

#[test]
fn attach_plumbs_both_ends_and_is_idempotent() {
    let mut r = rig();
    r.live(4242);
    r.dataplane.reapply().unwrap();
    r.dataplane.add_container(spec("a", 2)).unwrap();
    r.dataplane.attach("a", 4242).unwrap();
    assert_eq!(r.dataplane.pid("a"), Some(4242));
    let first = r.kernel();
    let ns = Netns::Pid(4242);
    let eth0 = first.links.get(&(ns, "eth0".into())).unwrap();
    assert_eq!(eth0.2, [2, 0, 0, 0, 0, 2], "requested MAC");
    assert!(eth0.3, "eth0 up");
    assert!(first.links.get(&(Netns::Current, "gv-1".into())).unwrap().3);
    assert!(first
        .addresses
        .contains(&(ns, "eth0".into(), IpAddr::V4(v4(2)), 32)));
    assert!(first
        .addresses
        .contains(&(ns, "eth0".into(), IpAddr::V6(v6(2)), 128)));
    assert_eq!(
        first
            .sysctls
            .get(&(ns, "net/ipv6/conf/eth0/accept_dad".into())),
        Some(&"0".to_string())
    );
    assert_eq!(
        first
            .sysctls
            .get(&(Netns::Current, "net/ipv4/ip_forward".into())),
        Some(&"1".to_string())
    );
    assert!(first.routes.contains(&(
        Netns::Current,
        Route::Direct {
            addr: IpAddr::V4(v4(2)),
            len: 32,
            dev: "gv-1".into()
        }
    )));
    assert!(first.routes.contains(&(
        ns,
        Route::Default {
            gateway: IpAddr::V6(netlink::GATEWAY_V6),
            dev: "eth0".into()
        }
    )));

    // Re-attaching and re-applying twice changes nothing and creates no second veth.
    r.dataplane.attach("a", 4242).unwrap();
    r.dataplane.reapply().unwrap();
    r.reopen();
    r.dataplane.attach("a", 4242).unwrap();
    r.dataplane.reapply().unwrap();
    let again = r.kernel();
    assert_eq!(again.links, first.links);
    assert_eq!(again.addresses, first.addresses);
    assert_eq!(again.routes, first.routes);
    assert_eq!(again.neighbours, first.neighbours);
    let creates = again
        .calls
        .iter()
        .filter(|c| c.starts_with("create_veth"))
        .count();
    assert_eq!(creates, 1);
}

#[test]
fn restart_gets_a_new_link_and_address_change_moves_everything() {
    let mut r = rig();
    r.live(100);
    r.dataplane.reapply().unwrap();
    a_connected_to_b(&mut r);
    r.dataplane.attach("a", 100).unwrap();

    // Stop/start: a new pid, the old namespace is gone.
    r.netlink.kill_pid(100);
    r.live(101);
    r.dataplane.attach("a", 101).unwrap();
    let k = r.kernel();
    assert!(k.links.contains_key(&(Netns::Pid(101), "eth0".into())));
    assert!(!k.links.keys().any(|(n, _)| *n == Netns::Pid(100)));

    r.dataplane.set_ipv4("a", v4(20)).unwrap();
    let k = r.kernel();
    let ns = Netns::Pid(101);
    assert!(k
        .addresses
        .contains(&(ns, "eth0".into(), IpAddr::V4(v4(20)), 32)));
    assert!(!k
        .addresses
        .contains(&(ns, "eth0".into(), IpAddr::V4(v4(2)), 32)));
    assert!(k.routes.contains(&(
        Netns::Current,
        Route::Direct {
            addr: IpAddr::V4(v4(20)),
            len: 32,
            dev: "gv-1".into()
        }
    )));
    assert!(!k.routes.iter().any(|(_, r)| matches!(
        r,
        Route::Direct { addr, .. } if *addr == IpAddr::V4(v4(2))
    )));
    let t = r.table();
    assert!(t.contains(&Element::Link4(v4(20), v4(3))));
    assert!(!t.contains(&Element::Link4(v4(2), v4(3))));
    assert!(t.contains(&Element::Source4("gv-1".into(), v4(20))));
    assert_eq!(t, elements_all(r.dataplane.state()));

    r.dataplane.set_ipv6("a", v6(0x20)).unwrap();
    assert!(r.table().contains(&Element::Link6(v6(0x20), v6(3))));
}

#[test]
fn state_survives_a_restart_and_a_drifted_table_is_rebuilt() {
    let mut r = rig();
    r.dataplane.reapply().unwrap();
    a_connected_to_b(&mut r);
    let expected = r.table();
    r.reopen();
    assert!(r.dataplane.state().is_connected("b", "a"));
    r.dataplane.reapply().unwrap();
    assert_eq!(r.table(), expected);
    // Someone flushed the ruleset; the next operation's delta fails, so it rebuilds.
    *r.firewall.table.lock().unwrap() = None;
    r.dataplane.set_internet("a", true).unwrap();
    assert_eq!(r.table(), elements_all(r.dataplane.state()));
    assert!(r.table().contains(&Element::Link4(v4(2), v4(3))));
}

#[test]
fn operations_are_journaled_and_a_failed_one_changes_nothing() {
    let mut r = rig();
    r.dataplane.reapply().unwrap();
    three_containers(&mut r, "c");
    // One appended line per operation; the snapshot is not rewritten per operation.
    let journal = r.dir.path().join("network.journal");
    let lines = || std::fs::read_to_string(&journal).unwrap().lines().count();
    assert_eq!(lines(), 6);
    assert!(!r.dir.path().join("network.json").exists());
    let state = r.dataplane.state().clone();
    let table = r.table();

    // The firewall refuses everything: the operation fails and leaves no trace.
    *r.firewall.fail_deltas.lock().unwrap() = true;
    *r.firewall.fail_all.lock().unwrap() = true;
    assert!(matches!(
        r.dataplane.connect("a", "c"),
        Err(NetworkError::Kernel(_))
    ));
    assert!(r.dataplane.remove_container("a").is_err());
    assert_eq!(r.dataplane.state(), &state);
    assert_eq!(lines(), 6);
    *r.firewall.fail_deltas.lock().unwrap() = false;
    *r.firewall.fail_all.lock().unwrap() = false;

    r.reopen();
    assert_eq!(r.dataplane.state(), &state);
    r.dataplane.reapply().unwrap();
    assert_eq!(r.table(), table);
    // Disconnect touches only the pair's elements.
    r.dataplane.disconnect("a", "b").unwrap();
    assert!(!r.table().contains(&Element::Link4(v4(2), v4(3))));
    assert!(r.table().contains(&Element::Source4("gv-1".into(), v4(2))));
    assert_eq!(r.table(), elements_all(r.dataplane.state()));
}

#[test]
fn remove_container_drops_its_connections_forwards_and_link() {
    let mut r = rig();
    r.live(7);
    r.dataplane.reapply().unwrap();
    a_connected_to_b(&mut r);
    r.dataplane.attach("a", 7).unwrap();
    r.dataplane.add_forward(tcp(2222, "a", 22)).unwrap();
    r.dataplane.remove_container("a").unwrap();
    assert!(r.dataplane.state().connections.is_empty());
    assert!(r.dataplane.state().forwards.is_empty());
    assert_eq!(r.table(), elements_all(r.dataplane.state()));
    assert!(!r
        .kernel()
        .links
        .contains_key(&(Netns::Current, "gv-1".into())));
    // Names and links are never reused.
    r.dataplane.add_container(spec("a", 2)).unwrap();
    assert_eq!(r.dataplane.container("a").unwrap().link, 3);
}

#[test]
fn wipe_removes_everything() {
    let mut r = rig();
    r.live(9);
    r.dataplane.reapply().unwrap();
    r.dataplane.add_container(spec("a", 2)).unwrap();
    r.dataplane.attach("a", 9).unwrap();
    r.dataplane.wipe().unwrap();
    assert!(r.firewall.table.lock().unwrap().is_none());
    assert!(!r
        .kernel()
        .links
        .keys()
        .any(|(n, name)| *n == Netns::Current && name.starts_with(LINK_PREFIX)));
    assert!(r.dataplane.state().containers.is_empty());
    r.reopen();
    assert!(r.dataplane.state().containers.is_empty());
}

#[test]
fn attach_refuses_the_host_namespace() {
    let mut r = rig();
    r.live(1);
    r.dataplane.add_container(spec("a", 2)).unwrap();
    assert!(matches!(
        r.dataplane.attach("a", 1),
        Err(NetworkError::Invalid(_))
    ));
    assert!(r.kernel().links.is_empty());
}

#[test]
fn handle_runs_operations_on_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let config = DataplaneConfig {
        state_dir: dir.path().into(),
        netns: None,
    };
    let firewall = FakeFirewall::default();
    let fw = firewall.clone();
    let handle = DataplaneHandle::start_with(config, move |_| {
        Ok((
            Box::new(FakeNetlink::default()) as Box<dyn netlink::Netlink>,
            Box::new(fw) as Box<dyn nft::Firewall>,
        ))
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let thread = rt
        .block_on(handle.run(|d| {
            d.add_container(spec("a", 2))?;
            Ok::<_, NetworkError>(std::thread::current().name().map(str::to_string))
        }))
        .unwrap()
        .unwrap();
    assert_eq!(thread.as_deref(), Some("gantry-net"));
    handle.stop();
    assert!(firewall
        .table
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .contains(&Element::Source4("gv-1".into(), v4(2))));
}
