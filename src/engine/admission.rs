//! Whether a credential may be fetched: a pure function of why it is asked
//! for, what its cell knows, and the time. No I/O, no clock: the cell takes a
//! [`Facts`] snapshot under its state lock and acts on the [`Decision`].
//!
//! One rule set for every kind. A kind that never asks for a reason (JS-SDK
//! tickets are never rejected by an API, nor refreshed by an operator) never
//! meets its rules; tickets are also never fetched at start, only on demand.

use std::time::{Duration, Instant};

/// What asked for a fetch; decides which shortcuts and limits apply, and
/// labels logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first fetch, or a retry before any credential was held.
    Startup,
    /// Renewal ahead of expiry, or a retry after a failed renewal.
    Ahead,
    /// A request found no valid credential.
    OnDemand,
    /// WeChat rejected the token a request used.
    TokenError,
    /// The admin refresh endpoint.
    Admin,
}

impl Reason {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::Ahead => "ahead",
            Reason::OnDemand => "on_demand",
            Reason::TokenError => "token_error",
            Reason::Admin => "admin",
        }
    }
}

/// What a credential's admission rules decide about a wish for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The held credential serves: no fetch.
    UseHeld,
    /// The last fetch failed and its backoff has not passed: answer its error.
    FailWithLastError,
    /// Too soon (token errors in a flood): wait until then, look again, and
    /// fetch if nobody did meanwhile. Delays callers instead of failing them.
    WaitUntil(Instant),
    /// An operator's refresh is not made; the next may be at this time.
    /// Sixty posts must never make sixty fetches.
    Decline(Instant),
    /// Go ahead and fetch.
    Fetch,
}

/// The held credential as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its place in the sequence of values the cell has held.
    pub generation: u64,
    /// Not expired.
    pub valid: bool,
    /// WeChat rejected it (a token error on a call that used it).
    pub rejected: bool,
}

/// What the cell knows when a fetch is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// The token in the slot, if any.
    pub held: Option<Held>,
    /// After a failed fetch: no fetch before this (the last error stands).
    /// Set while a failure is on record, even once passed.
    pub retry_at: Option<Instant>,
    /// When the held token is due for renewal ahead of expiry.
    pub renew_at: Option<Instant>,
    /// The last fetch made because WeChat rejected a token.
    pub last_token_error_fetch: Option<Instant>,
    /// The last fetch that brought a credential.
    pub last_success: Option<Instant>,
    /// The last fetch an operator's refresh made, successful or not.
    pub last_admin_fetch: Option<Instant>,
    /// An operator's refresh already went through the current backoff.
    pub backoff_cut_by_operator: bool,
    /// At most one token-error fetch, and one admin fetch, per this
    /// interval.
    pub min_refresh_interval: Duration,
}

/// The rules, in order. `rejected` is the generation of the token the caller
/// saw WeChat reject (token errors only).
pub fn decide(reason: Reason, rejected: Option<u64>, facts: &Facts, now: Instant) -> Decision {
    let valid = facts.held.filter(|h| h.valid);
    match (reason, valid) {
        // Someone replaced the rejected token while this caller waited.
        (Reason::TokenError, Some(held)) if Some(held.generation) != rejected => {
            return Decision::UseHeld
        }
        (Reason::OnDemand, Some(_)) => return Decision::UseHeld,
        _ => {}
    }
    // Held, and WeChat has not rejected it.
    let good = valid.filter(|h| !h.rejected);
    if reason == Reason::Admin {
        return decide_admin(good.is_some(), facts, now);
    }
    // During a backoff everyone gets the last error at once.
    if facts.retry_at.is_some_and(|at| now < at) {
        return Decision::FailWithLastError;
    }
    if matches!(reason, Reason::Startup | Reason::Ahead)
        && good.is_some()
        && facts.retry_at.is_none()
        && facts.renew_at.is_some_and(|at| now < at)
    {
        // Another fetch rescheduled the renewal while the refresher waited.
        return Decision::UseHeld;
    }
    if reason == Reason::TokenError {
        if let Some(last) = facts.last_token_error_fetch {
            let next = last + facts.min_refresh_interval;
            if now < next {
                return Decision::WaitUntil(next);
            }
        }
    }
    Decision::Fetch
}

/// An operator's refresh: at most one fetch per `min_refresh_interval`,
/// healthy or failing (a good token fetched within it stands); through a
/// fetch backoff once, for the operator who just fixed its cause, and after
/// that the backoff stands until a fetch works.
fn decide_admin(good: bool, facts: &Facts, now: Instant) -> Decision {
    let interval = facts.min_refresh_interval;
    if good && facts.last_success.is_some_and(|t| now < t + interval) {
        return Decision::UseHeld;
    }
    if let Some(next) = facts.last_admin_fetch.map(|t| t + interval) {
        if now < next {
            return Decision::Decline(next);
        }
    }
    match facts.retry_at {
        Some(at) if now < at && facts.backoff_cut_by_operator => Decision::Decline(at),
        _ => Decision::Fetch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A valid held token of generation 1, renewal in an hour, no history.
    fn healthy(now: Instant) -> Facts {
        Facts {
            held: Some(Held {
                generation: 1,
                valid: true,
                rejected: false,
            }),
            renew_at: Some(now + s(3600)),
            min_refresh_interval: s(5),
            ..Facts::default()
        }
    }

    fn rejected(now: Instant) -> Facts {
        Facts {
            held: Some(Held {
                generation: 1,
                valid: true,
                rejected: true,
            }),
            ..healthy(now)
        }
    }

    #[test]
    fn a_request_with_a_valid_token_uses_it() {
        let now = Instant::now();
        assert_eq!(
            decide(Reason::OnDemand, None, &healthy(now), now),
            Decision::UseHeld
        );
    }

    #[test]
    fn a_request_without_a_token_fetches() {
        let now = Instant::now();
        let facts = Facts {
            held: None,
            ..healthy(now)
        };
        assert_eq!(decide(Reason::OnDemand, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn a_token_error_on_the_held_token_fetches() {
        let now = Instant::now();
        assert_eq!(
            decide(Reason::TokenError, Some(1), &healthy(now), now),
            Decision::Fetch
        );
    }

    #[test]
    fn a_token_error_on_a_token_already_replaced_uses_the_new_one() {
        let now = Instant::now();
        let mut facts = healthy(now);
        facts.held.as_mut().unwrap().generation = 2;
        assert_eq!(
            decide(Reason::TokenError, Some(1), &facts, now),
            Decision::UseHeld
        );
    }

    #[test]
    fn a_caller_retries_with_the_replacement_even_if_another_saw_it_rejected() {
        // Whoever saw generation 2 rejected asks for its replacement; this
        // caller only knows generation 1 failed, and 2 is news to it.
        let now = Instant::now();
        let mut facts = rejected(now);
        facts.held.as_mut().unwrap().generation = 2;
        assert_eq!(
            decide(Reason::TokenError, Some(1), &facts, now),
            Decision::UseHeld
        );
        assert_eq!(
            decide(Reason::TokenError, Some(2), &facts, now),
            Decision::Fetch
        );
    }

    #[test]
    fn during_a_backoff_requests_get_the_last_error_at_once() {
        let now = Instant::now();
        let facts = Facts {
            held: None,
            retry_at: Some(now + s(30)),
            ..healthy(now)
        };
        for reason in [
            Reason::OnDemand,
            Reason::TokenError,
            Reason::Startup,
            Reason::Ahead,
        ] {
            assert_eq!(
                decide(reason, Some(1), &facts, now),
                Decision::FailWithLastError,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn a_valid_token_still_serves_during_a_backoff() {
        let now = Instant::now();
        let facts = Facts {
            retry_at: Some(now + s(30)),
            ..healthy(now)
        };
        assert_eq!(
            decide(Reason::OnDemand, None, &facts, now),
            Decision::UseHeld
        );
    }

    #[test]
    fn an_operator_goes_through_a_backoff() {
        let now = Instant::now();
        let facts = Facts {
            held: None,
            retry_at: Some(now + s(30)),
            ..healthy(now)
        };
        assert_eq!(decide(Reason::Admin, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn the_backoff_ends_when_its_time_has_passed() {
        let now = Instant::now();
        let facts = Facts {
            held: None,
            retry_at: Some(now),
            ..healthy(now)
        };
        assert_eq!(decide(Reason::Startup, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn the_refresher_skips_a_renewal_someone_else_already_made() {
        let now = Instant::now();
        assert_eq!(
            decide(Reason::Ahead, None, &healthy(now), now),
            Decision::UseHeld
        );
    }

    #[test]
    fn the_refresher_renews_when_due() {
        let now = Instant::now();
        let facts = Facts {
            renew_at: Some(now - s(1)),
            ..healthy(now)
        };
        assert_eq!(decide(Reason::Ahead, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn the_refresher_replaces_a_rejected_token_without_the_flood_guard() {
        let now = Instant::now();
        let facts = Facts {
            last_token_error_fetch: Some(now),
            ..rejected(now)
        };
        assert_eq!(decide(Reason::Ahead, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn token_errors_in_a_flood_wait_for_the_next_allowed_fetch() {
        let now = Instant::now();
        let facts = Facts {
            last_token_error_fetch: Some(now - s(2)),
            ..healthy(now)
        };
        assert_eq!(
            decide(Reason::TokenError, Some(1), &facts, now),
            Decision::WaitUntil(now + s(3))
        );
    }

    #[test]
    fn requests_keep_using_a_rejected_token_that_has_not_expired() {
        // One caller's API may answer 40001 for its own reasons; the others
        // are not held up by it.
        let now = Instant::now();
        let facts = Facts {
            last_token_error_fetch: Some(now - s(1)),
            ..rejected(now)
        };
        assert_eq!(
            decide(Reason::OnDemand, None, &facts, now),
            Decision::UseHeld
        );
    }

    #[test]
    fn the_refresher_retries_a_failed_replacement_once_the_backoff_passed() {
        let now = Instant::now();
        let facts = Facts {
            retry_at: Some(now - s(1)),
            ..rejected(now)
        };
        assert_eq!(decide(Reason::Ahead, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn the_flood_guard_opens_after_the_interval() {
        let now = Instant::now();
        let facts = Facts {
            last_token_error_fetch: Some(now - s(5)),
            ..healthy(now)
        };
        assert_eq!(
            decide(Reason::TokenError, Some(1), &facts, now),
            Decision::Fetch
        );
    }

    #[test]
    fn an_admin_refresh_right_after_a_successful_fetch_uses_the_held_token() {
        let now = Instant::now();
        let facts = Facts {
            last_success: Some(now - s(3)),
            ..healthy(now)
        };
        assert_eq!(decide(Reason::Admin, None, &facts, now), Decision::UseHeld);
    }

    #[test]
    fn failed_attempts_do_not_hold_back_an_admin_refresh() {
        let now = Instant::now();
        // A fetch failed a moment ago (it set the backoff), the last success
        // is long past: the operator fixed the cause and asks again.
        let facts = Facts {
            retry_at: Some(now + s(60)),
            last_success: Some(now - s(3600)),
            ..healthy(now)
        };
        assert_eq!(decide(Reason::Admin, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn an_admin_refresh_replaces_a_rejected_token_at_once() {
        let now = Instant::now();
        let facts = Facts {
            last_success: Some(now - s(1)),
            last_token_error_fetch: Some(now),
            ..rejected(now)
        };
        assert_eq!(decide(Reason::Admin, None, &facts, now), Decision::Fetch);
    }

    #[test]
    fn an_operator_cuts_a_backoff_short_only_once() {
        let now = Instant::now();
        let facts = Facts {
            held: None,
            retry_at: Some(now + s(60)),
            backoff_cut_by_operator: true,
            last_admin_fetch: Some(now - s(30)),
            ..healthy(now)
        };
        assert_eq!(
            decide(Reason::Admin, None, &facts, now),
            Decision::Decline(now + s(60))
        );
    }

    #[test]
    fn admin_refreshes_make_one_fetch_per_interval_even_while_fetches_fail() {
        let now = Instant::now();
        // The operator's fetch a second ago failed; no backoff stands (a
        // secret rotation ended it), yet the next waits out the interval.
        let facts = Facts {
            held: None,
            last_admin_fetch: Some(now - s(1)),
            last_success: Some(now - s(3600)),
            ..healthy(now)
        };
        assert_eq!(
            decide(Reason::Admin, None, &facts, now),
            Decision::Decline(now + s(4))
        );
        assert_eq!(
            decide(Reason::Admin, None, &facts, now + s(4)),
            Decision::Fetch
        );
    }
}
