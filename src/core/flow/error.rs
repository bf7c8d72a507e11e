//! The Flow Manager's own failures, beside Docker's: a missing image or container, and the
//! container sockets. Their kinds follow the core's vocabulary; the dialect tells them apart
//! for its error types.

use crate::core::ErrorKind;

/// How a container socket failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFailure {
    /// The socket could not be made or is missing (its path is taken, the directory is not
    /// writable, ...).
    Setup,
    /// No container is connected, or the connection broke.
    Connection,
    /// The container did not take a frame in time (or stalled inside one it sent).
    Timeout,
    /// The container sent a frame that is not one (a length over the limit, not UTF-8 JSON).
    Communication,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FlowError {
    #[error("{0}")]
    ImageNotFound(String),
    #[error("{0}")]
    ContainerNotFound(String),
    #[error("{message}")]
    Socket {
        failure: SocketFailure,
        message: String,
    },
}

impl FlowError {
    pub fn socket(failure: SocketFailure, message: impl Into<String>) -> Self {
        FlowError::Socket {
            failure,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            FlowError::ImageNotFound(_) | FlowError::ContainerNotFound(_) => ErrorKind::NotFound,
            FlowError::Socket { failure, .. } => match failure {
                SocketFailure::Connection | SocketFailure::Timeout => ErrorKind::Unavailable,
                SocketFailure::Setup | SocketFailure::Communication => ErrorKind::Failed,
            },
        }
    }
}
