//! JS-SDK tickets (`jsapi`, `wx_card`, WeCom's corp and agent tickets), held
//! like the access_token so a fleet makes one fetch per ticket lifetime.
//!
//! Each app has one [`Holder`] per ticket kind its product offers, with the
//! [credential engine](crate::engine)'s guarantees:
//! - `slot` (an `ArcSwapOption`) holds the ticket; requests read it without
//!   a lock.
//! - `gate` (an async mutex) is held while deciding whether to fetch and for
//!   the whole fetch: N requests that find no ticket cause one fetch.
//! - The fetch runs in a task of its own; a request waits at most
//!   `token_timeout_ms` for it, and a client that leaves does not stop it.
//! - Failures back off by the engine's rules ([`backoff`]); during a
//!   backoff requests get the last error at once.
//! - The fetch goes through the token store and its fleet lease
//!   ([`Shared`]), under the key (appid, `ticket_<kind>`), or
//!   (appid, `ticket_<kind>@parent`) for an account served under a platform
//!   or a suite.
//!
//! What differs ([`admission`]): no fetch at start, only on first demand;
//! renewal ahead of expiry only while the ticket is asked for; and a ticket's
//! life counts from when its value was first seen, since WeChat repeats
//! `expires_in` 7200 for a ticket it issued earlier. A fetch needs the token:
//! [`fetch`] takes it from the app's [`TokenManager`], which also replaces it
//! on a token error. A new token leaves the ticket as it is.

mod admission;
mod fetch;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use crate::config::AppKind;
use crate::engine::backoff;
use crate::engine::fleet::{Obtained, Shared, LEASE, MIN_ADOPT_LIFE};
use crate::engine::{self, Limits, Unanswered};
use crate::store::{unix_ms, Key, Saved, Store, StoreError};
use crate::token::{RefreshError, TokenManager};
use crate::wechat::FetchError;

use self::admission::{Facts, Want};

/// The JS-SDK tickets WeChat issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// mp `jsapi`: signs `wx.config`.
    Jsapi,
    /// mp `wx_card`: signs card pages.
    WxCard,
    /// WeCom's corp ticket: signs `wx.config` for a corp.
    Corp,
    /// WeCom's agent ticket: signs `wx.agentConfig`.
    Agent,
}

impl Kind {
    /// The kinds an app of `kind` has.
    pub fn of(kind: AppKind) -> &'static [Kind] {
        match kind {
            AppKind::Mp => &[Kind::Jsapi, Kind::WxCard],
            AppKind::Wecom => &[Kind::Corp, Kind::Agent],
        }
    }

    /// The name on the status page and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jsapi => "jsapi",
            Kind::WxCard => "wx_card",
            Kind::Corp => "corp",
            Kind::Agent => "agent",
        }
    }

    /// Its kind in the token store.
    fn store_kind(self) -> &'static str {
        match self {
            Kind::Jsapi => "ticket_jsapi",
            Kind::WxCard => "ticket_wx_card",
            Kind::Corp => "ticket_corp",
            Kind::Agent => "ticket_agent",
        }
    }

    /// WeChat's path, and the query before `access_token`.
    fn endpoint(self) -> (&'static str, &'static str) {
        match self {
            Kind::Jsapi => ("/cgi-bin/ticket/getticket", "type=jsapi&"),
            Kind::WxCard => ("/cgi-bin/ticket/getticket", "type=wx_card&"),
            Kind::Corp => ("/cgi-bin/get_jsapi_ticket", ""),
            Kind::Agent => ("/cgi-bin/ticket/get", "type=agent_config&"),
        }
    }
}

/// One ticket as the proxy holds it.
pub struct Ticket {
    /// The ticket itself. Never logged, never shown.
    value: Box<str>,
    /// When it stops working: counted from when this value was first seen.
    expires_at: Instant,
}

impl Ticket {
    /// The ticket, for the answers that hand it out or sign with it.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Life left, zero once expired.
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("expires_in", &self.expires_in())
            .finish_non_exhaustive()
    }
}

/// Why no ticket could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TicketError {
    /// No access_token to fetch it with.
    #[error("no access_token to fetch the ticket with: {0}")]
    Token(RefreshError),
    /// The fetch failed (now or recently, and the backoff has not passed).
    #[error("{}", .0.describe("ticket"))]
    Failed(FetchError),
    /// The fetch did not finish while the request could wait; it goes on.
    #[error("no ticket within {} ms; the fetch goes on", .0.as_millis())]
    StillFetching(Duration),
}

impl TicketError {
    /// The errcode to show clients: WeChat's, or -1 when WeChat gave none.
    pub fn errcode(&self) -> i64 {
        match self {
            TicketError::Token(e) => e.errcode(),
            TicketError::Failed(e) => e.errcode(),
            TicketError::StillFetching(_) => -1,
        }
    }
}

/// What the status page shows of a ticket.
#[derive(Debug, Clone)]
pub struct Status {
    /// Which ticket.
    pub kind: Kind,
    /// Life left on the held ticket, if it is valid.
    pub expires_in: Option<Duration>,
    /// The error of the last fetch, if it failed.
    pub last_error: Option<TicketError>,
    /// Successful fetches since start.
    pub fetches: u64,
}

/// Fetch bookkeeping; never held across an await.
#[derive(Default)]
struct State {
    /// Failed fetches in a row and the backoff they earned.
    failures: backoff::Failures,
    /// When to renew ahead of expiry.
    renew_at: Option<Instant>,
    /// A request asked for the ticket since the renewal task last brought a
    /// new value or failed: only then is the ticket renewed ahead. So a
    /// ticket asked for during its life gets a successor, one nobody asked
    /// for gets none, and failures are retried in the background only while
    /// requests keep asking.
    asked: bool,
    /// A request ever asked for it: the status page lists it.
    ever_asked: bool,
    /// Whether the renewal task runs (it ends when the ticket is unused).
    renewing: bool,
    /// Successful fetches since start.
    fetches: u64,
}

/// One ticket kind of one app: the slot, the single-flight gate and the
/// renewal task.
pub struct Holder {
    /// Which ticket.
    kind: Kind,
    /// The appid and kind it is stored under ([`Key`]).
    stored_as: (Box<str>, Box<str>),
    /// The app's token: fetches need it.
    tokens: Arc<TokenManager>,
    /// The held ticket, read lock-free.
    slot: ArcSwapOption<Ticket>,
    /// Held while deciding and for the whole of a fetch.
    gate: tokio::sync::Mutex<()>,
    /// Backoff, schedule and use; never held across an await.
    state: Mutex<State>,
    /// Tells the renewal task its schedule changed.
    wake: Notify,
    /// Where tickets are shared with earlier runs and other replicas.
    store: Arc<Store>,
    /// Limits for one fetch and the backoff between failed ones.
    limits: Limits,
    /// Flips at shutdown; the renewal task ends then.
    shutdown: watch::Receiver<bool>,
}

/// Every ticket of one app.
pub struct Tickets {
    /// One holder per kind the app's product offers.
    holders: Vec<Arc<Holder>>,
}

impl Tickets {
    /// Holders for every ticket kind of `tokens`' app; nothing is fetched
    /// until asked for.
    pub fn new(
        tokens: Arc<TokenManager>,
        store: Arc<Store>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Tickets {
        let appid = tokens.app().appid.clone();
        Tickets::under(tokens, &appid, None, store, limits, shutdown)
    }

    /// Holders for every ticket kind of the account `appid`, fetched with
    /// `tokens`; one served under a `parent` (a platform's component_appid,
    /// a suite's suite_id) is stored as `ticket_<kind>@parent`, so it never
    /// meets an app's tickets of the same account, nor another parent's.
    pub fn under(
        tokens: Arc<TokenManager>,
        appid: &str,
        parent: Option<&str>,
        store: Arc<Store>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Tickets {
        let holders = Kind::of(tokens.app().kind)
            .iter()
            .map(|&kind| {
                let stored_kind = match parent {
                    Some(parent) => format!("{}@{parent}", kind.store_kind()),
                    None => kind.store_kind().to_owned(),
                };
                Arc::new(Holder {
                    kind,
                    stored_as: (appid.into(), stored_kind.into()),
                    tokens: tokens.clone(),
                    slot: ArcSwapOption::empty(),
                    gate: tokio::sync::Mutex::new(()),
                    state: Mutex::new(State::default()),
                    wake: Notify::new(),
                    store: store.clone(),
                    limits,
                    shutdown: shutdown.clone(),
                })
            })
            .collect();
        Tickets { holders }
    }

    /// No tickets: a platform's or a suite's own (each of its accounts has
    /// tickets of its own, made on first ask).
    pub fn none() -> Tickets {
        Tickets {
            holders: Vec::new(),
        }
    }

    /// The holder of `kind`, if the app's product has that ticket.
    pub fn get(&self, kind: Kind) -> Option<&Arc<Holder>> {
        self.holders.iter().find(|h| h.kind == kind)
    }

    /// The status of every ticket asked for since start.
    pub fn status(&self) -> Vec<Status> {
        self.holders
            .iter()
            .filter(|h| h.lock_state().ever_asked)
            .map(|h| h.status())
            .collect()
    }
}

impl Holder {
    /// A valid ticket: the held one, or one fetched now. Marks the ticket in
    /// use, so it is renewed ahead of expiry from now on.
    pub async fn ticket(self: &Arc<Self>) -> Result<Arc<Ticket>, TicketError> {
        self.asked();
        match self.current() {
            Some(ticket) => Ok(ticket),
            None => self.refresh_detached().await,
        }
    }

    /// What the status page shows.
    pub fn status(&self) -> Status {
        let st = self.lock_state();
        Status {
            kind: self.kind,
            expires_in: self.current().map(|t| t.expires_in()),
            last_error: st.failures.last().cloned().map(TicketError::Failed),
            fetches: st.fetches,
        }
    }

    fn current(&self) -> Option<Arc<Ticket>> {
        let ticket = self.slot.load_full()?;
        (Instant::now() < ticket.expires_at).then_some(ticket)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        crate::engine::lock(&self.state)
    }

    /// Records the demand and starts the renewal task if it is not running.
    fn asked(self: &Arc<Self>) {
        let mut st = self.lock_state();
        st.asked = true;
        st.ever_asked = true;
        if !st.renewing {
            st.renewing = true;
            tokio::spawn(self.clone().renew());
        }
    }

    /// Runs the fetch in a task of its own and waits for it at most
    /// `token_timeout`: the fetch outlives a caller that gives up.
    async fn refresh_detached(self: &Arc<Self>) -> Result<Arc<Ticket>, TicketError> {
        let this = self.clone();
        let work = async move { this.refresh(Want::Demand).await };
        match engine::detached("ticket", self.limits.timeout, work).await {
            Ok(result) => result,
            Err(Unanswered::StillRunning(wait)) => Err(TicketError::StillFetching(wait)),
            Err(Unanswered::Stopped(e)) => Err(TicketError::Failed(e)),
        }
    }

    /// The single-flight refresh: see the module docs.
    async fn refresh(&self, want: Want) -> Result<Arc<Ticket>, TicketError> {
        engine::single_flight(
            &self.gate,
            |now| {
                let facts = {
                    let st = self.lock_state();
                    Facts {
                        valid: self.current().is_some(),
                        retry_at: st.failures.retry_at(),
                        renew_at: st.renew_at,
                    }
                };
                admission::decide(want, &facts, now)
            },
            || self.current(),
            || {
                self.lock_state()
                    .failures
                    .last()
                    .cloned()
                    .map(TicketError::Failed)
            },
            // The ticket rules never decline: only an operator's refresh is.
            TicketError::StillFetching,
            async |_| self.obtain(want).await,
        )
        .await
    }

    /// A ticket from the store if it holds a usable one, else fetched and
    /// saved, one replica fetching for the fleet. Gate held.
    async fn obtain(&self, want: Want) -> Result<Arc<Ticket>, TicketError> {
        let app = self.tokens.app();
        let key = Key {
            appid: &self.stored_as.0,
            kind: &self.stored_as.1,
        };
        let shared = Shared {
            store: &self.store,
            key,
            app: &app.name,
            // The fetch may first wait for a token.
            give_up_at: Instant::now() + self.limits.timeout * 3 + LEASE * 2,
        };
        let held = self.slot.load_full();
        let usable = |saved: &Saved| {
            let left = saved.life_left(SystemTime::now());
            match want {
                Want::Demand => left >= MIN_ADOPT_LIFE,
                // Not the ticket we hold, and not itself due for renewal.
                Want::Ahead => {
                    left > app.refresh_before_expiry
                        && held.as_ref().is_none_or(|t| *t.value != *saved.token)
                }
            }
        };
        let obtained = shared
            .obtain(usable, async |unshared: Option<StoreError>| {
                self.fetch_and_share(key, want, unshared).await
            })
            .await?;
        Ok(match obtained {
            Obtained::Stored(saved) => {
                let left = saved.life_left(SystemTime::now());
                tracing::info!(
                    app = %app.name,
                    ticket = self.kind.as_str(),
                    store = self.store.kind(),
                    expires_in_s = left.as_secs(),
                    "ticket taken from the store"
                );
                self.install(saved.token, Instant::now() + left, false)
            }
            Obtained::Fetched(ticket) => ticket,
        })
    }

    /// Fetches from WeChat; keeps the first expiry seen for the value (held
    /// or stored); saves it unless the store is unreachable (`unshared`).
    async fn fetch_and_share(
        &self,
        key: Key<'_>,
        want: Want,
        unshared: Option<StoreError>,
    ) -> Result<Arc<Ticket>, TicketError> {
        let app = self.tokens.app();
        if let Some(e) = &unshared {
            tracing::warn!(app = %app.name, ticket = self.kind.as_str(), error = %e,
                "token store unreachable; fetching the ticket without the fleet lock");
        }
        let sent_at = Instant::now();
        let issued = match fetch::fetch(&self.tokens, self.kind, self.limits.timeout).await {
            Ok(issued) => issued,
            Err(e) => return Err(self.failed(want, e)),
        };
        let now = Instant::now();
        let mut seen_before = Vec::new();
        if let Some(held) = self.slot.load_full().filter(|t| *t.value == *issued.value) {
            seen_before.push(held.expires_at);
        }
        if unshared.is_none() {
            // Another replica may have seen this value first (a store that
            // cannot be read now is no reason to fail a good fetch).
            if let Ok(Some(saved)) = self.store.load(key).await {
                if saved.token == issued.value {
                    seen_before.push(now + saved.life_left(SystemTime::now()));
                }
            }
        }
        let repeated = !seen_before.is_empty();
        let expires_at = admission::expiry(sent_at + issued.expires_in, seen_before);
        let ticket = self.install(issued.value, expires_at, repeated);
        if want == Want::Ahead && !repeated {
            // A successor: renewed again only if asked for during its life.
            self.lock_state().asked = false;
        }
        self.lock_state().fetches += 1;
        tracing::info!(
            app = %app.name,
            ticket = self.kind.as_str(),
            reason = want.as_str(),
            repeated,
            expires_in_s = ticket.expires_in().as_secs(),
            "ticket fetched"
        );
        if unshared.is_none() && !matches!(*self.store, Store::Memory) {
            let saved = Saved {
                appid: key.appid.to_owned(),
                api: key.kind.to_owned(),
                token: ticket.value.to_string(),
                expires_at_ms: unix_ms(SystemTime::now() + ticket.expires_in()),
            };
            if let Err(e) = self.store.save(key, saved).await {
                tracing::warn!(app = %app.name, ticket = self.kind.as_str(), store = self.store.kind(), error = %e, "cannot save the ticket");
            }
        }
        Ok(ticket)
    }

    /// Records a failed fetch: a WeChat failure backs off by the token
    /// engine's rules; a missing token is the token engine's to retry.
    fn failed(&self, want: Want, e: TicketError) -> TicketError {
        let app = &self.tokens.app().name;
        if let TicketError::Failed(fetch) = &e {
            let mut st = self.lock_state();
            let delay = st
                .failures
                .record(fetch, self.limits.retry_min, self.limits.retry_max);
            st.asked = false;
            drop(st);
            self.wake.notify_one();
            tracing::warn!(app = %app, ticket = self.kind.as_str(), reason = want.as_str(),
                error = %e, retry_in_ms = delay.as_millis() as u64, "ticket fetch failed");
        } else {
            tracing::warn!(app = %app, ticket = self.kind.as_str(), reason = want.as_str(),
                error = %e, "ticket fetch failed");
        }
        e
    }

    /// Puts a ticket in the slot, schedules its renewal and clears the
    /// failure record.
    fn install(&self, value: String, expires_at: Instant, repeated: bool) -> Arc<Ticket> {
        let now = Instant::now();
        let ticket = Arc::new(Ticket {
            value: value.into_boxed_str(),
            expires_at,
        });
        self.slot.store(Some(ticket.clone()));
        let mut st = self.lock_state();
        st.renew_at = Some(admission::renew_at(
            now,
            expires_at,
            self.tokens.app().refresh_before_expiry,
            repeated,
        ));
        st.failures.clear();
        drop(st);
        self.wake.notify_one();
        ticket
    }

    /// Renews ahead of expiry and retries after failures while the ticket is
    /// in use; ends when it is not (the next demand starts it again) or at
    /// shutdown.
    async fn renew(self: Arc<Self>) {
        engine::renew(
            &self.wake,
            self.shutdown.clone(),
            || {
                let mut st = self.lock_state();
                if !st.asked {
                    st.renewing = false;
                    return engine::Next::Stop;
                }
                match st.failures.retry_at().or(st.renew_at) {
                    Some(at) => engine::Next::At(at, Want::Ahead),
                    // Nothing scheduled yet: the first fetch is under way.
                    None => engine::Next::Idle,
                }
            },
            // Failures are logged and scheduled inside.
            |want| {
                let this = &self;
                async move { drop(this.refresh(want).await) }
            },
        )
        .await
    }
}
