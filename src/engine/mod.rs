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
//! - [`detached`]: a fetch runs in a task of its own, so it outlives a
//!   caller that disconnects or gives up; the caller waits at most
//!   `token_timeout_ms` for it.

pub(crate) mod backoff;
pub(crate) mod fleet;

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::config::UpstreamSettings;
use crate::wechat::FetchError;

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

/// Why a caller of [`detached`] got no answer from the work.
pub(crate) enum Unanswered {
    /// The work did not finish while the caller could wait; it goes on.
    StillRunning(Duration),
    /// The work ended without an answer (it panicked): never expected, but a
    /// request must still get one.
    Stopped(FetchError),
}

/// Runs `work` in a task of its own and waits for it at most `wait`. `noun`
/// names the credential in the error should the task stop unexpectedly.
pub(crate) async fn detached<T: Send + 'static>(
    noun: &str,
    wait: Duration,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, Unanswered> {
    let flight = tokio::spawn(work);
    match tokio::time::timeout(wait, flight).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(Unanswered::Stopped(stopped(noun))),
        Err(_) => Err(Unanswered::StillRunning(wait)),
    }
}

/// The error of a fetch task that ended without an answer.
pub(crate) fn stopped(noun: &str) -> FetchError {
    FetchError::Transport(format!("the {noun} fetch stopped unexpectedly"))
}

/// Locks a credential's bookkeeping. It holds plain values that a panic
/// elsewhere cannot leave half-written in a way that matters, so poisoning
/// is ignored.
pub(crate) fn lock<S>(state: &Mutex<S>) -> MutexGuard<'_, S> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}
