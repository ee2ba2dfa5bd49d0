//! The fake's JS-SDK tickets, by WeChat's rule: asking again while a ticket
//! lives returns the *same* ticket, with the full `expires_in` again; a new
//! ticket only once it has ended. Pure logic over an explicit `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every ticket issued, by app and kind.
pub(super) struct Tickets {
    /// How long a ticket lives (and the `expires_in` every answer reports).
    lifetime: Duration,
    /// The live ticket of each (appid, kind) and when it ends.
    live: HashMap<(String, &'static str), (String, Instant)>,
    /// Every ticket issued, oldest first, with its kind.
    issued: Vec<(&'static str, String)>,
}

impl Tickets {
    pub fn new(lifetime: Duration) -> Tickets {
        Tickets {
            lifetime,
            live: HashMap::new(),
            issued: Vec::new(),
        }
    }

    /// The live ticket of `kind` for `appid`, issued now if none lives; and
    /// the `expires_in` WeChat reports (always the full lifetime).
    pub fn grant(&mut self, appid: &str, kind: &'static str, now: Instant) -> (String, u64) {
        let key = (appid.to_owned(), kind);
        let ticket = match self.live.get(&key) {
            Some((ticket, ends)) if *ends > now => ticket.clone(),
            _ => {
                let ticket = format!("TICKET-{kind}-{appid}-{:04}", self.issued.len() + 1);
                self.live.insert(key, (ticket.clone(), now + self.lifetime));
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
        self.live
            .values()
            .any(|(t, ends)| t == ticket && *ends > now)
    }
}
