//! Wire formats: one module per API dialect, each only mapping its requests and responses
//! onto core calls. Shared HTTP plumbing lives in `http` and `router`.

pub mod http;
pub mod intervirt;
pub mod router;
pub mod transfer;
pub mod upgrade;
