//! The Intervirt wire format: requests (JSON objects tagged by `type`, each with a `uuid`)
//! and replies (`General` or `Version`, correlated by `refID`).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::intervirt::{AgentError, NewContainer};
use crate::core::network::{MacAddr, PortForward, Protocol};
use crate::core::ErrorKind;

/// The request types this agent knows; anything else is code 7.
const TYPES: &[&str] = &[
    "AddContainer",
    "RemoveContainer",
    "StartContainer",
    "StopContainer",
    "IDWithNewIpv4",
    "IDWithNewIpv6",
    "Connect",
    "Disconnect",
    "SetInternetAccess",
    "AddPortForwarding",
    "RemovePortForwarding",
    "Command",
];

/// Intervirt's error codes.
pub mod code {
    pub const OK: i32 = 0;
    /// An error the Intervirt codes do not name explicitly.
    pub const GENERAL: i32 = 1;
    pub const ALREADY_DONE: i32 = 3;
    pub const GUEST: i32 = 4;
    pub const COMMAND: i32 = 5;
    pub const NOT_FOUND: i32 = 6;
    pub const UNSUPPORTED: i32 = 7;
    pub const INVALID: i32 = 8;
}

/// The dialect's one mapping of errors to Intervirt error codes: a failed guest command is
/// 5, everything else goes by its kind.
pub fn error_code(e: &AgentError) -> i32 {
    if let AgentError::Command(_) = e {
        return code::COMMAND;
    }
    code_of(e.kind())
}

pub fn code_of(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Invalid => code::INVALID,
        ErrorKind::NotFound => code::NOT_FOUND,
        ErrorKind::Conflict => code::ALREADY_DONE,
        ErrorKind::Busy | ErrorKind::Unavailable | ErrorKind::Cancelled | ErrorKind::Failed => {
            code::GUEST
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKind {
    Wipe,
    Update,
    Shutdown,
    Reboot,
    Version,
}

const COMMANDS: &[&str] = &["wipe", "update", "shutdown", "reboot", "version"];

#[derive(Debug, Deserialize)]
pub struct AddContainer {
    pub id: String,
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
    pub mac: String,
    #[serde(default)]
    pub internet: bool,
    pub image: String,
}

#[derive(Debug, Deserialize)]
pub struct Id {
    pub id: String,
}

/// The client sends `newIpv4`, the document says `newIP`: both are accepted.
#[derive(Debug, Deserialize)]
pub struct NewIpv4 {
    pub id: String,
    #[serde(rename = "newIpv4", alias = "newIP")]
    pub addr: String,
}

#[derive(Debug, Deserialize)]
pub struct NewIpv6 {
    pub id: String,
    #[serde(rename = "newIpv6", alias = "newIP")]
    pub addr: String,
}

#[derive(Debug, Deserialize)]
pub struct Pair {
    pub id1: String,
    pub id2: String,
}

#[derive(Debug, Deserialize)]
pub struct Internet {
    pub id: String,
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddForward {
    pub id: String,
    pub internal_port: u16,
    pub external_port: u16,
    pub protocol: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveForward {
    pub external_port: u16,
    pub protocol: String,
}

#[derive(Debug, Deserialize)]
pub struct CommandRequest {
    pub command: CommandKind,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Request {
    AddContainer(AddContainer),
    RemoveContainer(Id),
    StartContainer(Id),
    StopContainer(Id),
    #[serde(rename = "IDWithNewIpv4")]
    IdWithNewIpv4(NewIpv4),
    #[serde(rename = "IDWithNewIpv6")]
    IdWithNewIpv6(NewIpv6),
    Connect(Pair),
    Disconnect(Pair),
    SetInternetAccess(Internet),
    AddPortForwarding(AddForward),
    RemovePortForwarding(RemoveForward),
    Command(CommandRequest),
}

/// A request that could not be understood, with what the reply needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub ref_id: String,
    pub code: i32,
    pub message: String,
}

/// Parses one text frame. The `uuid` is recovered whenever the frame is a JSON object, so
/// even a rejection reaches the right waiting request on the client.
pub fn parse(text: &str) -> Result<(String, Request), Rejected> {
    let value: Value = serde_json::from_str(text).map_err(|e| Rejected {
        ref_id: String::new(),
        code: code::INVALID,
        message: format!("invalid JSON: {e}"),
    })?;
    let ref_id = value
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let reject = |code: i32, message: String| Rejected {
        ref_id: ref_id.clone(),
        code,
        message,
    };
    let Some(obj) = value.as_object() else {
        return Err(reject(
            code::INVALID,
            "a request must be a JSON object".into(),
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(reject(code::INVALID, "\"type\" must be a string".into())),
        None => return Err(reject(code::INVALID, "the request has no \"type\"".into())),
    };
    if !TYPES.contains(&kind.as_str()) {
        return Err(reject(
            code::UNSUPPORTED,
            format!("request type \"{kind}\" is not supported"),
        ));
    }
    if kind == "Command" {
        match obj.get("command") {
            Some(Value::String(c)) if !COMMANDS.contains(&c.as_str()) => {
                return Err(reject(
                    code::UNSUPPORTED,
                    format!("command \"{c}\" is not supported"),
                ))
            }
            _ => {}
        }
    }
    let request: Request = serde_json::from_value(value)
        .map_err(|e| reject(code::INVALID, format!("invalid {kind} request: {e}")))?;
    Ok((ref_id, request))
}

fn invalid(message: String) -> AgentError {
    AgentError::Invalid(message)
}

/// An optional address: missing, null or "" mean none.
fn opt_addr<T: std::str::FromStr>(
    s: &Option<String>,
    family: &str,
) -> Result<Option<T>, AgentError> {
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("\"{a}\" is not an {family} address"))),
    }
}

pub fn ipv4(s: &str) -> Result<Ipv4Addr, AgentError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("\"{s}\" is not an IPv4 address")))
}

pub fn ipv6(s: &str) -> Result<Ipv6Addr, AgentError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("\"{s}\" is not an IPv6 address")))
}

pub fn protocol(s: &str) -> Result<Protocol, AgentError> {
    s.parse().map_err(invalid)
}

fn port(p: u16, which: &str) -> Result<u16, AgentError> {
    if p == 0 {
        return Err(invalid(format!("{which} must be between 1 and 65535")));
    }
    Ok(p)
}

impl AddContainer {
    pub fn into_spec(self) -> Result<NewContainer, AgentError> {
        let mac: MacAddr = self.mac.trim().parse().map_err(invalid)?;
        if self.image.trim().is_empty() {
            return Err(invalid("\"image\" must not be empty".into()));
        }
        Ok(NewContainer {
            ipv4: opt_addr(&self.ipv4, "IPv4")?,
            ipv6: opt_addr(&self.ipv6, "IPv6")?,
            name: self.id,
            image: self.image.trim().to_string(),
            mac,
            internet: self.internet,
        })
    }
}

impl AddForward {
    pub fn into_forward(self) -> Result<PortForward, AgentError> {
        Ok(PortForward {
            external_port: port(self.external_port, "externalPort")?,
            protocol: protocol(&self.protocol)?,
            container: self.id,
            internal_port: port(self.internal_port, "internalPort")?,
        })
    }
}

impl RemoveForward {
    pub fn parts(&self) -> Result<(u16, Protocol), AgentError> {
        Ok((
            port(self.external_port, "externalPort")?,
            protocol(&self.protocol)?,
        ))
    }
}

// --- replies -------------------------------------------------------------------------------

#[derive(Serialize)]
struct General<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "refID")]
    ref_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
    /// The document's "not finished" marker; the strict client knows no such key.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<i32>,
}

#[derive(Serialize)]
struct Version<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "refID")]
    ref_id: &'a str,
    version: &'a str,
}

fn to_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

pub fn ok(ref_id: &str) -> String {
    to_text(&General {
        kind: "General",
        ref_id,
        error: None,
        code: code::OK,
        progress: None,
        output: None,
        status: None,
    })
}

pub fn error(ref_id: &str, code: i32, message: &str) -> String {
    to_text(&error_value(ref_id, code, message))
}

/// A General error reply, for the socket or an HTTP answer's body.
pub fn error_value<'a>(ref_id: &'a str, code: i32, message: &'a str) -> impl Serialize + 'a {
    General {
        kind: "General",
        ref_id,
        error: Some(message),
        code,
        progress: None,
        output: None,
        status: None,
    }
}

pub fn progress(ref_id: &str, fraction: f64, output: &str, strict: bool) -> String {
    to_text(&General {
        kind: "General",
        ref_id,
        error: None,
        code: code::OK,
        progress: Some(fraction),
        output: Some(output),
        status: (!strict).then_some(-1),
    })
}

pub fn version(ref_id: &str, version: &str) -> String {
    to_text(&Version {
        kind: "Version",
        ref_id,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(text: &str) -> Rejected {
        parse(text).unwrap_err()
    }

    #[test]
    fn parses_every_request_type() {
        let cases = [
            r#"{"type":"AddContainer","uuid":"u1","id":"pc-1","ipv4":"198.18.0.2","ipv6":"2001:db8::2","mac":"02:00:00:00:00:01","internet":false,"image":"debian/13"}"#,
            r#"{"type":"RemoveContainer","uuid":"u","id":"pc-1"}"#,
            r#"{"type":"StartContainer","uuid":"u","id":"pc-1"}"#,
            r#"{"type":"StopContainer","uuid":"u","id":"pc-1"}"#,
            r#"{"type":"IDWithNewIpv4","uuid":"u","id":"pc-1","newIpv4":"198.18.0.9"}"#,
            r#"{"type":"IDWithNewIpv4","uuid":"u","id":"pc-1","newIP":"198.18.0.9"}"#,
            r#"{"type":"IDWithNewIpv6","uuid":"u","id":"pc-1","newIpv6":"2001:db8::9"}"#,
            r#"{"type":"IDWithNewIpv6","uuid":"u","id":"pc-1","newIP":"2001:db8::9"}"#,
            r#"{"type":"Connect","uuid":"u","id1":"a","id2":"b"}"#,
            r#"{"type":"Disconnect","uuid":"u","id1":"a","id2":"b"}"#,
            r#"{"type":"SetInternetAccess","uuid":"u","id":"a","enabled":true}"#,
            r#"{"type":"AddPortForwarding","uuid":"u","id":"a","internalPort":80,"externalPort":8080,"protocol":"tcp"}"#,
            r#"{"type":"RemovePortForwarding","uuid":"u","externalPort":8080,"protocol":"udp"}"#,
            r#"{"type":"Command","uuid":"u","command":"wipe"}"#,
            r#"{"type":"Command","uuid":"u","command":"version"}"#,
        ];
        for text in cases {
            let (ref_id, _) = parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert!(ref_id.starts_with('u'));
        }
        let (_, r) = parse(cases[0]).unwrap();
        let Request::AddContainer(a) = r else {
            panic!()
        };
        let spec = a.into_spec().unwrap();
        assert_eq!(spec.ipv4, Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(spec.mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn rejections_carry_codes_and_the_uuid() {
        let r = rejected("{nope");
        assert_eq!((r.code, r.ref_id.as_str()), (8, ""));
        assert!(r.message.contains("invalid JSON"));
        assert_eq!(rejected("[1,2]").code, 8);
        assert_eq!(
            rejected(r#"{"uuid":"x"}"#),
            Rejected {
                ref_id: "x".into(),
                code: 8,
                message: "the request has no \"type\"".into()
            }
        );
        assert_eq!(rejected(r#"{"type":"Teleport","uuid":"x"}"#).code, 7);
        assert_eq!(
            rejected(r#"{"type":"Command","uuid":"x","command":"dance"}"#).code,
            7
        );
        let r = rejected(
            r#"{"type":"AddPortForwarding","uuid":"y","id":"a","internalPort":80,"externalPort":70000,"protocol":"tcp"}"#,
        );
        assert_eq!((r.code, r.ref_id.as_str()), (8, "y"));
        assert_eq!(rejected(r#"{"type":"StartContainer","uuid":"y"}"#).code, 8);
        assert_eq!(rejected(r#"{"type":"IDWithNewIpv4","uuid":"y","id":"a","newIP":"198.18.0.4","newIpv4":"198.18.0.4"}"#).code, 8);
    }

    #[test]
    fn argument_checks() {
        let add = |mac: &str, v4: &str| AddContainer {
            id: "a".into(),
            ipv4: Some(v4.into()),
            ipv6: Some(String::new()),
            mac: mac.into(),
            internet: false,
            image: "i".into(),
        };
        assert!(matches!(
            add("zz:00:00:00:00:01", "198.18.0.1").into_spec(),
            Err(AgentError::Invalid(_))
        ));
        assert!(matches!(
            add("02:00:00:00:00:01", "198.18.0.300").into_spec(),
            Err(AgentError::Invalid(_))
        ));
        assert_eq!(
            add("02:00:00:00:00:01", "198.18.0.1")
                .into_spec()
                .unwrap()
                .ipv6,
            None
        );
        let fwd = |p: &str, ext: u16| AddForward {
            id: "a".into(),
            internal_port: 80,
            external_port: ext,
            protocol: p.into(),
        };
        assert!(matches!(
            fwd("sctp", 80).into_forward(),
            Err(AgentError::Invalid(_))
        ));
        assert!(matches!(
            fwd("tcp", 0).into_forward(),
            Err(AgentError::Invalid(_))
        ));
        assert_eq!(
            fwd("UDP", 53).into_forward().unwrap().protocol,
            Protocol::Udp
        );
    }

    #[test]
    fn reply_shapes() {
        let v: Value = serde_json::from_str(&ok("r")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"General","refID":"r","code":0})
        );
        let v: Value = serde_json::from_str(&error("r", 6, "gone")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"General","refID":"r","error":"gone","code":6})
        );
        let v: Value = serde_json::from_str(&progress("r", 0.5, "step", false)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"General","refID":"r","code":0,"progress":0.5,"output":"step","status":-1})
        );
        let v: Value = serde_json::from_str(&progress("r", 0.5, "step", true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"General","refID":"r","code":0,"progress":0.5,"output":"step"})
        );
        let v: Value = serde_json::from_str(&version("r", "1.2.3")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"Version","refID":"r","version":"1.2.3"})
        );
    }
}
