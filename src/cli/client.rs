//! A small HTTP/1.1 client for the daemon's transfer API: one connection per request (the
//! daemon is local), the bearer token when the listener wants one, problem details turned
//! into errors that carry their exit code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::tls::TlsClient;
use super::{Exit, Opts};
use crate::api::http::{self, Body};
use crate::config::{self, Auth, Config, ProcessEnv, Source, Tokens};

/// Why a command failed, with the exit code that says so.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    /// The daemon's status, when it answered with an error.
    pub status: Option<StatusCode>,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            status: None,
        }
    }

    pub fn exit(&self) -> Exit {
        self.exit
    }

    pub fn io(what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(Exit::Failed, format!("{what}: {e}"))
    }

    /// The daemon answered `status` with the problem detail `detail`.
    pub fn api(status: StatusCode, detail: String) -> Self {
        let exit = match status {
            StatusCode::NOT_FOUND => Exit::NotFound,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Exit::NoPermission,
            StatusCode::SERVICE_UNAVAILABLE => Exit::Unavailable,
            _ => Exit::Failed,
        };
        CliError {
            status: Some(status),
            ..Self::new(exit, detail)
        }
    }

    fn unreachable(addr: SocketAddr, e: impl std::fmt::Display) -> Self {
        Self::new(
            Exit::Unavailable,
            format!(
                "cannot reach the daemon at {addr}: {e} (is gantry running? `systemctl status gantry`)"
            ),
        )
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// The daemon's transfer API: where it listens and how to authenticate.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    host: String,
    prefix: String,
    token: Option<String>,
    /// TLS to a listener that has it.
    tls: Option<TlsClient>,
}

/// A connection to the daemon: plain TCP, or TLS over it.
pub trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Conn for T {}

/// The token the CLI sends to a token listener: the token (of a `tokens` listener, its file's
/// first); None when there is none or the user may not read the file.
pub(super) fn listener_token(l: &config::Listener) -> Option<&str> {
    match &l.auth {
        Auth::Token { token } => Some(token.as_str()),
        Auth::Tokens { tokens } => tokens.first().map(|t| t.token.as_str()),
        Auth::Loopback | Auth::None | Auth::ClientCert => None,
    }
    .filter(|t| !t.is_empty())
}

/// The address the CLI connects to for a listener: a wildcard one over loopback.
fn local_address(l: &config::Listener) -> SocketAddr {
    let mut addr = l.address;
    if addr.ip().is_unspecified() {
        addr.set_ip(loopback_of(addr.ip()));
    }
    addr
}

/// Whether the CLI can talk to `l` at all: not one that wants a client certificate (the CLI
/// has none), and its `allowed_peers` admit the address the CLI's connection comes from (on
/// this host, the listener's own address).
fn speaks_to(l: &config::Listener) -> bool {
    let from = local_address(l).ip();
    !matches!(l.auth, Auth::ClientCert)
        && (l.access.peers.is_empty() || l.access.peers.iter().any(|c| c.contains(from)))
}

/// The listener the CLI uses: where, its prefix, the token, and its certificate file when it
/// has TLS.
#[derive(Debug)]
struct Picked {
    addr: SocketAddr,
    prefix: String,
    token: Option<String>,
    cert: Option<std::path::PathBuf>,
}

/// The first transfer listener the user can use: loopback ones first, then those whose
/// token is readable, then unauthenticated ones, plain HTTP before TLS among equals; a
/// wildcard address is reached over loopback. Listeners that want a client certificate, or
/// whose peer list leaves out this host, are not used.
fn pick_listener(config: &Config) -> CliResult<Picked> {
    let transfer: Vec<&config::Listener> = config
        .listeners
        .iter()
        .filter(|l| l.dialect == config::Dialect::Transfer)
        .collect();
    let rank = |l: &config::Listener| match (&l.auth, listener_token(l)) {
        (Auth::Loopback, _) => 0,
        (_, Some(_)) => 1,
        (Auth::None, _) => 2,
        _ => 3,
    };
    let usable = transfer.iter().filter(|l| speaks_to(l));
    let Some(l) = usable.min_by_key(|l| (rank(l), l.tls.is_some())) else {
        let why = match transfer.is_empty() {
            true => "the configuration has no transfer listener: pass --url",
            false => {
                "no transfer listener the CLI can use: it has no client certificate and \
                 connects from this host's address (add a loopback transfer listener, or \
                 pass --url)"
            }
        };
        return Err(CliError::new(Exit::Config, why));
    };
    let token = match &l.auth {
        Auth::Token { .. } | Auth::Tokens { .. } if listener_token(l).is_none() => {
            let file = l.token_file.as_deref().unwrap_or(Path::new("?"));
            return Err(CliError::new(
                Exit::NoPermission,
                format!(
                    "the listener on {} needs the token in {}, which this user cannot read \
                 (run as root, or pass --token-file)",
                    l.address,
                    file.display()
                ),
            ));
        }
        _ => listener_token(l).map(str::to_string),
    };
    let addr = local_address(l);
    if addr.port() == 0 {
        return Err(CliError::new(
            Exit::Config,
            format!(
                "the transfer listener has port 0 (chosen at start): pass --url http://{}:PORT",
                addr.ip()
            ),
        ));
    }
    Ok(Picked {
        addr,
        prefix: l.prefix.clone(),
        token,
        cert: l.tls.as_ref().map(|t| t.cert.clone()),
    })
}

fn loopback_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// `--url` split: the address, the `Host` to send, the prefix, and for `https://` the name
/// the listener's certificate is checked for.
#[derive(Debug)]
struct Url {
    addr: SocketAddr,
    host: String,
    prefix: String,
    tls_name: Option<String>,
}

/// `http[s]://HOST:PORT[/PREFIX]` split into its address, the `Host` to send and its prefix.
/// The `Host` is the address resolved (an IP literal, which every listener's Host rule
/// accepts): the rule is against pages in a browser, and a name the listener does not list in
/// `allowed_hosts` would be refused. With `https://` the certificate is checked for HOST as
/// written.
async fn parse_url(url: &str) -> CliResult<Url> {
    let bad = || {
        CliError::new(
            Exit::Config,
            format!("--url {url}: expected http[s]://HOST:PORT[/PREFIX]"),
        )
    };
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(bad()),
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let addr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| CliError::new(Exit::Config, format!("--url {url}: {e}")))?
        .next()
        .ok_or_else(bad)?;
    let name = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Ok(Url {
        addr,
        host: addr.to_string(),
        prefix: prefix.to_string(),
        tls_name: tls.then(|| {
            name.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }),
    })
}

fn read_token(path: &Path) -> CliResult<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::new(
            Exit::NoPermission,
            format!("cannot read the token file {}: {e}", path.display()),
        )
    })?;
    Ok(text.trim().to_string())
}

#[derive(Deserialize)]
struct ProblemBody {
    detail: Option<String>,
    title: Option<String>,
}

impl Client {
    /// The client `opts` describe: `--url`, else the configured listener.
    pub async fn new(opts: &Opts) -> CliResult<Self> {
        let mut client = match &opts.url {
            Some(url) => Self::of_url(url, opts).await?,
            None => Self::of_config(opts)?,
        };
        if let Some(file) = &opts.token_file {
            client.token = Some(read_token(file)?);
        }
        Ok(client)
    }

    /// The client of `--url`; `https://` needs `--ca-file`.
    async fn of_url(url: &str, opts: &Opts) -> CliResult<Self> {
        let u = parse_url(url).await?;
        let tls = match (&u.tls_name, &opts.ca_file) {
            (None, _) => None,
            (Some(name), Some(ca)) => Some(TlsClient::with_ca(ca, name)?),
            (Some(_), None) => {
                return Err(CliError::new(
                    Exit::Config,
                    format!("--url {url}: https needs --ca-file, the CA that signed the listener's certificate"),
                ))
            }
        };
        Ok(Client {
            addr: u.addr,
            host: u.host,
            prefix: u.prefix,
            token: None,
            tls,
        })
    }

    /// The client of the configured listener the CLI can use ([`pick_listener`]). A TLS
    /// listener's certificate is trusted as its `tls_cert_file`, or with `--ca-file` as that
    /// CA signed it for the listener's address.
    fn of_config(opts: &Opts) -> CliResult<Self> {
        let source = match &opts.config {
            Some(p) => Source::Explicit(p),
            None => Source::Default,
        };
        let config = Config::load_with(source, &ProcessEnv, Tokens::IfReadable)
            .map_err(|e| CliError::new(Exit::Config, format!("configuration error: {e}")))?;
        // An explicit token file makes an unreadable configured one irrelevant.
        let picked = match (pick_listener(&config), &opts.token_file) {
            (Err(e), Some(_)) if e.exit == Exit::NoPermission => {
                let l = first_transfer(&config)?;
                Picked {
                    addr: local_address(l),
                    prefix: l.prefix.clone(),
                    token: None,
                    cert: l.tls.as_ref().map(|t| t.cert.clone()),
                }
            }
            (picked, _) => picked?,
        };
        let tls = match (&picked.cert, &opts.ca_file) {
            (None, _) => None,
            (Some(_), Some(ca)) => Some(TlsClient::with_ca(ca, &picked.addr.ip().to_string())?),
            (Some(cert), None) => Some(TlsClient::pinned(cert, picked.addr)?),
        };
        Ok(Client {
            addr: picked.addr,
            host: picked.addr.to_string(),
            prefix: picked.prefix,
            token: picked.token,
            tls,
        })
    }

    /// A client of the listener at `addr`.
    pub fn at(addr: SocketAddr, prefix: String, token: Option<String>) -> Self {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(loopback_of(addr.ip()));
        }
        Client {
            addr,
            host: addr.to_string(),
            prefix,
            token,
            tls: None,
        }
    }

    /// The same client over TLS.
    pub fn with_tls(self, tls: TlsClient) -> Self {
        Client {
            tls: Some(tls),
            ..self
        }
    }

    /// The request path of the API route `path` (`/transfer/apps`).
    pub fn api(&self, path: &str) -> String {
        format!("{}/api{path}", self.prefix)
    }

    /// The request path of the websocket route `path` (`/transfer/apps/x/logs`).
    pub fn events(&self, path: &str) -> String {
        format!("{}/events{path}", self.prefix)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A connection to the daemon; over TLS when the listener has it.
    pub async fn connect(&self) -> CliResult<Box<dyn Conn>> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| CliError::unreachable(self.addr, e))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(stream)),
            Some(tls) => match tls.connect(stream).await {
                Ok(s) => Ok(Box::new(s)),
                Err(e) => Err(CliError::new(
                    Exit::Unavailable,
                    format!("TLS with the daemon at {} failed: {e}", self.addr),
                )),
            },
        }
    }

    /// Sends one request on a new connection; any status is returned.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content: Option<(&str, u64)>,
    ) -> CliResult<hyper::Response<Incoming>> {
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        let headers = req.headers_mut().expect("a fresh builder has headers");
        if let Ok(v) = HeaderValue::from_str(&self.host) {
            headers.insert(HOST, v);
        }
        if let Some(t) = &self.token {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                headers.insert(AUTHORIZATION, v);
            }
        }
        if let Some((kind, len)) = content {
            if let Ok(v) = HeaderValue::from_str(kind) {
                headers.insert(CONTENT_TYPE, v);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        let req = req.body(body).map_err(|e| CliError::io("request", e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> CliError {
        CliError::unreachable(self.addr, e)
    }

    /// A request without a body whose answer must be a success.
    pub async fn call(&self, method: Method, path: &str) -> CliResult<hyper::Response<Incoming>> {
        let resp = self.send(method, path, http::empty_body(), None).await?;
        ok(resp).await
    }

    /// `GET` of a JSON body: `None` for 204 No Content.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> CliResult<Option<T>> {
        let resp = self.call(Method::GET, path).await?;
        json_of(resp).await
    }
}

/// The transfer listener, whatever its auth.
fn first_transfer(config: &Config) -> CliResult<&config::Listener> {
    config
        .listeners
        .iter()
        .find(|l| l.dialect == config::Dialect::Transfer)
        .ok_or_else(|| CliError::new(Exit::Config, "the configuration has no transfer listener"))
}

/// `resp` when it is a success, else its problem detail as an error.
pub async fn ok(resp: hyper::Response<Incoming>) -> CliResult<hyper::Response<Incoming>> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    let body = body_bytes(resp).await.unwrap_or_default();
    let detail = match serde_json::from_slice::<ProblemBody>(&body) {
        Ok(p) => p.detail.or(p.title).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    };
    let detail = if detail.is_empty() {
        status.to_string()
    } else {
        detail
    };
    Err(CliError::api(status, detail))
}

pub async fn body_bytes(resp: hyper::Response<Incoming>) -> CliResult<Bytes> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| CliError::io("reading the answer", e))
}

/// The JSON body of a success; `None` for 204.
pub async fn json_of<T: DeserializeOwned>(resp: hyper::Response<Incoming>) -> CliResult<Option<T>> {
    if resp.status() == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let bytes = body_bytes(resp).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CliError::io("the daemon's answer is not the JSON expected", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No environment overrides.
    struct NoEnv;

    impl config::Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[tokio::test]
    async fn urls_name_an_address_and_a_prefix() {
        let u = parse_url("http://127.0.0.1:9/gw/").await.unwrap();
        assert_eq!(u.addr.to_string(), "127.0.0.1:9");
        assert_eq!(u.host, "127.0.0.1:9");
        assert_eq!(u.prefix, "/gw");
        assert!(u.tls_name.is_none());
        let u = parse_url("http://[::1]:80").await.unwrap();
        assert_eq!((u.host.as_str(), u.prefix.as_str()), ("[::1]:80", ""));
        // A name is sent as the address it resolves to, which the Host rule accepts.
        let u = parse_url("http://localhost:9").await.unwrap();
        assert!(u.addr.ip().is_loopback());
        assert_eq!(u.host, u.addr.to_string());
        // With https the certificate is checked for the host as written.
        let u = parse_url("https://localhost:9/p").await.unwrap();
        assert_eq!(u.tls_name.as_deref(), Some("localhost"));
        assert_eq!(u.prefix, "/p");
        let u = parse_url("https://[::1]:9").await.unwrap();
        assert_eq!(u.tls_name.as_deref(), Some("::1"));
        for bad in ["ftp://127.0.0.1:9", "127.0.0.1:9", "http://127.0.0.1"] {
            assert!(parse_url(bad).await.is_err(), "{bad}");
        }
    }

    #[test]
    fn listeners_are_picked_loopback_first_and_wildcards_reached_over_loopback() {
        let text = "[[listeners]]\ndialect = \"transfer\"\naddress = \"0.0.0.0:7\"\nauth = \"none\"\n\
                    [[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:8\"\nprefix = \"/p\"\n";
        let c = Config::parse(text, &NoEnv).unwrap();
        let p = pick_listener(&c).unwrap();
        assert_eq!(
            (p.addr.to_string().as_str(), p.prefix.as_str()),
            ("127.0.0.1:8", "/p")
        );
        assert!(p.token.is_none() && p.cert.is_none());
        let text =
            "[[listeners]]\ndialect = \"transfer\"\naddress = \"0.0.0.0:7\"\nauth = \"none\"\n";
        let p = pick_listener(&Config::parse(text, &NoEnv).unwrap()).unwrap();
        assert_eq!(p.addr.to_string(), "127.0.0.1:7");
    }

    #[test]
    fn tls_listeners_come_after_plain_ones_and_client_cert_or_far_ones_are_not_used() {
        let tls = "[[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:7\"\n\
                   tls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\n";
        let far = "[[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:8\"\n\
                   allowed_peers = [\"198.18.0.0/15\"]\n";
        let near = "[[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:9\"\n";
        let c = Config::parse(&format!("{tls}{far}{near}"), &NoEnv).unwrap();
        let p = pick_listener(&c).unwrap();
        assert_eq!(p.addr.to_string(), "127.0.0.1:9");
        // Without a plain one, the TLS listener, with its certificate file.
        let c = Config::parse(&format!("{tls}{far}"), &NoEnv).unwrap();
        let p = pick_listener(&c).unwrap();
        assert_eq!(p.addr.to_string(), "127.0.0.1:7");
        assert_eq!(p.cert.as_deref(), Some(Path::new("/c.pem")));
        let client_cert = "[[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:6\"\n\
                   auth = \"client-cert\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\n\
                   client_ca_file = \"/ca\"\n";
        let c = Config::parse(&format!("{client_cert}{far}"), &NoEnv).unwrap();
        let e = pick_listener(&c).unwrap_err();
        assert_eq!(e.exit(), Exit::Config);
        assert!(e.to_string().contains("client certificate"), "{e}");
    }

    #[test]
    fn an_unreadable_token_file_is_a_permission_error_naming_the_file() {
        let mut c = Config::parse("", &ProcessEnv).unwrap();
        c.listeners[0].auth = Auth::Token {
            token: String::new(),
        };
        c.listeners[0].token_file = Some("/etc/gantry/token".into());
        let e = pick_listener(&c).unwrap_err();
        assert_eq!(e.exit(), Exit::NoPermission);
        assert!(e.to_string().contains("/etc/gantry/token"), "{e}");
    }
}
