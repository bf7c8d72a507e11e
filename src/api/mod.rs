//! Wire formats: one module per API dialect, each only mapping its requests and responses
//! onto core calls and implementing the server's [`Dialect`] seam. Shared HTTP plumbing
//! lives in `http` (bodies, responses, queries) and `router` (the route table).

pub mod distillery;
pub mod duxcore;
pub mod flowmanager;
pub mod http;
pub mod intervirt;
pub mod router;
pub mod transfer;

use std::sync::Arc;

use crate::config;
use crate::server::Dialect;

/// The implementation of the dialect a listener is configured with.
pub fn dialect(kind: config::Dialect) -> Arc<dyn Dialect> {
    match kind {
        config::Dialect::Transfer => Arc::new(transfer::Transfer),
        config::Dialect::Intervirt => Arc::new(intervirt::Intervirt),
        config::Dialect::Duxcore => Arc::new(duxcore::Duxcore),
        config::Dialect::Distillery => Arc::new(distillery::Distillery),
        config::Dialect::FlowManager => Arc::new(flowmanager::FlowManager::default()),
    }
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::{intervirt, transfer};
    use crate::core::compose::ComposeError;
    use crate::core::engine::EngineError;
    use crate::core::{CoreError, ErrorKind};

    fn engine(e: EngineError) -> ComposeError {
        ComposeError::Engine {
            action: "creating web".into(),
            source: e,
        }
    }

    fn invalid() -> ComposeError {
        ComposeError::Invalid {
            scope: "service \"web\"".into(),
            message: "bad".into(),
        }
    }

    /// Every kind of compose error, as each dialect answers it: the Transfer REST status and
    /// the Intervirt error code, from the error's kind alone.
    #[test]
    fn a_compose_error_of_each_kind_maps_to_its_status_in_each_dialect() {
        use ErrorKind::*;
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        let cases: Vec<(ComposeError, ErrorKind, u16, i32)> = vec![
            (
                ComposeError::Yaml {
                    message: "x".into(),
                },
                Invalid,
                400,
                8,
            ),
            (
                ComposeError::UnsupportedKey {
                    scope: "top level".into(),
                    key: "x".into(),
                    hint: String::new(),
                },
                Invalid,
                400,
                8,
            ),
            (
                ComposeError::Interpolation {
                    scope: "s".into(),
                    key: "k".into(),
                    message: "m".into(),
                },
                Invalid,
                400,
                8,
            ),
            (invalid(), Invalid, 400, 8),
            (
                ComposeError::Policy {
                    scope: "s".into(),
                    message: "privileged".into(),
                },
                Invalid,
                400,
                8,
            ),
            (
                ComposeError::NoComposeFile { dir: "/x".into() },
                Invalid,
                400,
                8,
            ),
            (
                ComposeError::Read {
                    path: "/x".into(),
                    message: "io".into(),
                },
                Failed,
                500,
                4,
            ),
            (
                ComposeError::Image {
                    image: "a".into(),
                    message: "no registry".into(),
                },
                Failed,
                500,
                4,
            ),
            (
                ComposeError::Dependency {
                    service: "web".into(),
                    dependency: "db".into(),
                    message: "exited".into(),
                },
                Failed,
                500,
                4,
            ),
            (engine(EngineError::NotFound("x".into())), NotFound, 404, 6),
            (
                engine(EngineError::Conflict("in use".into())),
                Conflict,
                409,
                3,
            ),
            (engine(EngineError::Rejected("bad".into())), Failed, 500, 4),
            (
                engine(EngineError::Unavailable("down".into())),
                Unavailable,
                503,
                4,
            ),
            // Docker's own "network is unreachable" is a Docker failure, not Docker gone.
            (
                engine(EngineError::Failed("network is unreachable".into())),
                Failed,
                500,
                4,
            ),
            (
                ComposeError::Several(vec![
                    invalid(),
                    engine(EngineError::Unavailable("down".into())),
                ]),
                Unavailable,
                503,
                4,
            ),
            (
                ComposeError::Several(vec![invalid(), invalid()]),
                Failed,
                500,
                4,
            ),
        ];
        for (e, kind, status, code) in cases {
            let what = e.to_string();
            let core = CoreError::from(e).context("starting web:1");
            assert_eq!(core.kind(), kind, "{what}");
            assert_eq!(transfer::status_of(core.kind()), s(status), "{what}");
            assert_eq!(intervirt::code_of(core.kind()), code, "{what}");
        }
    }
}
