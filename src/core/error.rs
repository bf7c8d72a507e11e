//! The core's errors: one vocabulary of kinds ([`ErrorKind`]) that every error of the core
//! maps to, and [`CoreError`], which keeps the error it came from as its source.
//!
//! A dialect maps kinds to its wire format in one place (the Transfer dialect to HTTP status
//! codes, the Intervirt dialect to its error codes, ...), never by reading message texts.

use super::apps::bundle::BundleError;
use super::apps::store::StoreError;
use super::compose::ComposeError;
use super::engine::EngineError;
use super::flow::FlowError;
use super::network::NetworkError;

/// What kind of failure an error is, as far as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something unusable (bad id, not a tar, invalid compose, refused by
    /// policy, ...).
    Invalid,
    NotFound,
    /// The request conflicts with the current state: the thing exists already, is in use,
    /// or is running. A Docker 409 is a conflict, in every dialect.
    Conflict,
    /// Another operation on the same object is in flight.
    Busy,
    /// A dependency (Docker, the network dataplane) cannot be reached right now; retrying
    /// later may work.
    Unavailable,
    /// The caller cancelled the operation; it was rolled back.
    Cancelled,
    /// Anything else: Docker, the kernel or storage failed.
    Failed,
}

/// Errors the core reports to the API dialects. Errors of the core's parts keep their
/// source; the message-only variants are the core's own refusals, which have none.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Cancelled(String),
    /// A remote service (the pool's store, a server) cannot be reached right now.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The Flow Manager's own failures (missing image or container, container sockets).
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// A file or directory operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Another core error, with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<CoreError>,
    },
}

impl CoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::Invalid(_) => ErrorKind::Invalid,
            CoreError::NotFound(_) => ErrorKind::NotFound,
            CoreError::Conflict(_) => ErrorKind::Conflict,
            CoreError::Failed(_) | CoreError::Io { .. } => ErrorKind::Failed,
            CoreError::Busy(_) => ErrorKind::Busy,
            CoreError::Cancelled(_) => ErrorKind::Cancelled,
            CoreError::Unavailable(_) => ErrorKind::Unavailable,
            CoreError::Engine(e) => e.kind(),
            CoreError::Compose(e) => e.kind(),
            CoreError::Store(e) => e.kind(),
            CoreError::Bundle(e) => e.kind(),
            CoreError::Network(e) => e.kind(),
            CoreError::Flow(e) => e.kind(),
            CoreError::Context { source, .. } => source.kind(),
        }
    }

    /// An I/O failure while doing `context` ("cannot create an upload file").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// This error, prefixed with what was being done; the kind stays.
    pub fn context(self, context: impl Into<String>) -> Self {
        CoreError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The error below any context.
    pub fn root(&self) -> &CoreError {
        match self {
            CoreError::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// Whether the error is of kind `kind`.
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind() == kind
    }
}

pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn sources_are_kept_and_kinds_follow_them() {
        let e = CoreError::from(EngineError::Conflict("name in use".into()));
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(matches!(e, CoreError::Engine(EngineError::Conflict(_))));
        let e = e.context("creating web");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(e.to_string(), "creating web: name in use");
        assert!(e.source().is_some());
        let io = CoreError::io(
            "cannot store the upload",
            std::io::Error::other("disk full"),
        );
        assert_eq!(io.kind(), ErrorKind::Failed);
        assert_eq!(io.to_string(), "cannot store the upload: disk full");
        assert_eq!(io.source().unwrap().to_string(), "disk full");
        assert!(CoreError::from(EngineError::Unavailable("x".into())).is(ErrorKind::Unavailable));
    }
}
