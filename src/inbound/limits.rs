//! What a client may send and hold: sizes, times and connections, each
//! answered properly when passed.
//!
//! | limit | enforced by | the client sees |
//! |---|---|---|
//! | request head size | hyper's `max_header_size` | 431, connection closed |
//! | request body size | [`declared_too_large`] at once, [`Cap`] while streaming | 413 JSON |
//! | head read / idle keep-alive / stalled download | [`crate::inbound::watchdog`] | connection closed |
//! | stalled upload | a timeout around buffering the body | 408 JSON |
//! | concurrent connections | the accept loop ([`crate::inbound::server`]) | nothing: no accept until one closes |

use std::time::Duration;

use http::header::{HeaderMap, CONTENT_LENGTH};

/// `[proxy]` limits, validated; their defaults are in the config's
/// `defaults.rs`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request head (request line and headers) in bytes; longer
    /// heads get 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes; larger ones get 413.
    pub max_body_bytes: u64,
    /// From a connection's start, or from the first byte of a later request,
    /// until the whole head has arrived (slowloris clients are cut off).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit between requests, how long a
    /// response may wait for the client to read it, and how long a body kept
    /// for replay may take to arrive.
    pub idle_timeout: Duration,
    /// Client connections served at once, per listener.
    pub max_connections: usize,
}

/// A request body passed `max_request_body_bytes`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body is larger than max_request_body_bytes = {0}")]
pub struct BodyTooLarge(pub u64);

/// Whether the declared `Content-Length` is over `max`: refused before a
/// byte of the body is read.
pub fn declared_too_large(headers: &HeaderMap, max: u64) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max)
}

/// Counts a streamed body's bytes against the limit (a chunked body
/// declares no length).
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// Bytes still allowed.
    left: u64,
    /// The limit, for the error.
    limit: u64,
}

impl Cap {
    /// A cap of `limit` bytes.
    pub fn new(limit: u64) -> Cap {
        Cap { left: limit, limit }
    }

    /// Counts `n` more bytes; fails once the total passes the limit.
    pub fn take(&mut self, n: usize) -> Result<(), BodyTooLarge> {
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(BodyTooLarge(self.limit)),
        }
    }
}

/// The [`BodyTooLarge`] somewhere in an error's causes (the upstream client
/// reports a failed request body as its own error).
pub fn body_too_large(error: &(dyn std::error::Error + 'static)) -> Option<BodyTooLarge> {
    // Walked here rather than through the error module, which depends on
    // this one for the 413 answer.
    std::iter::successors(Some(error), |e| e.source())
        .find_map(|e| e.downcast_ref::<BodyTooLarge>().copied())
}

/// Raises this process's soft limit on open files to the hard limit, so
/// `max_connections` is not cut short by a default of 1024. Returns the
/// limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// File descriptors `max_connections` may need: each client connection,
/// and room for the upstream pools (capped per app by
/// `[upstream] max_connections_per_app`, 128 by default) and the
/// admin listener. Idle client connections hold no upstream connection.
pub fn fds_needed(limits: &Limits) -> u64 {
    limits.max_connections as u64 + 2048
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_allows_exactly_its_limit() {
        let mut cap = Cap::new(10);
        assert!(cap.take(4).is_ok());
        assert!(cap.take(6).is_ok());
        assert!(cap.take(0).is_ok());
        assert_eq!(cap.take(1).unwrap_err().0, 10);
    }

    #[test]
    fn the_declared_length_is_read_from_content_length() {
        let mut h = HeaderMap::new();
        assert!(!declared_too_large(&h, 10));
        h.insert(CONTENT_LENGTH, "10".parse().unwrap());
        assert!(!declared_too_large(&h, 10));
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert!(declared_too_large(&h, 10));
    }

    #[test]
    fn body_too_large_is_found_among_the_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapper")]
        struct Wrapper(#[source] BodyTooLarge);
        let e = Wrapper(BodyTooLarge(5));
        assert_eq!(body_too_large(&e).map(|b| b.0), Some(5));
        assert!(body_too_large(&std::io::Error::other("x")).is_none());
    }
}
