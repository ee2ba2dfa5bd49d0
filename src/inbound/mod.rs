//! The listener side: accepting connections, what a client may send and
//! hold, the `Host` a listener answers to, and the caller's key.

pub mod auth;
pub mod host;
pub mod limits;
pub mod linger;
pub mod server;
pub mod watchdog;
