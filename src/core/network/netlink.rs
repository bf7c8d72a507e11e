//! The kernel-facing half of link plumbing: a small synchronous rtnetlink client and sysctls.
//!
//! Everything here acts on "the network namespace of the calling thread" ([`Netns::Current`])
//! or on the namespace of a container process ([`Netns::Pid`]). A container namespace is
//! entered only by a short-lived helper thread (`setns` moves just that thread), which opens a
//! netlink socket there and hands it back: the socket stays bound to the container namespace,
//! so the calling thread never switches namespaces, and no tokio worker ever does.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};

/// A MAC address.
pub type Mac = [u8; 6];

/// Routes gantry installs carry this protocol number, so a re-apply can find (and sweep) its
/// own routes without touching anyone else's. 0xc6 is unassigned in `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 0xc6;

/// Which network namespace an operation acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Netns {
    /// The namespace of the calling thread (the guest's, where gantry runs).
    Current,
    /// The namespace of this process (a container's init).
    Pid(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op}: {source}")]
    Os {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Protocol(String),
}

impl NetlinkError {
    fn os(op: impl Into<String>, source: io::Error) -> Self {
        NetlinkError::Os {
            op: op.into(),
            source,
        }
    }

    fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Os { source, .. } => source.raw_os_error(),
            NetlinkError::Protocol(_) => None,
        }
    }
}

pub type NlResult<T> = Result<T, NetlinkError>;

/// What gantry needs to know about an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub mac: Option<Mac>,
    pub up: bool,
}

/// The two kinds of route the dataplane installs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `addr/len dev DEV scope link`: the host's route to a container address.
    Direct { addr: IpAddr, len: u8, dev: String },
    /// `default via GW dev DEV onlink`: the container's route to the host.
    Default { gateway: IpAddr, dev: String },
}

impl Route {
    /// The link the route goes out of.
    pub fn dev(&self) -> &str {
        match self {
            Route::Direct { dev, .. } | Route::Default { dev, .. } => dev,
        }
    }
}

/// The narrow seam to the kernel's link, address, route and neighbour tables.
pub trait Netlink: Send {
    fn link(&mut self, ns: Netns, name: &str) -> NlResult<Option<Link>>;
    /// Names of the links in the current namespace that start with `prefix`.
    fn links_with_prefix(&mut self, prefix: &str) -> NlResult<Vec<String>>;
    /// Creates veth `name` here and its peer `peer` (with `peer_mac`) directly inside the
    /// namespace of `peer_pid`, in one request.
    fn create_veth(&mut self, name: &str, peer: &str, peer_mac: Mac, peer_pid: u32)
        -> NlResult<()>;
    /// Deletes a link; a missing link is not an error.
    fn delete_link(&mut self, ns: Netns, name: &str) -> NlResult<()>;
    fn set_mac(&mut self, ns: Netns, name: &str, mac: Mac) -> NlResult<()>;
    fn set_up(&mut self, ns: Netns, name: &str) -> NlResult<()>;
    /// Global-scope addresses of a link, with their prefix lengths.
    fn addresses(&mut self, ns: Netns, name: &str) -> NlResult<Vec<(IpAddr, u8)>>;
    /// Adds (or refreshes) an address, with DAD off.
    fn add_address(&mut self, ns: Netns, name: &str, addr: IpAddr, len: u8) -> NlResult<()>;
    /// Removes an address; a missing one is not an error.
    fn del_address(&mut self, ns: Netns, name: &str, addr: IpAddr, len: u8) -> NlResult<()>;
    fn replace_route(&mut self, ns: Netns, route: &Route) -> NlResult<()>;
    /// Removes a route; a missing one is not an error.
    fn del_route(&mut self, ns: Netns, route: &Route) -> NlResult<()>;
    /// The direct routes in the current namespace that carry [`ROUTE_PROTOCOL`].
    fn own_routes(&mut self) -> NlResult<Vec<Route>>;
    /// Adds or replaces a permanent neighbour entry.
    fn replace_neighbour(&mut self, ns: Netns, dev: &str, addr: IpAddr, mac: Mac) -> NlResult<()>;
    /// Removes a neighbour entry; a missing one is not an error.
    fn del_neighbour(&mut self, ns: Netns, dev: &str, addr: IpAddr) -> NlResult<()>;
    /// Writes sysctls (`net/ipv6/conf/eth0/accept_dad` style paths under /proc/sys).
    fn set_sysctls(&mut self, ns: Netns, settings: &[(String, String)]) -> NlResult<()>;
    /// Whether `pid` lives in the current namespace (plumbing it would touch the host).
    fn shares_current_netns(&mut self, pid: u32) -> NlResult<bool>;
    /// Drops any socket held into a container namespace (it would keep that namespace, and
    /// with it the container's veth, alive after the container stops).
    fn release(&mut self);
}

// ---------------------------------------------------------------------------------------------
// Entering namespaces

/// Runs `f` on a new thread that has entered the network namespace at `path`.
///
/// The thread ends when `f` returns, so the namespace switch never leaks to another task. A
/// process spawned by `f` inherits that namespace.
pub fn run_in_netns<R, F>(path: &std::path::Path, f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let ns = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(&ns)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("netns helper thread panicked"))?
    })
}

/// Moves the calling thread into the network namespace `ns` (an open `/proc/.../ns/net` or
/// `/run/netns/...` file). Only for threads that gantry owns and ends or dedicates.
pub fn enter_netns(ns: &File) -> io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// The identity (device, inode) of a namespace file, to compare namespaces.
pub fn netns_id(path: &str) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn write_sysctls(settings: &[(String, String)]) -> NlResult<()> {
    for (key, value) in settings {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).map_err(|e| NetlinkError::os(format!("write {path}"), e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The socket

const RECV_BUFFER: usize = 64 * 1024;
/// Upper bound on messages read for one request (a dump of a large table included).
const MAX_MESSAGES: usize = 1_000_000;

struct Socket {
    socket: netlink_sys::Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Socket {
    fn open() -> io::Result<Self> {
        let mut socket = netlink_sys::Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // A kernel that never answers must not hang the dataplane thread forever.
        let timeout = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        Ok(Socket {
            socket,
            sequence: 0,
            buffer: vec![0; RECV_BUFFER],
        })
    }

    /// Opens a socket inside the namespace of `pid`, from a helper thread.
    fn open_in_pid(pid: u32) -> NlResult<Self> {
        let path = format!("/proc/{pid}/ns/net");
        run_in_netns(std::path::Path::new(&path), Socket::open)
            .and_then(|r| r)
            .map_err(|e| NetlinkError::os(format!("open netlink socket in {path}"), e))
    }

    fn request(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> NlResult<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|e| NetlinkError::os(format!("{op}: send"), e))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut results = Vec::new();
        for _ in 0..MAX_MESSAGES {
            let size = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(|e| NetlinkError::os(format!("{op}: recv"), e))?;
            let mut offset = 0;
            while offset < size {
                let packet: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buffer[offset..size]).map_err(|e| {
                        NetlinkError::Protocol(format!("{op}: bad netlink message: {e}"))
                    })?;
                let length = packet.header.length as usize;
                if packet.header.sequence_number != self.sequence {
                    // A late answer to an earlier request that timed out: skip it.
                    offset += length.max(1);
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(results),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(results),
                        Some(_) => return Err(NetlinkError::os(op, e.to_io())),
                    },
                    NetlinkPayload::InnerMessage(m) => {
                        results.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(results);
                        }
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
        Err(NetlinkError::Protocol(format!(
            "{op}: no end of netlink answer"
        )))
    }
}

fn ignore_errno(result: NlResult<()>, errnos: &[i32]) -> NlResult<()> {
    match result {
        Err(e) if e.errno().is_some_and(|n| errnos.contains(&n)) => Ok(()),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// The real implementation

/// rtnetlink over sockets opened in the calling thread's namespace (and, on demand, in one
/// container namespace at a time).
pub struct KernelNetlink {
    here: Socket,
    /// A socket into one container's namespace, kept until [`Netlink::release`].
    there: Option<(u32, Socket)>,
}

impl KernelNetlink {
    /// Opens the netlink socket in the calling thread's namespace.
    pub fn new() -> NlResult<Self> {
        Ok(KernelNetlink {
            here: Socket::open().map_err(|e| NetlinkError::os("open netlink socket", e))?,
            there: None,
        })
    }

    fn socket(&mut self, ns: Netns) -> NlResult<&mut Socket> {
        match ns {
            Netns::Current => Ok(&mut self.here),
            Netns::Pid(pid) => {
                if !matches!(self.there, Some((p, _)) if p == pid) {
                    self.there = Some((pid, Socket::open_in_pid(pid)?));
                }
                Ok(&mut self.there.as_mut().expect("just set").1)
            }
        }
    }

    fn index(&mut self, ns: Netns, name: &str) -> NlResult<u32> {
        self.link(ns, name)?
            .map(|l| l.index)
            .ok_or_else(|| NetlinkError::os(format!("find link {name}"), io_enodev()))
    }

    /// Sends the delete request `message(index of dev)` (`what` names it in errors). Nothing
    /// to delete is no error: neither a missing link nor one of the errnos `gone` (the
    /// kernel's "it is not there").
    fn delete_on_link(
        &mut self,
        ns: Netns,
        dev: &str,
        what: &str,
        message: impl FnOnce(u32) -> RouteNetlinkMessage,
        gone: &[i32],
    ) -> NlResult<()> {
        let Some(link) = self.link(ns, dev)? else {
            return Ok(());
        };
        let result = self
            .socket(ns)?
            .request(what, message(link.index), NLM_F_ACK)
            .map(drop);
        ignore_errno(result, gone)
    }

    fn link_names(&mut self) -> NlResult<HashMap<u32, String>> {
        let answers = self.here.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => {
                    let name = link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })?;
                    Some((link.header.index, name))
                }
                _ => None,
            })
            .collect())
    }
}

fn io_enodev() -> io::Error {
    io::Error::from_raw_os_error(libc::ENODEV)
}

fn family(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn address_message(index: u32, addr: IpAddr, len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.family = family(&addr);
    msg.header.prefix_len = len;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

fn route_message(index: u32, route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    msg.header.kind = RouteType::Unicast;
    match route {
        Route::Direct { addr, len, .. } => {
            msg.header.address_family = family(addr);
            msg.header.scope = RouteScope::Link;
            msg.header.destination_prefix_length = *len;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(*addr)));
        }
        Route::Default { gateway, .. } => {
            msg.header.address_family = family(gateway);
            msg.header.scope = RouteScope::Universe;
            msg.header.destination_prefix_length = 0;
            if gateway.is_ipv4() {
                msg.header.flags = RouteFlags::Onlink;
            }
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(*gateway)));
        }
    }
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

fn neighbour_message(index: u32, addr: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(&addr);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    msg
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

impl Netlink for KernelNetlink {
    fn link(&mut self, ns: Netns, name: &str) -> NlResult<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answer = self.socket(ns)?.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        );
        let answer = match answer {
            Ok(a) => a,
            Err(e) if e.errno() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(answer.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(Link {
                index: link.header.index,
                up: link.header.flags.contains(LinkFlags::Up),
                peer_index: link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Link(i) => Some(*i),
                    _ => None,
                }),
                mac: link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
                    _ => None,
                }),
            }),
            _ => None,
        }))
    }

    fn links_with_prefix(&mut self, prefix: &str) -> NlResult<Vec<String>> {
        let mut names: Vec<String> = self
            .link_names()?
            .into_values()
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_mac: Mac,
        peer_pid: u32,
    ) -> NlResult<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg
            .attributes
            .push(LinkAttribute::Address(peer_mac.to_vec()));
        peer_msg.attributes.push(LinkAttribute::NetNsPid(peer_pid));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.here.request(
            &format!("create veth {name} (peer {peer} in pid {peer_pid})"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn delete_link(&mut self, ns: Netns, name: &str) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let result = self
            .socket(ns)?
            .request(
                &format!("delete link {name}"),
                RouteNetlinkMessage::DelLink(msg),
                NLM_F_ACK,
            )
            .map(drop);
        ignore_errno(result, &[libc::ENODEV])
    }

    fn set_mac(&mut self, ns: Netns, name: &str, mac: Mac) -> NlResult<()> {
        let index = self.index(ns, name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.socket(ns)?.request(
            &format!("set mac of {name}"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    fn set_up(&mut self, ns: Netns, name: &str) -> NlResult<()> {
        let index = self.index(ns, name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.socket(ns)?.request(
            &format!("set {name} up"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    fn addresses(&mut self, ns: Netns, name: &str) -> NlResult<Vec<(IpAddr, u8)>> {
        let index = self.index(ns, name)?;
        let answers = self.socket(ns)?.request(
            &format!("list addresses of {name}"),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let addr = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let addr = addr.or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    let global = match addr {
                        IpAddr::V4(v4) => !v4.is_loopback(),
                        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
                    };
                    global.then_some((addr, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    fn add_address(&mut self, ns: Netns, name: &str, addr: IpAddr, len: u8) -> NlResult<()> {
        let index = self.index(ns, name)?;
        let mut msg = address_message(index, addr, len);
        if addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.socket(ns)?.request(
            &format!("add address {addr}/{len} to {name}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    fn del_address(&mut self, ns: Netns, name: &str, addr: IpAddr, len: u8) -> NlResult<()> {
        self.delete_on_link(
            ns,
            name,
            &format!("delete address {addr}/{len} from {name}"),
            |index| RouteNetlinkMessage::DelAddress(address_message(index, addr, len)),
            &[libc::EADDRNOTAVAIL, libc::ENOENT],
        )
    }

    fn replace_route(&mut self, ns: Netns, route: &Route) -> NlResult<()> {
        let index = self.index(ns, route.dev())?;
        self.socket(ns)?.request(
            &format!("add route {route:?}"),
            RouteNetlinkMessage::NewRoute(route_message(index, route)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    fn del_route(&mut self, ns: Netns, route: &Route) -> NlResult<()> {
        self.delete_on_link(
            ns,
            route.dev(),
            &format!("delete route {route:?}"),
            |index| RouteNetlinkMessage::DelRoute(route_message(index, route)),
            &[libc::ESRCH, libc::ENOENT],
        )
    }

    fn own_routes(&mut self) -> NlResult<Vec<Route>> {
        let names = self.link_names()?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let answers = self.here.request(
                "list routes",
                RouteNetlinkMessage::GetRoute(msg),
                NLM_F_DUMP,
            )?;
            for answer in answers {
                let RouteNetlinkMessage::NewRoute(r) = answer else {
                    continue;
                };
                if r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => route_address(d),
                    _ => None,
                });
                let dev = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => names.get(i).cloned(),
                    _ => None,
                });
                if let (Some(addr), Some(dev)) = (dst, dev) {
                    routes.push(Route::Direct {
                        addr,
                        len: r.header.destination_prefix_length,
                        dev,
                    });
                }
            }
        }
        Ok(routes)
    }

    fn replace_neighbour(&mut self, ns: Netns, dev: &str, addr: IpAddr, mac: Mac) -> NlResult<()> {
        let index = self.index(ns, dev)?;
        let mut msg = neighbour_message(index, addr);
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.socket(ns)?.request(
            &format!("add neighbour {addr} on {dev}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    fn del_neighbour(&mut self, ns: Netns, dev: &str, addr: IpAddr) -> NlResult<()> {
        self.delete_on_link(
            ns,
            dev,
            &format!("delete neighbour {addr} on {dev}"),
            |index| RouteNetlinkMessage::DelNeighbour(neighbour_message(index, addr)),
            &[libc::ENOENT, libc::ESRCH],
        )
    }

    fn set_sysctls(&mut self, ns: Netns, settings: &[(String, String)]) -> NlResult<()> {
        match ns {
            // /proc/sys/net resolves against the namespace of the thread that opens the file.
            Netns::Current => write_sysctls(settings),
            Netns::Pid(pid) => {
                let path = format!("/proc/{pid}/ns/net");
                run_in_netns(std::path::Path::new(&path), || write_sysctls(settings))
                    .map_err(|e| NetlinkError::os(format!("enter {path}"), e))?
            }
        }
    }

    fn shares_current_netns(&mut self, pid: u32) -> NlResult<bool> {
        let here = netns_id("/proc/thread-self/ns/net")
            .map_err(|e| NetlinkError::os("stat own netns", e))?;
        let path = format!("/proc/{pid}/ns/net");
        let there = netns_id(&path).map_err(|e| NetlinkError::os(format!("stat {path}"), e))?;
        Ok(here == there)
    }

    fn release(&mut self) {
        self.there = None;
    }
}

/// The gateway a container routes through: link-local addresses that never appear on the
/// wire as anything but a permanent neighbour entry (see docs/NETWORK.md).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

// ---------------------------------------------------------------------------------------------
// A recording fake for unit tests

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    /// A fake link: index, peer index, MAC, up.
    pub type FakeLink = (u32, Option<u32>, Mac, bool);

    /// The kernel objects the fake holds, per namespace.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct FakeKernel {
        pub links: BTreeMap<(Netns, String), FakeLink>,
        pub addresses: BTreeSet<(Netns, String, IpAddr, u8)>,
        pub routes: BTreeSet<(Netns, Route)>,
        pub neighbours: BTreeMap<(Netns, String, IpAddr), Mac>,
        pub sysctls: BTreeMap<(Netns, String), String>,
        pub calls: Vec<String>,
        pub next_index: u32,
    }

    impl FakeKernel {
        /// The addresses, routes and neighbours of links that are gone go with them.
        fn drop_orphans(&mut self) {
            let live: BTreeSet<(Netns, String)> = self.links.keys().cloned().collect();
            self.addresses
                .retain(|(n, d, _, _)| live.contains(&(*n, d.clone())));
            self.routes
                .retain(|(n, r)| live.contains(&(*n, r.dev().to_string())));
            self.neighbours
                .retain(|(n, d, _), _| live.contains(&(*n, d.clone())));
        }
    }

    /// Records every call and keeps a model of links, addresses, routes and neighbours, so
    /// tests can assert both the steps and the end state.
    #[derive(Clone, Default)]
    pub struct FakeNetlink {
        pub kernel: Arc<Mutex<FakeKernel>>,
        /// Pids that exist (others fail like a vanished process).
        pub live_pids: Arc<Mutex<BTreeSet<u32>>>,
    }

    impl FakeNetlink {
        fn k(&self) -> std::sync::MutexGuard<'_, FakeKernel> {
            self.kernel.lock().unwrap()
        }
        fn check_ns(&self, ns: Netns) -> NlResult<()> {
            match ns {
                Netns::Pid(p) if !self.live_pids.lock().unwrap().contains(&p) => {
                    Err(NetlinkError::os(
                        format!("enter pid {p}"),
                        io::Error::from_raw_os_error(libc::ENOENT),
                    ))
                }
                _ => Ok(()),
            }
        }
        fn need_link(&self, ns: Netns, name: &str) -> NlResult<()> {
            if self.k().links.contains_key(&(ns, name.to_string())) {
                Ok(())
            } else {
                Err(NetlinkError::os(format!("find link {name}"), io_enodev()))
            }
        }
        /// Simulates a container stopping: its namespace and everything in it vanish, and
        /// with them the host end of its veth.
        pub fn kill_pid(&self, pid: u32) {
            self.live_pids.lock().unwrap().remove(&pid);
            let mut k = self.k();
            let ns = Netns::Pid(pid);
            let peers: Vec<u32> = k
                .links
                .iter()
                .filter(|((n, _), _)| *n == ns)
                .map(|(_, v)| v.0)
                .collect();
            k.links
                .retain(|(n, _), v| *n != ns && !(v.1.is_some_and(|p| peers.contains(&p))));
            k.drop_orphans();
        }
    }

    impl Netlink for FakeNetlink {
        fn link(&mut self, ns: Netns, name: &str) -> NlResult<Option<Link>> {
            self.check_ns(ns)?;
            Ok(self
                .k()
                .links
                .get(&(ns, name.to_string()))
                .map(|(index, peer, mac, up)| Link {
                    index: *index,
                    peer_index: *peer,
                    mac: Some(*mac),
                    up: *up,
                }))
        }
        fn links_with_prefix(&mut self, prefix: &str) -> NlResult<Vec<String>> {
            Ok(self
                .k()
                .links
                .keys()
                .filter(|(n, name)| *n == Netns::Current && name.starts_with(prefix))
                .map(|(_, name)| name.clone())
                .collect())
        }
        fn create_veth(&mut self, name: &str, peer: &str, mac: Mac, pid: u32) -> NlResult<()> {
            self.check_ns(Netns::Pid(pid))?;
            let mut k = self.k();
            k.calls.push(format!("create_veth {name} {peer} {pid}"));
            let here = (Netns::Current, name.to_string());
            let there = (Netns::Pid(pid), peer.to_string());
            if k.links.contains_key(&here) || k.links.contains_key(&there) {
                return Err(NetlinkError::os(
                    "create veth",
                    io::Error::from_raw_os_error(libc::EEXIST),
                ));
            }
            k.next_index += 2;
            let (a, b) = (k.next_index, k.next_index + 1);
            k.links
                .insert(here, (a, Some(b), [2, 0, 0, 0, 0, a as u8], false));
            k.links.insert(there, (b, Some(a), mac, false));
            Ok(())
        }
        fn delete_link(&mut self, ns: Netns, name: &str) -> NlResult<()> {
            self.check_ns(ns)?;
            let mut k = self.k();
            k.calls.push(format!("delete_link {ns:?} {name}"));
            if let Some((_, peer, _, _)) = k.links.remove(&(ns, name.to_string())) {
                k.links.retain(|_, v| Some(v.0) != peer);
                k.drop_orphans();
            }
            Ok(())
        }
        fn set_mac(&mut self, ns: Netns, name: &str, mac: Mac) -> NlResult<()> {
            self.need_link(ns, name)?;
            let mut k = self.k();
            k.calls.push(format!("set_mac {ns:?} {name}"));
            k.links.get_mut(&(ns, name.to_string())).unwrap().2 = mac;
            Ok(())
        }
        fn set_up(&mut self, ns: Netns, name: &str) -> NlResult<()> {
            self.need_link(ns, name)?;
            let mut k = self.k();
            k.calls.push(format!("set_up {ns:?} {name}"));
            k.links.get_mut(&(ns, name.to_string())).unwrap().3 = true;
            Ok(())
        }
        fn addresses(&mut self, ns: Netns, name: &str) -> NlResult<Vec<(IpAddr, u8)>> {
            self.need_link(ns, name)?;
            Ok(self
                .k()
                .addresses
                .iter()
                .filter(|(n, d, _, _)| *n == ns && d == name)
                .map(|(_, _, a, l)| (*a, *l))
                .collect())
        }
        fn add_address(&mut self, ns: Netns, name: &str, addr: IpAddr, len: u8) -> NlResult<()> {
            self.need_link(ns, name)?;
            let mut k = self.k();
            k.calls
                .push(format!("add_address {ns:?} {name} {addr}/{len}"));
            k.addresses.insert((ns, name.to_string(), addr, len));
            Ok(())
        }
        fn del_address(&mut self, ns: Netns, name: &str, addr: IpAddr, len: u8) -> NlResult<()> {
            self.check_ns(ns)?;
            let mut k = self.k();
            k.calls
                .push(format!("del_address {ns:?} {name} {addr}/{len}"));
            k.addresses.remove(&(ns, name.to_string(), addr, len));
            Ok(())
        }
        fn replace_route(&mut self, ns: Netns, route: &Route) -> NlResult<()> {
            self.need_link(ns, route.dev())?;
            let mut k = self.k();
            k.calls.push(format!("replace_route {ns:?} {route:?}"));
            // Routes are keyed by destination: a replace moves it to the new device.
            k.routes.retain(|(n, r)| {
                *n != ns
                    || match (r, route) {
                        (
                            Route::Direct {
                                addr: a, len: l, ..
                            },
                            Route::Direct { addr, len, .. },
                        ) => a != addr || l != len,
                        (Route::Default { gateway: a, .. }, Route::Default { gateway, .. }) => {
                            a.is_ipv4() != gateway.is_ipv4()
                        }
                        _ => true,
                    }
            });
            k.routes.insert((ns, route.clone()));
            Ok(())
        }
        fn del_route(&mut self, ns: Netns, route: &Route) -> NlResult<()> {
            self.check_ns(ns)?;
            let mut k = self.k();
            k.calls.push(format!("del_route {ns:?} {route:?}"));
            k.routes.remove(&(ns, route.clone()));
            Ok(())
        }
        fn own_routes(&mut self) -> NlResult<Vec<Route>> {
            Ok(self
                .k()
                .routes
                .iter()
                .filter(|(n, r)| *n == Netns::Current && matches!(r, Route::Direct { .. }))
                .map(|(_, r)| r.clone())
                .collect())
        }
        fn replace_neighbour(
            &mut self,
            ns: Netns,
            dev: &str,
            addr: IpAddr,
            mac: Mac,
        ) -> NlResult<()> {
            self.need_link(ns, dev)?;
            let mut k = self.k();
            k.calls
                .push(format!("replace_neighbour {ns:?} {dev} {addr}"));
            k.neighbours.insert((ns, dev.to_string(), addr), mac);
            Ok(())
        }
        fn del_neighbour(&mut self, ns: Netns, dev: &str, addr: IpAddr) -> NlResult<()> {
            self.check_ns(ns)?;
            let mut k = self.k();
            k.calls.push(format!("del_neighbour {ns:?} {dev} {addr}"));
            k.neighbours.remove(&(ns, dev.to_string(), addr));
            Ok(())
        }
        fn set_sysctls(&mut self, ns: Netns, settings: &[(String, String)]) -> NlResult<()> {
            self.check_ns(ns)?;
            let mut k = self.k();
            for (key, value) in settings {
                k.calls.push(format!("sysctl {ns:?} {key}={value}"));
                k.sysctls.insert((ns, key.clone()), value.clone());
            }
            Ok(())
        }
        fn shares_current_netns(&mut self, pid: u32) -> NlResult<bool> {
            self.check_ns(Netns::Pid(pid))?;
            Ok(pid == 1)
        }
        fn release(&mut self) {}
    }
}
