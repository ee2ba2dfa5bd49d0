//! The credential engine: what every credential the proxy holds shares,
//! whatever its kind.
//!
//! - [`cell`]: one credential, a [`Cell`]: the lock-free slot requests read,
//!   a single flight whose fetch outlives its caller, backoff, the store and
//!   fleet lease, renewal ahead of expiry, and its status. What differs per
//!   kind is its [`Grant`]: how to fetch, its key in the store, how expiry
//!   is read (first sight for tickets), its own bookkeeping and logs. The
//!   kinds: the token's grant ([`crate::token::TokenGrant`]: app tokens, and
//!   through a [`crate::token::Grantor`] a platform's component and
//!   authorizer tokens, a suite's suite, provider and corp tokens) and the
//!   ticket's ([`crate::ticket::TicketGrant`]: JS-SDK tickets). A new kind
//!   is a grant and its config.
//! - [`admission`]: the rules, a pure `decide` over why a fetch is wanted
//!   and what the cell knows, with their unit tests.
//! - [`backoff`]: when to fetch again, after a success (renewal ahead of
//!   expiry) and after a failure (capped exponential backoff, never sooner
//!   than WeChat's errcode demands).
//! - [`fleet`]: the store-and-lease protocol, so a fleet makes one fetch per
//!   credential per lifetime.
//! - [`Limits`]: the `[upstream]` bounds on one fetch and on the backoff.
//! - [`single_flight`]: under one gate per credential, the rules say
//!   whether to serve the held one, answer the last error, wait, or fetch;
//!   N callers that want a new one cause one fetch.
//! - [`renew`]: the background task that renews ahead of expiry and
//!   retries after a failure, on the schedule the credential's state names.

pub(crate) mod admission;
pub(crate) mod backoff;
pub(crate) mod cell;
pub(crate) mod fleet;

pub use admission::{Decision, Reason};
pub use cell::{Ask, Cell, CellError, Credential, Grant};

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

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

/// The single flight every credential runs. Under `gate`, `decide` (the
/// kind's rules, given the time) says what to do: serve what `held` holds,
/// answer what `last_error` recorded (either gone meanwhile: decide again),
/// wait with the gate released, refuse with `declined` (how long until the
/// next may be made), or `fetch` with the gate held for the whole fetch.
pub(crate) async fn single_flight<T, E>(
    gate: &tokio::sync::Mutex<()>,
    decide: impl Fn(Instant) -> Decision,
    held: impl Fn() -> Option<T>,
    last_error: impl Fn() -> Option<E>,
    declined: impl Fn(Duration) -> E,
    fetch: impl AsyncFnOnce(Instant) -> Result<T, E>,
) -> Result<T, E> {
    loop {
        let gate = gate.lock().await;
        let now = Instant::now();
        match decide(now) {
            Decision::UseHeld => match held() {
                Some(held) => return Ok(held),
                // Expired between the look and now: decide again.
                None => continue,
            },
            Decision::FailWithLastError => match last_error() {
                Some(e) => return Err(e),
                None => continue,
            },
            Decision::WaitUntil(at) => {
                drop(gate);
                tokio::time::sleep_until(at.into()).await;
            }
            Decision::Decline(at) => return Err(declined(at.saturating_duration_since(now))),
            Decision::Fetch => {
                let outcome = fetch(now).await;
                drop(gate);
                return outcome;
            }
        }
    }
}

/// What a credential's renewal task does next.
pub(crate) enum Next<R> {
    /// Nothing to renew (the credential is not in use): the task ends.
    Stop,
    /// Nothing scheduled yet (the first fetch is under way): wait to be woken.
    Idle,
    /// Renew at this time, for this reason.
    At(Instant, R),
}

/// Renews ahead of expiry and retries after failures: asks `next` for the
/// schedule, sleeps until then and runs `renew`; looks again whenever `wake`
/// is notified (a fetch changed the schedule); ends on `Next::Stop` or when
/// `shutdown` flips. Failures are `renew`'s to log and schedule.
pub(crate) async fn renew<R, F: Future<Output = ()>>(
    wake: &Notify,
    mut shutdown: watch::Receiver<bool>,
    next: impl Fn() -> Next<R>,
    renew: impl Fn(R) -> F,
) {
    loop {
        let (at, reason) = match next() {
            Next::Stop => return,
            Next::Idle => (None, None),
            Next::At(at, reason) => (Some(at), Some(reason)),
        };
        let sleep = async {
            match at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                if let Some(reason) = reason {
                    renew(reason).await;
                }
            }
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}
