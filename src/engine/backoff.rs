//! When to fetch again: after a success (renewal ahead of expiry) and after a
//! failure (capped exponential backoff with jitter, never sooner than
//! WeChat's errcode demands); and how long a credential lives when WeChat
//! hands back one it issued before (JS-SDK tickets).

use std::time::{Duration, Instant};

use crate::wechat::FetchError;

/// Failed fetches in a row, the last one's error and the backoff they
/// earned; one success clears it. Kept under its owner's state lock.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    /// Failures in a row, for the backoff exponent.
    count: u32,
    /// The last failure, answered at once to requests during the backoff.
    last: Option<FetchError>,
    /// No fetch before this (but from the refresher and an operator).
    retry_at: Option<Instant>,
    /// An operator's refresh already went through this backoff: the next
    /// waits for it like everyone.
    cut_by_operator: bool,
}

impl Failures {
    /// Records `e` and sets the backoff (`min`, doubling, up to `max`);
    /// returns the delay before the next attempt.
    pub(crate) fn record(&mut self, e: &FetchError, min: Duration, max: Duration) -> Duration {
        self.count = self.count.saturating_add(1);
        let delay = retry_delay(self.count, min, max, e.min_retry_delay());
        self.retry_at = Some(Instant::now() + delay);
        self.last = Some(e.clone());
        delay
    }

    /// A fetch worked: no backoff, no error.
    pub(crate) fn clear(&mut self) {
        *self = Failures::default();
    }

    /// Ends the backoff now (its cause was fixed); false when the last
    /// fetch did not fail.
    pub(crate) fn end_now(&mut self) -> bool {
        if self.last.is_none() {
            return false;
        }
        self.retry_at = Some(Instant::now());
        true
    }

    /// When the backoff ends (it may have passed), while a failure is on
    /// record.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.last.is_some())
    }

    /// The last fetch's error, if it failed.
    pub(crate) fn last(&self) -> Option<&FetchError> {
        self.last.as_ref()
    }

    /// Failures in a row.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// An operator's refresh goes through the backoff now; until a fetch
    /// works, later ones wait for the backoff.
    pub(crate) fn cut_by_operator_now(&mut self) {
        self.cut_by_operator = true;
    }

    /// Whether an operator already went through since the last success.
    pub(crate) fn cut_by_operator(&self) -> bool {
        self.cut_by_operator
    }
}

/// The delay before the next attempt after `failures` failed fetches in a
/// row: `min · 2^(failures-1)`, capped at `max`, spread ±20 %, and never
/// below `floor` (what WeChat's errcode demands: 45009 waits 10 minutes).
pub fn retry_delay(failures: u32, min: Duration, max: Duration, floor: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let backoff = min.saturating_mul(1 << exp).min(max);
    jitter(backoff).max(floor)
}

/// How long after a fetch to renew: `lead` before expiry, but never sooner
/// than a tenth of the lifetime (nor 1 s), so a token that comes back with
/// little life left — the stable API returns the same token until its last
/// five minutes — is asked for again after a pause, not in a loop.
pub fn renew_after(lifetime: Duration, lead: Duration) -> Duration {
    lifetime
        .saturating_sub(lead)
        .max(lifetime / 10)
        .max(Duration::from_secs(1))
        .min(lifetime)
}

/// When a credential fetched again expires: as WeChat says (`fetched`),
/// unless the same value was seen before (held, or saved by another
/// replica), in which case the earliest expiry recorded for it stands. For
/// tickets, whose `expires_in` WeChat repeats as 7200 for one it issued
/// long ago: that never lengthens their life.
pub fn first_sight(fetched: Instant, seen_before: impl IntoIterator<Item = Instant>) -> Instant {
    seen_before.into_iter().fold(fetched, Instant::min)
}

/// When to try to renew a credential that ends at `expires_at`. A new value
/// is renewed `lead` ahead ([`renew_after`]). A value WeChat handed back again
/// (`repeated`: a ticket) is asked for again every [`retry_step`] until it
/// ends: WeChat may hand out the old ticket until its last moments, and its
/// successor must be had as soon as WeChat gives it, not when the old one is
/// down to its last second. Once it has ended by our count (WeChat's clock
/// may lag ours), ask again after a second.
pub fn renew_at(now: Instant, expires_at: Instant, lead: Duration, repeated: bool) -> Instant {
    let left = expires_at.saturating_duration_since(now);
    if left.is_zero() {
        return now + Duration::from_secs(1);
    }
    if repeated {
        return (now + retry_step(lead)).min(expires_at);
    }
    now + renew_after(left, lead)
}

/// How often a value WeChat keeps handing back is asked for inside its
/// renewal window: ten times in the window (every 30 s with the default
/// five minutes), never more than once a second. WeCom allows 400 ticket
/// fetches an hour per corp; this is about 20 per lifetime at most.
pub fn retry_step(lead: Duration) -> Duration {
    (lead / 10).max(Duration::from_secs(1))
}

/// Spreads retries of many proxies apart: ±20 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn renewal_comes_lead_before_expiry() {
        assert_eq!(renew_after(s(7200), s(300)), s(6900));
    }

    #[test]
    fn renewal_of_a_short_lived_token_pauses_instead_of_looping() {
        // The stable API handed back the same token with 301 s left.
        assert_eq!(renew_after(s(301), s(300)), Duration::from_millis(30_100));
        assert_eq!(renew_after(s(4), s(300)), s(1));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let j = jitter(s(10));
            assert!(j >= s(8) && j <= s(12), "{j:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_cap() {
        let within =
            |d: Duration, around: Duration| d >= around.mul_f64(0.8) && d <= around.mul_f64(1.2);
        assert!(within(retry_delay(1, s(1), s(60), Duration::ZERO), s(1)));
        assert!(within(retry_delay(2, s(1), s(60), Duration::ZERO), s(2)));
        assert!(within(retry_delay(4, s(1), s(60), Duration::ZERO), s(8)));
        assert!(within(retry_delay(40, s(1), s(60), Duration::ZERO), s(60)));
    }

    #[test]
    fn a_failure_record_backs_off_until_cleared_or_ended() {
        let refused = FetchError::Refused {
            errcode: 45009,
            errmsg: "quota".into(),
        };
        let mut failures = Failures::default();
        assert!(!failures.end_now(), "nothing to end before a failure");
        let delay = failures.record(&refused, s(1), s(60));
        assert_eq!(delay, s(600), "45009's floor");
        assert_eq!(failures.count(), 1);
        assert!(failures
            .retry_at()
            .is_some_and(|at| at > Instant::now() + s(500)));
        assert!(failures.end_now());
        assert!(failures.retry_at().is_some_and(|at| at <= Instant::now()));
        assert_eq!(failures.last().map(FetchError::errcode), Some(45009));
        failures.clear();
        assert_eq!(
            (
                failures.count(),
                failures.retry_at(),
                failures.last().is_none()
            ),
            (0, None, true)
        );
    }

    #[test]
    fn a_repeated_ticket_keeps_its_first_expiry() {
        let t = Instant::now();
        // Fetched again 1000 s after it was first seen: WeChat says 7200.
        let first = t + s(7200);
        let said = t + s(1000) + s(7200);
        assert_eq!(first_sight(said, [first]), first);
        assert_eq!(first_sight(said, []), said);
        // Another replica saved it even earlier.
        assert_eq!(first_sight(said, [first, t + s(7000)]), t + s(7000));
    }

    #[test]
    fn a_new_value_is_renewed_lead_ahead() {
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

    #[test]
    fn the_errcode_floor_wins_over_a_short_backoff() {
        assert_eq!(retry_delay(1, s(1), s(60), s(600)), s(600));
    }
}
