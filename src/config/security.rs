//! A listener's protection against the browser and the network: which origins, hosts and
//! peers it serves, and its TLS. Built from `[[listeners]]` keys by [`build`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::{bad, Auth, ConfigError};

/// Who may talk to a listener, besides its authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Origins served besides the listener's own (`scheme://host[:port]`, lowercase).
    pub origins: Vec<String>,
    /// `allowed_origins = ["*"]`: every origin (a web UI anywhere may drive the API).
    pub any_origin: bool,
    /// Host names served besides IP literals and `localhost` (lowercase, no port).
    pub hosts: Vec<String>,
    /// Peer networks served (empty: every peer); `/healthz` is always answered.
    pub peers: Vec<Cidr>,
}

/// An IP network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim().parse().ok()?
        };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (ip, self.addr) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                same_prefix(u32::from(a).into(), u32::from(n).into(), 32, self.prefix)
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => same_prefix(a.into(), n.into(), 128, self.prefix),
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the `width` low bits of `a` and `b` are equal.
fn same_prefix(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let shift = width - u32::from(prefix);
    shift >= 128 || a >> shift == b >> shift
}

/// TLS on a listener: certificate chain and key (PEM, reloaded on SIGHUP), and for
/// `auth = "client-cert"` the CA that signs client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The `[[listeners]]` keys of this module, as read.
#[derive(Debug, Default)]
pub struct RawSecurity {
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub allowed_peers: Vec<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub allow_plain_http: bool,
}

/// Checks the keys against the listener's address and auth.
pub fn build(
    raw: RawSecurity,
    address: SocketAddr,
    auth: &Auth,
) -> Result<(Access, Option<TlsFiles>), ConfigError> {
    let access = access(&raw)?;
    let tls = match (raw.tls_cert_file, raw.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: raw.client_ca_file.clone(),
        }),
        (None, None) => None,
        _ => {
            return Err(bad(
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ))
        }
    };
    if raw.client_ca_file.is_some() != matches!(auth, Auth::ClientCert) {
        return Err(bad(
            "client_ca_file",
            "auth = \"client-cert\" needs client_ca_file (and TLS), and client_ca_file is only for it",
        ));
    }
    if matches!(auth, Auth::ClientCert) && tls.is_none() {
        return Err(bad(
            "auth",
            "\"client-cert\" needs tls_cert_file and tls_key_file",
        ));
    }
    let plain_token = matches!(auth, Auth::Token { .. } | Auth::Tokens { .. }) && tls.is_none();
    if plain_token && !address.ip().is_loopback() && !raw.allow_plain_http {
        return Err(bad(
            "tls_cert_file",
            format!(
                "{address} is not a loopback address and its token would cross the network in \
                 clear: set tls_cert_file and tls_key_file, or allow_plain_http = true"
            ),
        ));
    }
    Ok((access, tls))
}

fn access(raw: &RawSecurity) -> Result<Access, ConfigError> {
    let mut a = Access::default();
    for o in &raw.allowed_origins {
        let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
        if o == "*" {
            a.any_origin = true;
        } else if o.starts_with("http://") || o.starts_with("https://") {
            a.origins.push(o);
        } else {
            return Err(bad(
                "allowed_origins",
                format!("\"{o}\" is not an origin (scheme://host[:port], or \"*\")"),
            ));
        }
    }
    for h in &raw.allowed_hosts {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h.contains(['/', ':', ' ']) {
            return Err(bad("allowed_hosts", format!("\"{h}\" is not a host name")));
        }
        a.hosts.push(h);
    }
    for p in &raw.allowed_peers {
        let c = Cidr::parse(p).ok_or_else(|| {
            bad(
                "allowed_peers",
                format!("\"{p}\" is not an address or CIDR"),
            )
        })?;
        a.peers.push(c);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.2.2/32").unwrap();
        assert!(c.contains("10.0.2.2".parse().unwrap()));
        assert!(!c.contains("10.0.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.2.2".parse().unwrap()));
        let n = Cidr::parse("198.18.0.0/15").unwrap();
        assert!(n.contains("198.19.255.1".parse().unwrap()));
        assert!(!n.contains("198.20.0.1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!(!v6.contains("198.18.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().prefix, 32);
        for bad in ["x", "10.0.0.0/33", "::/129", "10.0.0.0/a"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
