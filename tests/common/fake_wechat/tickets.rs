//! The fake's JS-SDK tickets, by WeChat's rule: asking again while a ticket
//! lives returns the *same* ticket, with the full `expires_in` again; a new
//! ticket only once it has ended, or (with `renew_within`) once it has less
//! than that left, the old one still working until its end. Pure logic over
//! an explicit `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every ticket issued, by app and kind.
pub(super) struct Tickets {
    /// How long a ticket lives (and the `expires_in` every answer reports).
    lifetime: Duration,
    /// A ticket with less than this left is replaced when asked for.
    renew_within: Duration,
    /// The live ticket of each (appid, kind) and when it ends.
    live: HashMap<(String, &'static str), (String, Instant)>,
    /// Every ticket issued, oldest first, with its kind.
    issued: Vec<(&'static str, String)>,
    /// When each ticket issued ends.
    ends: HashMap<String, Instant>,
}

impl Tickets {
    pub fn new(lifetime: Duration, renew_within: Duration) -> Tickets {
        Tickets {
            lifetime,
            renew_within,
            live: HashMap::new(),
            issued: Vec::new(),
            ends: HashMap::new(),
        }
    }

    /// The live ticket of `kind` for `appid`, issued now if none lives; and
    /// the `expires_in` WeChat reports (always the full lifetime).
    pub fn grant(&mut self, appid: &str, kind: &'static str, now: Instant) -> (String, u64) {
        let key = (appid.to_owned(), kind);
        let ticket = match self.live.get(&key) {
            Some((ticket, ends)) if ends.saturating_duration_since(now) > self.renew_within => {
                ticket.clone()
            }
            _ => {
                let ticket = format!("TICKET-{kind}-{appid}-{:04}", self.issued.len() + 1);
                self.live.insert(key, (ticket.clone(), now + self.lifetime));
                self.ends.insert(ticket.clone(), now + self.lifetime);
                self.issued.push((kind, ticket.clone()));
                ticket
            }
        };
        (ticket, self.lifetime.as_secs().max(1))
    }

    /// Every ticket of `kind` issued so far, oldest first.
    pub fn issued(&self, kind: &str) -> Vec<String> {
        self.issued
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Whether `ticket` is live now.
    pub fn is_live(&self, ticket: &str, now: Instant) -> bool {
        !self.life_left(ticket, now).is_zero()
    }

    /// How long `ticket` works from `now`; zero once it has ended.
    pub fn life_left(&self, ticket: &str, now: Instant) -> Duration {
        self.ends
            .get(ticket)
            .map_or(Duration::ZERO, |ends| ends.saturating_duration_since(now))
    }
}
