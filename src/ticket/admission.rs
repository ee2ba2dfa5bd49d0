//! Whether a ticket fetch may happen, and what a fetched ticket is worth: pure
//! functions of what the holder knows and the time. No I/O, no clock.
//!
//! Tickets differ from tokens in two ways that shape these rules. WeChat
//! hands back the ticket it already issued, with a fresh `expires_in` 7200,
//! to anyone who asks before it ends: so a ticket's life is counted from when
//! its value was first seen, and a renewal that brings the same value back
//! waits for that life to end instead of asking again and again. And tickets
//! are lazy: fetched on first demand, renewed ahead of expiry only while
//! pages still ask for them (see `Holder::renew`).

use std::time::{Duration, Instant};

pub use crate::engine::Decision;

/// Why a ticket is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A request found no valid ticket.
    Demand,
    /// Renewal ahead of expiry, or a retry after a failed one.
    Ahead,
}

impl Want {
    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Want::Demand => "on_demand",
            Want::Ahead => "ahead",
        }
    }
}

/// What the holder knows when a fetch is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// A ticket is held and has not expired.
    pub valid: bool,
    /// After a failed fetch: no fetch before this.
    pub retry_at: Option<Instant>,
    /// When the held ticket is due for renewal.
    pub renew_at: Option<Instant>,
}

/// The rules, in order.
pub fn decide(want: Want, facts: &Facts, now: Instant) -> Decision {
    if want == Want::Demand && facts.valid {
        return Decision::UseHeld;
    }
    if facts.retry_at.is_some_and(|at| now < at) {
        return Decision::FailWithLastError;
    }
    if want == Want::Ahead && facts.valid && facts.renew_at.is_some_and(|at| now < at) {
        // Another fetch renewed it while the refresher waited for the gate.
        return Decision::UseHeld;
    }
    Decision::Fetch
}

/// When a fetched ticket expires: as WeChat says (`fetched`), unless the same
/// value was seen before (held, or saved by another replica), in which case
/// the earliest expiry recorded for it stands. WeChat repeating 7200 never
/// lengthens a ticket's life.
pub fn expiry(fetched: Instant, seen_before: impl IntoIterator<Item = Instant>) -> Instant {
    seen_before.into_iter().fold(fetched, Instant::min)
}

/// When to try to renew a ticket that ends at `expires_at`. A new value is
/// renewed `lead` ahead (as tokens are). A value WeChat handed back again is
/// asked for again every [`retry_step`] until it ends: WeChat may hand out
/// the old ticket until its last moments, and its successor must be had as
/// soon as WeChat gives it, not when the old one is down to its last second.
/// Once it has ended by our count (WeChat's clock may lag ours), ask again
/// after a second.
pub fn renew_at(now: Instant, expires_at: Instant, lead: Duration, repeated: bool) -> Instant {
    let left = expires_at.saturating_duration_since(now);
    if left.is_zero() {
        return now + Duration::from_secs(1);
    }
    if repeated {
        return (now + retry_step(lead)).min(expires_at);
    }
    now + crate::engine::backoff::renew_after(left, lead)
}

/// How often a ticket WeChat keeps handing back is asked for inside its
/// renewal window: ten times in the window (every 30 s with the default
/// five minutes), never more than once a second. WeCom allows 400 ticket
/// fetches an hour per corp; this is about 20 per lifetime at most.
pub fn retry_step(lead: Duration) -> Duration {
    (lead / 10).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_request_with_a_valid_ticket_uses_it() {
        let now = Instant::now();
        let facts = Facts {
            valid: true,
            retry_at: Some(now + s(60)),
            ..Facts::default()
        };
        assert_eq!(decide(Want::Demand, &facts, now), Decision::UseHeld);
    }

    #[test]
    fn during_a_backoff_everyone_gets_the_last_error() {
        let now = Instant::now();
        let facts = Facts {
            retry_at: Some(now + s(5)),
            ..Facts::default()
        };
        assert_eq!(
            decide(Want::Demand, &facts, now),
            Decision::FailWithLastError
        );
        assert_eq!(
            decide(Want::Ahead, &facts, now),
            Decision::FailWithLastError
        );
        assert_eq!(decide(Want::Demand, &facts, now + s(6)), Decision::Fetch);
    }

    #[test]
    fn a_renewal_done_meanwhile_is_not_repeated() {
        let now = Instant::now();
        let facts = Facts {
            valid: true,
            renew_at: Some(now + s(100)),
            ..Facts::default()
        };
        assert_eq!(decide(Want::Ahead, &facts, now), Decision::UseHeld);
        assert_eq!(decide(Want::Ahead, &facts, now + s(100)), Decision::Fetch);
    }

    #[test]
    fn a_missing_ticket_is_fetched() {
        let now = Instant::now();
        assert_eq!(
            decide(Want::Demand, &Facts::default(), now),
            Decision::Fetch
        );
    }

    #[test]
    fn a_repeated_ticket_keeps_its_first_expiry() {
        let t = Instant::now();
        // Fetched again 1000 s after it was first seen: WeChat says 7200.
        let first = t + s(7200);
        let said = t + s(1000) + s(7200);
        assert_eq!(expiry(said, [first]), first);
        assert_eq!(expiry(said, []), said);
        // Another replica saved it even earlier.
        assert_eq!(expiry(said, [first, t + s(7000)]), t + s(7000));
    }

    #[test]
    fn a_new_ticket_is_renewed_lead_ahead() {
        let t = Instant::now();
        assert_eq!(renew_at(t, t + s(7200), s(300), false), t + s(6900));
    }

    #[test]
    fn a_repeated_ticket_is_asked_for_again_within_its_window_until_it_ends() {
        let t = Instant::now();
        assert_eq!(renew_at(t, t + s(200), s(300), true), t + s(30));
        assert_eq!(renew_at(t, t + s(20), s(300), true), t + s(20));
        assert_eq!(renew_at(t, t + s(5), s(4), true), t + s(1));
    }

    #[test]
    fn a_ticket_wechat_still_hands_out_past_its_end_is_asked_for_in_a_second() {
        let t = Instant::now();
        assert_eq!(renew_at(t + s(5), t, s(300), true), t + s(6));
    }
}
