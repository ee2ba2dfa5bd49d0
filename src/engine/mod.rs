//! The credential engine: what every credential the proxy holds shares,
//! whatever its kind (app tokens in [`crate::token`], the platform's
//! component and authorizer tokens through a [`crate::token::Grantor`],
//! JS-SDK tickets in [`crate::ticket`]).
//!
//! - [`backoff`]: when to fetch again, after a success (renewal ahead of
//!   expiry) and after a failure (capped exponential backoff, never sooner
//!   than WeChat's errcode demands).
//! - [`fleet`]: the store-and-lease protocol, so a fleet makes one fetch per
//!   credential per lifetime.
//! - [`Limits`]: the `[upstream]` bounds on one fetch and on the backoff.

pub(crate) mod backoff;
pub(crate) mod fleet;

use std::time::Duration;

use crate::config::UpstreamSettings;

/// The `[upstream]` values every credential fetch obeys.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One fetch from WeChat, and how long a request waits for a credential.
    pub timeout: Duration,
    /// The first backoff after a failure.
    pub retry_min: Duration,
    /// The longest backoff.
    pub retry_max: Duration,
}

impl Limits {
    /// `token_timeout_ms`, `token_retry_min_ms` and `token_retry_max_ms`.
    pub fn of(upstream: &UpstreamSettings) -> Limits {
        Limits {
            timeout: upstream.token_timeout,
            retry_min: upstream.token_retry_min,
            retry_max: upstream.token_retry_max,
        }
    }
}
