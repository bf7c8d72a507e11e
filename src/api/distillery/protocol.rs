//! The Distillery websocket's messages: the client's call (`{"call", "params"}`) and cancel
//! signal as binary frames, the server's one result frame.

use serde::{Deserialize, Serialize};

use crate::core::ops::instances::Provision;
use crate::core::tasks::TaskKind;

pub const UNKNOWN_CALL: &str = "unknown action call";
pub const BAD_ARITY: &str = "invalid number of parameters";
pub const FIRST_TIMEOUT: &str = "timeout reading the first message";

/// A call, its parameters checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(String),
    Stop(String),
    Rebuild(String),
    Update(String),
    Snapshot(String),
    Purge(String),
    Provision(Provision),
    Backup,
    /// gantry's addition: follow the app's logs until cancelled.
    Logs(String),
    /// gantry's addition: run a command in a service's container.
    Exec {
        slug: String,
        service: String,
        cmd: Vec<String>,
    },
}

impl Call {
    /// The core's operation on one app this call is, with the app's slug.
    pub fn on_one_app(&self) -> Option<(TaskKind, &str)> {
        Some(match self {
            Call::Rebuild(s) => (TaskKind::Rebuild, s),
            Call::Update(s) => (TaskKind::Update, s),
            Call::Snapshot(s) => (TaskKind::Snapshot, s),
            Call::Purge(s) => (TaskKind::Purge, s),
            Call::Logs(s) => (TaskKind::Logs, s),
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Call::Start(_) => "start",
            Call::Stop(_) => "stop",
            Call::Rebuild(_) => "rebuild",
            Call::Update(_) => "update",
            Call::Snapshot(_) => "snapshot",
            Call::Purge(_) => "purge",
            Call::Provision(_) => "provision",
            Call::Backup => "backup",
            Call::Logs(_) => "logs",
            Call::Exec { .. } => "exec",
        }
    }
}

#[derive(Deserialize)]
struct CallMessage {
    call: String,
    #[serde(default)]
    params: Vec<String>,
}

/// The JSON parameter of `provision`: the original's instance description, of which gantry
/// reads the slug and the bundle (other keys are ignored).
#[derive(Deserialize)]
struct ProvisionParams {
    #[serde(rename = "Slug", alias = "slug", default)]
    slug: String,
    #[serde(rename = "Bundle", alias = "bundle", default)]
    bundle: String,
}

/// Reads the first binary frame: the call, or the failure message the client gets.
pub fn parse_call(frame: &[u8]) -> Result<Call, String> {
    let msg: CallMessage = serde_json::from_slice(frame).map_err(|_| UNKNOWN_CALL.to_string())?;
    let mut p = msg.params;
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(BAD_ARITY.to_string())
        }
    };
    let one = |p: &mut Vec<String>| p.pop().unwrap_or_default();
    Ok(match msg.call.as_str() {
        "backup" => arity(p.is_empty()).map(|()| Call::Backup)?,
        "start" | "stop" | "rebuild" | "update" | "snapshot" | "purge" | "logs" => {
            arity(p.len() == 1)?;
            let slug = one(&mut p);
            match msg.call.as_str() {
                "start" => Call::Start(slug),
                "stop" => Call::Stop(slug),
                "rebuild" => Call::Rebuild(slug),
                "update" => Call::Update(slug),
                "snapshot" => Call::Snapshot(slug),
                "purge" => Call::Purge(slug),
                _ => Call::Logs(slug),
            }
        }
        "provision" => {
            arity(p.len() == 1)?;
            provision(&one(&mut p))?
        }
        "exec" => {
            arity(p.len() >= 3)?;
            let cmd = p.split_off(2);
            let service = one(&mut p);
            let slug = one(&mut p);
            Call::Exec { slug, service, cmd }
        }
        _ => return Err(UNKNOWN_CALL.to_string()),
    })
}

fn provision(param: &str) -> Result<Call, String> {
    let p: ProvisionParams = serde_json::from_str(param).map_err(|e| {
        format!("the provision parameter must be JSON {{\"Slug\", \"Bundle\"}}: {e}")
    })?;
    if p.slug.trim().is_empty() || p.bundle.trim().is_empty() {
        return Err(
            "the provision parameter needs a Slug and a Bundle (a path on the \
                    device or an http:// URL of an app ZIP)"
                .into(),
        );
    }
    Ok(Call::Provision(Provision {
        slug: p.slug,
        bundle: p.bundle,
    }))
}

/// Whether a binary frame after the call is the cancel signal.
pub fn is_cancel(frame: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Signal {
        signal: String,
    }
    serde_json::from_slice::<Signal>(frame).is_ok_and(|s| s.signal == "cancel")
}

/// The result frame: `{"success":true}` or `{"success":false,"message":...}`.
pub fn result(outcome: &Result<(), String>) -> Vec<u8> {
    #[derive(Serialize)]
    struct ResultMessage<'a> {
        success: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    }
    let msg = match outcome {
        Ok(()) => ResultMessage {
            success: true,
            message: None,
        },
        Err(m) => ResultMessage {
            success: false,
            message: Some(m),
        },
    };
    serde_json::to_vec(&msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(json: &str) -> Result<Call, String> {
        parse_call(json.as_bytes())
    }

    #[test]
    fn calls_and_their_parameters() {
        assert_eq!(call(r#"{"call":"backup","params":[]}"#), Ok(Call::Backup));
        assert_eq!(call(r#"{"call":"backup"}"#), Ok(Call::Backup));
        assert_eq!(
            call(r#"{"call":"start","params":["web1"]}"#),
            Ok(Call::Start("web1".into()))
        );
        assert_eq!(
            call(r#"{"call":"exec","params":["web1","api","sh","-c","read x"]}"#),
            Ok(Call::Exec {
                slug: "web1".into(),
                service: "api".into(),
                cmd: vec!["sh".into(), "-c".into(), "read x".into()]
            })
        );
        assert_eq!(
            call(
                r#"{"call":"provision","params":["{\"Slug\":\"web1\",\"Bundle\":\"/b.zip\",\"Flavor\":\"x\"}"]}"#
            ),
            Ok(Call::Provision(Provision {
                slug: "web1".into(),
                bundle: "/b.zip".into()
            }))
        );
    }

    #[test]
    fn refusals_say_what_the_original_says() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"call":"fly","params":[]}"#,
            r#"{"call":"start","params":[1]}"#,
        ] {
            assert_eq!(call(bad), Err(UNKNOWN_CALL.to_string()), "{bad}");
        }
        assert_eq!(parse_call(&[0xff, 0xfe]), Err(UNKNOWN_CALL.to_string()));
        for bad in [
            r#"{"call":"backup","params":["x"]}"#,
            r#"{"call":"start","params":[]}"#,
            r#"{"call":"stop","params":["a","b"]}"#,
            r#"{"call":"provision","params":[]}"#,
            r#"{"call":"exec","params":["web1","api"]}"#,
        ] {
            assert_eq!(call(bad), Err(BAD_ARITY.to_string()), "{bad}");
        }
        let e = call(r#"{"call":"provision","params":["{\"Slug\":\"x\"}"]}"#).unwrap_err();
        assert!(e.contains("Bundle"), "{e}");
    }

    #[test]
    fn signals_and_results() {
        assert!(is_cancel(br#"{"signal":"cancel"}"#));
        assert!(!is_cancel(br#"{"signal":"pause"}"#));
        assert!(!is_cancel(b"cancel"));
        assert_eq!(result(&Ok(())), br#"{"success":true}"#);
        assert_eq!(
            result(&Err("no".into())),
            br#"{"success":false,"message":"no"}"#
        );
    }
}
