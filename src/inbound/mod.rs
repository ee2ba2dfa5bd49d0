//! The listener side: accepting connections, what a client may send and
//! hold, and the caller's key.

pub mod auth;
pub mod limits;
pub mod linger;
pub mod server;
pub mod watchdog;
