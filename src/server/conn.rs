//! Per-connection plumbing the server hands to every request.

use tokio_util::sync::CancellationToken;

/// Closes one HTTP connection at once when cancelled, whether or not hyper is currently
/// polling it (a stream whose client stopped reading is never polled again). The server
/// puts one in every request's extensions.
#[derive(Clone, Default)]
pub struct ConnectionAbort(pub CancellationToken);
