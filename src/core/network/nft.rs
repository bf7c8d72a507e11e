//! gantry's firewall: one nftables table (`inet gantry`), driven through nft's JSON API.
//!
//! The rules are fixed; everything that grows with containers, connections and port forwards
//! is an element of a set or map, so a packet costs the same few hash lookups however many
//! containers there are, and an operation adds or removes a handful of elements. See
//! docs/NETWORK.md for the rule design.
//!
//! Docker's FORWARD policy drop (iptables, `ip filter` / `ip6 filter`) is a verdict of another
//! base chain that gantry's accept cannot override. gantry therefore adds two static rules,
//! `-i gv-+ -j ACCEPT` and `-o gv-+ -j ACCEPT`, through the same `iptables`/`ip6tables` Docker
//! uses (so the backend matches): into DOCKER-USER when it exists (Docker documents it as the
//! user's chain and never flushes it), else into FORWARD when its policy is DROP. They are
//! safe because gantry's own forward chain runs first (priority filter - 10) and drops every
//! gantry packet that is not allowed; they never change as containers come and go.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Map as MapExpr, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, CT,
};
use nftables::schema::{
    Chain, Element as NftElement, Map, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};

pub const TABLE: &str = "gantry";
/// The wildcard matching every host-side veth (see [`super::LINK_PREFIX`]).
const LINKS: &str = "gv-*";
const IPTABLES_LINKS: &str = "gv-+";
const IPTABLES_COMMENT: &str = "gantry";

/// A transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol \"{s}\" (expected tcp or udp)")),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One element of one of gantry's sets or maps: everything variable in the ruleset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// `links4`: traffic from the first to the second address may pass (stored both ways).
    Link4(Ipv4Addr, Ipv4Addr),
    Link6(Ipv6Addr, Ipv6Addr),
    /// `src4`: the only source address a container's veth may send from.
    Source4(String, Ipv4Addr),
    Source6(String, Ipv6Addr),
    /// `inet4`: containers whose traffic may leave to the uplink (and is masqueraded).
    Internet4(Ipv4Addr),
    Internet6(Ipv6Addr),
    /// `fwd4`: (protocol, external port) -> container address.
    ForwardAddr4(Protocol, u16, Ipv4Addr),
    ForwardAddr6(Protocol, u16, Ipv6Addr),
    /// `fwdport`: (protocol, external port) -> container port.
    ForwardPort(Protocol, u16, u16),
}

impl Element {
    pub(super) fn set_name(&self) -> &'static str {
        match self {
            Element::Link4(..) => "links4",
            Element::Link6(..) => "links6",
            Element::Source4(..) => "src4",
            Element::Source6(..) => "src6",
            Element::Internet4(_) => "inet4",
            Element::Internet6(_) => "inet6",
            Element::ForwardAddr4(..) => "fwd4",
            Element::ForwardAddr6(..) => "fwd6",
            Element::ForwardPort(..) => "fwdport",
        }
    }

    /// The element as nft JSON; for maps, `with_value` false gives the key alone (deletes).
    fn to_expr(&self, with_value: bool) -> Expression<'static> {
        let key = |p: &Protocol, port: &u16| {
            concat(vec![string(p.name()), Expression::Number(u32::from(*port))])
        };
        let mapping = |k: Expression<'static>, v: Expression<'static>| {
            if with_value {
                Expression::List(vec![k, v])
            } else {
                k
            }
        };
        match self {
            Element::Link4(a, b) => concat(vec![string(a), string(b)]),
            Element::Link6(a, b) => concat(vec![string(a), string(b)]),
            Element::Source4(dev, a) => concat(vec![string(dev), string(a)]),
            Element::Source6(dev, a) => concat(vec![string(dev), string(a)]),
            Element::Internet4(a) => string(a),
            Element::Internet6(a) => string(a),
            Element::ForwardAddr4(p, port, a) => mapping(key(p, port), string(a)),
            Element::ForwardAddr6(p, port, a) => mapping(key(p, port), string(a)),
            Element::ForwardPort(p, port, to) => {
                mapping(key(p, port), Expression::Number(u32::from(*to)))
            }
        }
    }
}

pub type Elements = BTreeSet<Element>;

/// Elements to remove and to add, applied in one transaction (removals first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub remove: Vec<Element>,
    pub add: Vec<Element>,
}

impl Delta {
    pub fn between(before: &Elements, after: &Elements) -> Self {
        Delta {
            remove: before.difference(after).cloned().collect(),
            add: after.difference(before).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft failed: {0}")]
    Nft(String),
    #[error("{0} failed: {1}")]
    Iptables(String, String),
}

pub type FwResult<T> = Result<T, FirewallError>;

/// The narrow seam to the packet filter.
pub trait Firewall: Send {
    /// Replaces gantry's table with one holding exactly `elements`, in one transaction, and
    /// makes sure gantry's traffic passes a FORWARD policy drop.
    fn apply_all(&mut self, elements: &Elements) -> FwResult<()>;
    /// Removes and adds elements in one transaction.
    fn apply_delta(&mut self, delta: &Delta) -> FwResult<()>;
    /// Removes gantry's table and its FORWARD accept rules.
    fn remove_all(&mut self) -> FwResult<()>;
}

// ---------------------------------------------------------------------------------------------
// Expression helpers

fn string(s: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

fn concat(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(items))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn matches(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::EQ, left, right)
}

fn set_ref(name: &str) -> Expression<'static> {
    string(format!("@{name}"))
}

fn iif_gantry() -> Statement<'static> {
    eq(meta(MetaKey::Iifname), string(LINKS))
}

fn oif_gantry() -> Statement<'static> {
    eq(meta(MetaKey::Oifname), string(LINKS))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}

fn dport_key() -> Expression<'static> {
    concat(vec![meta(MetaKey::L4proto), field("th", "dport")])
}

fn map_lookup(name: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Map(Box::new(MapExpr {
        key: dport_key(),
        data: set_ref(name),
    })))
}

fn local_destination() -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        string("local"),
    )
}

/// `dnat ip to l4proto . dport map @fwd4 : l4proto . dport map @fwdport`. Two maps rather
/// than one `addr . port` map: nft 1.0.6's JSON parser crashes on concatenated NAT data.
fn dnat(family: NATFamily, addr_map: &str) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(map_lookup(addr_map)),
        family: Some(family),
        port: Some(map_lookup("fwdport")),
        flags: None,
    }))
}

// ---------------------------------------------------------------------------------------------
// The table

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn set(
    name: &'static str,
    types: &[SetType],
    elements: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    let set_type = match types {
        [one] => SetTypeValue::Single(*one),
        many => SetTypeValue::Concatenated(many.to_vec().into()),
    };
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        set_type,
        elem: (!elements.is_empty()).then(|| elements.into()),
        ..Set::default()
    }))
}

fn map(
    name: &'static str,
    value: SetType,
    elements: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Map(Box::new(Map {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        set_type: SetTypeValue::Concatenated(vec![SetType::InetProto, SetType::InetService].into()),
        map: SetTypeValue::Single(value),
        elem: (!elements.is_empty()).then(|| elements.into()),
        ..Map::default()
    }))
}

fn chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

/// The whole table: sets and maps filled with `elements`, the fixed chains and rules.
fn table_objects(elements: &Elements) -> Vec<NfListObject<'static>> {
    let mut objects = declarations(elements);
    objects.extend(forward_rules().into_iter().map(|r| rule("forward", r)));
    objects.extend(input_rules().into_iter().map(|r| rule("input", r)));
    objects.extend(nat_rules());
    objects
}

/// The sets and maps, filled with `elements`, and the chains.
fn declarations(elements: &Elements) -> Vec<NfListObject<'static>> {
    let mut by_set: BTreeMap<&'static str, Vec<Expression<'static>>> = BTreeMap::new();
    for e in elements {
        by_set
            .entry(e.set_name())
            .or_default()
            .push(e.to_expr(true));
    }
    let mut take = |name: &'static str| by_set.remove(name).unwrap_or_default();
    use SetType::*;
    vec![
        set("links4", &[Ipv4Addr, Ipv4Addr], take("links4")),
        set("links6", &[Ipv6Addr, Ipv6Addr], take("links6")),
        set("src4", &[Ifname, Ipv4Addr], take("src4")),
        set("src6", &[Ifname, Ipv6Addr], take("src6")),
        set("inet4", &[Ipv4Addr], take("inet4")),
        set("inet6", &[Ipv6Addr], take("inet6")),
        map("fwd4", Ipv4Addr, take("fwd4")),
        map("fwd6", Ipv6Addr, take("fwd6")),
        map("fwdport", InetService, take("fwdport")),
        // filter - 10: decide before Docker's and anyone's filter-priority chains.
        chain("forward", NfChainType::Filter, NfHook::Forward, -10),
        chain("input", NfChainType::Filter, NfHook::Input, -10),
        chain("prerouting", NfChainType::NAT, NfHook::Prerouting, -100),
        chain("output", NfChainType::NAT, NfHook::Output, -100),
        chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
    ]
}

/// `ct state { established, related }`: answers to a flow already let through.
fn established() -> Statement<'static> {
    matches(
        Operator::IN,
        ct("state"),
        Expression::List(vec![string("established"), string("related")]),
    )
}

/// The forward chain's rules, in order.
fn forward_rules() -> Vec<Vec<Statement<'static>>> {
    let addr4 = || concat(vec![field("ip", "saddr"), field("ip", "daddr")]);
    let addr6 = || concat(vec![field("ip6", "saddr"), field("ip6", "daddr")]);
    vec![
        // A container sends only from its own addresses.
        vec![
            iif_gantry(),
            matches(
                Operator::NEQ,
                concat(vec![meta(MetaKey::Iifname), field("ip", "saddr")]),
                set_ref("src4"),
            ),
            drop_(),
        ],
        vec![
            iif_gantry(),
            matches(
                Operator::NEQ,
                concat(vec![meta(MetaKey::Iifname), field("ip6", "saddr")]),
                set_ref("src6"),
            ),
            drop_(),
        ],
        // Container to container: exactly the connected pairs, checked on every packet (no
        // conntrack shortcut), so a disconnect also cuts established flows.
        vec![
            iif_gantry(),
            oif_gantry(),
            eq(addr4(), set_ref("links4")),
            accept(),
        ],
        vec![
            iif_gantry(),
            oif_gantry(),
            eq(addr6(), set_ref("links6")),
            accept(),
        ],
        vec![iif_gantry(), oif_gantry(), drop_()],
        // Port forwards, both directions.
        vec![
            oif_gantry(),
            matches(Operator::IN, ct("status"), string("dnat")),
            accept(),
        ],
        vec![
            iif_gantry(),
            matches(Operator::IN, ct("status"), string("dnat")),
            accept(),
        ],
        // To the uplink, only with internet on; answers come back through conntrack.
        vec![
            iif_gantry(),
            eq(field("ip", "saddr"), set_ref("inet4")),
            accept(),
        ],
        vec![
            iif_gantry(),
            eq(field("ip6", "saddr"), set_ref("inet6")),
            accept(),
        ],
        vec![iif_gantry(), drop_()],
        vec![oif_gantry(), established(), accept()],
        vec![oif_gantry(), drop_()],
    ]
}

/// The guest itself is not reachable from containers, except for answers.
fn input_rules() -> Vec<Vec<Statement<'static>>> {
    vec![
        vec![iif_gantry(), established(), accept()],
        vec![iif_gantry(), drop_()],
    ]
}

/// Port forwards (DNAT) and masquerading to the uplink.
fn nat_rules() -> Vec<NfListObject<'static>> {
    // Port forwards on the guest's own addresses, from outside and from containers.
    let mut objects = vec![
        rule(
            "prerouting",
            vec![local_destination(), dnat(NATFamily::IP, "fwd4")],
        ),
        rule(
            "prerouting",
            vec![local_destination(), dnat(NATFamily::IP6, "fwd6")],
        ),
    ];
    // ... and from the guest itself (loopback excluded: it cannot be routed to a container).
    let not_loopback4 = matches(
        Operator::NEQ,
        field("ip", "daddr"),
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(string("127.0.0.0")),
            len: 8,
        })),
    );
    let not_loopback6 = matches(Operator::NEQ, field("ip6", "daddr"), string("::1"));
    objects.push(rule(
        "output",
        vec![
            local_destination(),
            not_loopback4,
            dnat(NATFamily::IP, "fwd4"),
        ],
    ));
    objects.push(rule(
        "output",
        vec![
            local_destination(),
            not_loopback6,
            dnat(NATFamily::IP6, "fwd6"),
        ],
    ));
    for (family, inet) in [("ip", "inet4"), ("ip6", "inet6")] {
        objects.push(rule(
            "postrouting",
            vec![
                matches(Operator::NEQ, meta(MetaKey::Oifname), string(LINKS)),
                eq(field(family, "saddr"), set_ref(inet)),
                Statement::Masquerade(None),
            ],
        ));
    }
    objects
}

/// One transaction: create-if-missing, delete, re-create. Deleting and re-adding in the
/// same batch is atomic (no packet sees a half table) and idempotent, and touches nothing
/// outside gantry's table.
pub fn full_batch(elements: &Elements) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    for object in table_objects(elements) {
        batch.add(object);
    }
    batch.to_nftables()
}

pub fn delta_batch(delta: &Delta) -> Nftables<'static> {
    let mut batch = Batch::new();
    let group = |elements: &[Element], with_value: bool| {
        let mut by_set: BTreeMap<&'static str, Vec<Expression<'static>>> = BTreeMap::new();
        for e in elements {
            by_set
                .entry(e.set_name())
                .or_default()
                .push(e.to_expr(with_value));
        }
        by_set
    };
    let element = |name: &'static str, elem: Vec<Expression<'static>>| {
        NfListObject::Element(NftElement {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            elem: elem.into(),
        })
    };
    for (name, elem) in group(&delta.remove, false) {
        batch.delete(element(name, elem));
    }
    for (name, elem) in group(&delta.add, true) {
        batch.add(element(name, elem));
    }
    batch.to_nftables()
}

pub fn remove_batch() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

// ---------------------------------------------------------------------------------------------
// The real implementation

/// Runs `nft -j -f -` (and `iptables`) as child processes of the calling thread, so they act
/// in the calling thread's network namespace.
pub struct NftFirewall {
    nft: String,
}

impl Default for NftFirewall {
    fn default() -> Self {
        NftFirewall { nft: "nft".into() }
    }
}

impl NftFirewall {
    fn run(&self, batch: &Nftables) -> FwResult<()> {
        nftables::helper::apply_ruleset_with_args(
            batch,
            Some(self.nft.as_str()),
            nftables::helper::DEFAULT_ARGS,
        )
        .map_err(|e| match e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                FirewallError::Nft(stderr.trim().to_string())
            }
            other => FirewallError::Nft(other.to_string()),
        })
    }
}

impl Firewall for NftFirewall {
    fn apply_all(&mut self, elements: &Elements) -> FwResult<()> {
        self.run(&full_batch(elements))?;
        for tool in ["iptables", "ip6tables"] {
            ForwardAccept { tool }.ensure()?;
        }
        Ok(())
    }

    fn apply_delta(&mut self, delta: &Delta) -> FwResult<()> {
        if delta.is_empty() {
            return Ok(());
        }
        self.run(&delta_batch(delta))
    }

    fn remove_all(&mut self) -> FwResult<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.run(&remove_batch()) {
            errors.push(e.to_string());
        }
        for tool in ["iptables", "ip6tables"] {
            if let Err(e) = (ForwardAccept { tool }).remove() {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FirewallError::Nft(errors.join("; ")))
        }
    }
}

/// gantry's two accept rules in an iptables FORWARD path with policy drop.
struct ForwardAccept {
    tool: &'static str,
}

/// What running a tool gave: its exit status and output, or that it is not installed.
enum Outcome {
    Missing,
    Ran {
        ok: bool,
        stdout: String,
        stderr: String,
    },
}

impl ForwardAccept {
    const CHAINS: [&'static str; 2] = ["DOCKER-USER", "FORWARD"];

    fn exec(&self, args: &[&str]) -> Outcome {
        let output = Command::new(self.tool)
            .args(["-w", "5", "-t", "filter"])
            .args(args)
            .stdin(Stdio::null())
            .output();
        match output {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Missing,
            Err(e) => Outcome::Ran {
                ok: false,
                stdout: String::new(),
                stderr: e.to_string(),
            },
            Ok(o) => Outcome::Ran {
                ok: o.status.success(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            },
        }
    }

    fn rule(direction: &'static str) -> [&'static str; 8] {
        [
            direction,
            IPTABLES_LINKS,
            "-m",
            "comment",
            "--comment",
            IPTABLES_COMMENT,
            "-j",
            "ACCEPT",
        ]
    }

    fn has(&self, chain: &str, direction: &'static str) -> bool {
        let mut args = vec!["-C", chain];
        args.extend(Self::rule(direction));
        matches!(self.exec(&args), Outcome::Ran { ok: true, .. })
    }

    /// The chain to put the rules in, if any is needed.
    fn target(&self) -> Option<&'static str> {
        if let Outcome::Ran { ok: true, .. } = self.exec(&["-S", "DOCKER-USER"]) {
            return Some("DOCKER-USER");
        }
        match self.exec(&["-S", "FORWARD"]) {
            Outcome::Ran {
                ok: true, stdout, ..
            } if stdout.lines().any(|l| l.trim() == "-P FORWARD DROP") => Some("FORWARD"),
            _ => None,
        }
    }

    fn ensure(&self) -> FwResult<()> {
        let Some(chain) = self.target() else {
            return Ok(());
        };
        for direction in ["-i", "-o"] {
            if self.has(chain, direction) {
                continue;
            }
            let mut args = vec!["-I", chain, "1"];
            args.extend(Self::rule(direction));
            match self.exec(&args) {
                Outcome::Ran { ok: true, .. } | Outcome::Missing => {}
                Outcome::Ran { stderr, .. } => {
                    return Err(FirewallError::Iptables(self.tool.into(), stderr));
                }
            }
        }
        Ok(())
    }

    fn remove(&self) -> FwResult<()> {
        for chain in Self::CHAINS {
            for direction in ["-i", "-o"] {
                // Bounded: a rule inserted more than a few times is someone else's problem.
                for _ in 0..8 {
                    if !self.has(chain, direction) {
                        break;
                    }
                    let mut args = vec!["-D", chain];
                    args.extend(Self::rule(direction));
                    if let Outcome::Ran {
                        ok: false, stderr, ..
                    } = self.exec(&args)
                    {
                        return Err(FirewallError::Iptables(self.tool.into(), stderr));
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// A fake for unit tests

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Holds the elements a real table would hold; can be told to fail deltas.
    #[derive(Clone, Default)]
    pub struct FakeFirewall {
        pub table: Arc<Mutex<Option<Elements>>>,
        pub full_applies: Arc<Mutex<usize>>,
        pub fail_deltas: Arc<Mutex<bool>>,
        pub fail_all: Arc<Mutex<bool>>,
    }

    impl Firewall for FakeFirewall {
        fn apply_all(&mut self, elements: &Elements) -> FwResult<()> {
            if *self.fail_all.lock().unwrap() {
                return Err(FirewallError::Nft("injected".into()));
            }
            *self.table.lock().unwrap() = Some(elements.clone());
            *self.full_applies.lock().unwrap() += 1;
            Ok(())
        }
        fn apply_delta(&mut self, delta: &Delta) -> FwResult<()> {
            if *self.fail_deltas.lock().unwrap() {
                return Err(FirewallError::Nft("injected".into()));
            }
            let mut table = self.table.lock().unwrap();
            let table = table
                .as_mut()
                .ok_or_else(|| FirewallError::Nft("no table".into()))?;
            for e in &delta.remove {
                if !table.remove(e) {
                    return Err(FirewallError::Nft(format!("no element {e:?}")));
                }
            }
            for e in &delta.add {
                table.insert(e.clone());
            }
            Ok(())
        }
        fn remove_all(&mut self) -> FwResult<()> {
            *self.table.lock().unwrap() = None;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batch_is_one_transaction_that_replaces_only_gantrys_table() {
        let mut elements = Elements::new();
        elements.insert(Element::Link4(
            "198.18.0.2".parse().unwrap(),
            "198.18.0.3".parse().unwrap(),
        ));
        elements.insert(Element::ForwardPort(Protocol::Tcp, 8080, 80));
        let json = serde_json::to_value(full_batch(&elements)).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds[0]["add"]["table"]["name"], "gantry");
        assert_eq!(cmds[1]["delete"]["table"]["name"], "gantry");
        assert_eq!(cmds[2]["add"]["table"]["name"], "gantry");
        for cmd in cmds {
            let obj = cmd.as_object().unwrap().values().next().unwrap();
            let inner = obj.as_object().unwrap().values().next().unwrap();
            let table = inner.get("table").or_else(|| inner.get("name")).unwrap();
            assert_eq!(table, "gantry", "{cmd}");
        }
        let text = json.to_string();
        assert!(
            text.contains(r#"{"concat":["198.18.0.2","198.18.0.3"]}"#),
            "{text}"
        );
        assert!(text.contains(r#"[{"concat":["tcp",8080]},80]"#), "{text}");
    }

    #[test]
    fn delta_removes_map_elements_by_key_before_adding() {
        let old = Element::ForwardAddr4(Protocol::Udp, 53, "198.18.0.2".parse().unwrap());
        let new = Element::ForwardAddr4(Protocol::Udp, 53, "198.18.0.9".parse().unwrap());
        let delta = Delta::between(&[old].into(), &[new].into());
        let json = serde_json::to_value(delta_batch(&delta))
            .unwrap()
            .to_string();
        let del = json.find(r#""delete":{"element""#).unwrap();
        let add = json.find(r#""add":{"element""#).unwrap();
        assert!(del < add, "{json}");
        assert!(json.contains(r#""elem":[{"concat":["udp",53]}]"#), "{json}");
        assert!(
            json.contains(r#"[{"concat":["udp",53]},"198.18.0.9"]"#),
            "{json}"
        );
    }
}
