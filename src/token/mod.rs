//! Each app's access_token: the slot requests read, and the one place that
//! fetches.
//!
//! Who holds what:
//! - `slot` (an `ArcSwapOption`) holds the current token. Requests read it
//!   without a lock; only a fetch (or a token taken from the store) replaces
//!   it. A request that sees WeChat reject the token marks it rejected: the
//!   status page and readiness say so until a new token arrives, or WeChat
//!   accepts this one on another call. Requests
//!   keep sending it meanwhile (one caller's API answering 40001 for its own
//!   reasons must not stall everyone else's); each that meets the rejection
//!   joins the single flight below.
//! - `gate` (an async mutex) is held while deciding whether to fetch and for
//!   the whole of a fetch. Whoever wants a new token takes it, then looks
//!   again ([`admission::decide`], a pure function of the reason, a snapshot
//!   of `state` and the time): if the token it wanted replaced is already
//!   gone, it takes the new one and leaves. So N requests that meet the same
//!   rejected token cause one fetch (single-flight).
//! - Fetches run in a task of their own, never in a request's future: a
//!   client that disconnects stops waiting, but the fetch it started finishes
//!   and its token is used by everyone after. A request waits at most
//!   `token_timeout_ms`, whoever holds the fleet lease and whatever the flood
//!   guard (below) makes the fetch wait for, and then gets a 503; the fetch
//!   goes on.
//! - `state` (a plain mutex, never held across an await) records failures,
//!   backoff, schedule and history, so the status page never waits behind a
//!   fetch.
//!
//! The rules ([`admission`]): during a fetch backoff requests get the last
//! error at once; token errors cause at most one fetch per
//! `min_refresh_interval_ms`, and requests that meet one inside that window
//! wait for the next allowed fetch rather than fail; the admin refresh makes
//! at most one fetch per `min_refresh_interval_ms`, failed or not, and goes
//! through a fetch backoff once.
//!
//! The quota guard: a token fetched because API P rejected the one before
//! remembers P. If P rejects it too before ever accepting it, P refuses every
//! token for reasons of its own: no fetch, the token is not marked rejected,
//! and the caller gets WeChat's answer. A fight (the old token rejected with
//! life left) is counted only once P accepts the new token.
//!
//! The files: [`fetch`] talks to WeChat (the stable API's `force_refresh`
//! quirk, secret rotation); [`fleet`] shares tokens through the store and,
//! with Redis, a fleet-wide lease so one replica fetches for all (the
//! protocol is the engine's, [`crate::engine::fleet`]);
//! [`crate::engine::backoff`] says when to try again.
//!
//! The same manager holds a third-party platform's component token and each
//! authorizer's token ([`crate::platform`]): what differs is only where the
//! token comes from, a [`Grantor`], and its key in the store.

mod admission;
mod fetch;
mod fleet;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{watch, Notify};

use crate::config::{AppConfig, AppKind, Environment, Secret, UpstreamSettings};
use crate::engine::{self, backoff, Limits, Unanswered};
use crate::forward::upstream::HttpClient;
use crate::store::{Key, Store};
use crate::wechat::{FetchError, Grant};

use self::admission::{Facts, Held};

/// One access_token as the proxy holds it.
pub struct Token {
    /// The token itself. Never logged, never shown.
    value: Box<str>,
    /// When it stops working, by this process's clock (measured from when the
    /// fetch was sent, so it errs early).
    expires_at: Instant,
    /// Increases with every new token value; lets a request that saw a token
    /// error tell whether the token it used has already been replaced.
    generation: u64,
    /// WeChat rejected it: shown on the status page, fails readiness.
    rejected: AtomicBool,
    /// The API path whose rejection of the previous token caused this
    /// token's fetch, if one did.
    fetched_for: Option<Box<str>>,
    /// That API accepted this token: the one before had died (a fight, if
    /// it died young), and a later rejection there means this one died too.
    /// Until then, a rejection there means the API refuses every token for
    /// its own reasons, and fetching again would only burn the quota.
    accepted_by_trigger: AtomicBool,
    /// The API it was fetched for was found to refuse every token, and the
    /// log said so.
    refusal_told: AtomicBool,
}

impl Token {
    /// The token, for the one place that writes it into an upstream URL.
    pub fn value(&self) -> &str {
        &self.value
    }

    fn is_valid_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    fn is_rejected(&self) -> bool {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("rejected", &self.is_rejected())
            .finish_non_exhaustive()
    }
}

/// What asked for a fetch; decides which shortcuts and limits apply, and
/// labels logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first fetch, or a retry before any token was held.
    Startup,
    /// Renewal ahead of expiry, or a retry after a failed renewal.
    Ahead,
    /// A request found no valid token.
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

/// Why no (new) token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// A fetch failed (now or recently, and the backoff has not passed).
    #[error("{0}")]
    Failed(#[from] FetchError),
    /// The fetch did not finish while the request could wait; it goes on, and
    /// later requests use its token.
    #[error("no token within {} ms; the fetch goes on", .0.as_millis())]
    StillFetching(Duration),
    /// WeChat handed back the very token it had just rejected.
    #[error("WeChat returned the rejected token again")]
    NotRenewed,
    /// The API rejected a token fetched because it rejected the one before:
    /// it refuses every token for reasons of its own, so no fetch is made
    /// and the token keeps serving every other call.
    #[error("this API rejects every token; the token serves other calls")]
    RejectedByOneApi,
    /// An operator's refresh was not made: one was made too recently, or an
    /// operator already cut the current backoff short.
    #[error("no refresh made; the next may be made in {} s", .0.as_secs().max(1))]
    Declined(Duration),
}

impl RefreshError {
    /// The errcode to show clients: WeChat's, or -1 when WeChat gave none.
    pub fn errcode(&self) -> i64 {
        match self {
            RefreshError::Failed(f) => f.errcode(),
            _ => -1,
        }
    }
}

/// What the admin refresh endpoint did.
#[derive(Debug)]
pub enum AdminRefresh {
    /// A new token was fetched.
    Fetched,
    /// A fetch succeeded this long ago; the held token stands.
    TooSoon {
        /// Since the last successful fetch.
        since: Duration,
        /// Until the next admin refresh may fetch.
        retry_in: Duration,
    },
    /// No fetch was made: an admin refresh was made too recently, or an
    /// operator already cut the current backoff short.
    Declined {
        /// Until the next admin refresh may fetch.
        retry_in: Duration,
        /// The error of the last fetch, if it failed.
        last_error: Option<FetchError>,
    },
}

/// What the status page and readiness probe show of an app's token.
#[derive(Debug, Clone)]
pub struct Status {
    /// Life left on the held token, if it is valid and not rejected.
    pub expires_in: Option<Duration>,
    /// WeChat rejected the held token and no new one has come yet.
    pub rejected: bool,
    /// When the last fetch succeeded.
    pub last_refresh: Option<SystemTime>,
    /// The error of the last fetch, if it failed.
    pub last_error: Option<FetchError>,
    /// Fetch failures in a row.
    pub failures: u32,
    /// Successful fetches since start.
    pub fetches: u64,
    /// Requests sent to WeChat's token endpoint today (China Standard Time,
    /// when WeChat's daily quota starts over), failed ones included.
    pub fetches_today: u64,
    /// Tokens rejected well within their life: another system fetches
    /// tokens for the same appid.
    pub fights: u64,
    /// When the last such rejection was seen.
    pub last_fight: Option<SystemTime>,
}

impl Status {
    /// `valid`, `rejected` or `missing` (none yet, or expired).
    pub fn state(&self) -> &'static str {
        match (self.expires_in, self.rejected) {
            (Some(_), _) => "valid",
            (None, true) => "rejected",
            (None, false) => "missing",
        }
    }
}

/// Fetch bookkeeping; see the module docs for who may hold it when.
#[derive(Default)]
struct State {
    /// Failed fetches in a row and the backoff they earned.
    failures: backoff::Failures,
    /// When to renew ahead of expiry.
    renew_at: Option<Instant>,
    /// Last successful fetch, for the admin refresh's rate limit.
    last_success: Option<Instant>,
    /// Last fetch that replaced a rejected token, for
    /// `min_refresh_interval`.
    last_token_error_fetch: Option<Instant>,
    /// Last `force_refresh`, for WeChat's 30 s rule.
    last_force: Option<Instant>,
    /// Last success, for the status page.
    last_refresh: Option<SystemTime>,
    /// Successes since start.
    fetches: u64,
    /// The generation the next new token gets.
    next_generation: u64,
    /// Token fights seen since start.
    fights: u64,
    /// When the last one was seen.
    last_fight: Option<SystemTime>,
    /// When the held token was put in the slot: a use after this is a use
    /// within its life.
    installed_at: Option<Instant>,
    /// Last admin refresh that fetched, successful or not.
    last_admin_fetch: Option<Instant>,
    /// Token endpoint requests on [`State::fetch_day`].
    fetches_today: u64,
    /// The day (China Standard Time) `fetches_today` counts.
    fetch_day: u64,
    /// During a token-error fetch: the API path that rejected the token,
    /// given to the token that replaces it.
    trigger: Option<Box<str>>,
    /// During a token-error fetch: the life the rejected token had left, if
    /// that makes its rejection look like a fight.
    fight_candidate: Option<Duration>,
    /// A token fetched to replace one rejected with life left: the fight is
    /// counted once the API that rejected the old one accepts the new one
    /// (generation, life left). An API that rejects every token never does,
    /// and is no fight.
    pending_fight: Option<(u64, Duration)>,
}

/// Observes every fetch's outcome (metrics hook in here).
pub trait RefreshObserver: Send + Sync {
    /// Called once per fetch attempt with its reason and whether it worked.
    fn refreshed(&self, app: &str, reason: Reason, ok: bool);
    /// Called when another system appears to fetch this app's tokens.
    fn fight(&self, app: &str);
    /// Called with the error of every failed fetch (the quota watch acts on
    /// 45009).
    fn failed(&self, _app: &str, _error: &FetchError) {}
}

/// How a refresh ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The held token was good enough; nothing fetched.
    Held,
    /// Fetched from WeChat.
    Fetched,
    /// Taken from the store: an earlier run or another replica fetched it.
    Store,
}

/// Where a token other than an app's own comes from (a platform's component
/// token, an authorizer's token): the manager keeps its slot, single flight,
/// backoff, store and fleet lease, and asks this for the fetch itself.
pub(crate) trait Grantor: Send + Sync {
    /// The appid the token is for (the store's key, logs).
    fn appid(&self) -> &str;
    /// Its kind in the store ([`Key::kind`]).
    fn store_kind(&self) -> &str;
    /// The name in logs and errors (`platform` or `platform/appid`).
    fn label(&self) -> &str;
    /// One fetch from WeChat. `secret` is the manager's current secret (the
    /// component_appsecret, re-read on rotation).
    fn grant<'a>(
        &'a self,
        client: &'a HttpClient,
        secret: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, FetchError>> + Send + 'a>>;
}

/// One app's token: the slot, the single-flight gate and the refresher.
pub struct TokenManager {
    /// The app's validated config (name, appid, API, lead time).
    app: Arc<AppConfig>,
    /// The current secret; swapped when a rotated secret file is re-read.
    secret: ArcSwap<Secret>,
    /// The current token, read lock-free on every request.
    slot: ArcSwapOption<Token>,
    /// Held while deciding and for the whole of a fetch: the single-flight
    /// gate.
    gate: tokio::sync::Mutex<()>,
    /// Backoff, schedule and history; never held across an await.
    state: Mutex<State>,
    /// Tells the refresher its schedule changed.
    wake: Notify,
    /// The generation of every token a fetch brought, once it is in the slot
    /// and saved: callers waiting for a new token take it then, without
    /// queueing for the gate behind every other caller.
    installed: watch::Sender<u64>,
    /// Upstream connection pool shared with the proxy.
    client: HttpClient,
    /// Limits for one fetch and the backoff between failed ones.
    limits: Limits,
    /// Told about every fetch.
    observer: Option<Arc<dyn RefreshObserver>>,
    /// Where a rotated secret is re-read from.
    env: Arc<dyn Environment + Send + Sync>,
    /// Where tokens are shared with earlier runs or other replicas; only
    /// used with `gate` held.
    store: Arc<Store>,
    /// Fetches the token when it is not the app's own; `None` for apps.
    grantor: Option<Arc<dyn Grantor>>,
}

impl TokenManager {
    /// A manager holding no token yet; [`TokenManager::run_refresher`] fetches
    /// the first.
    pub fn new(
        app: Arc<AppConfig>,
        upstream: &UpstreamSettings,
        client: HttpClient,
        observer: Option<Arc<dyn RefreshObserver>>,
        env: Arc<dyn Environment + Send + Sync>,
    ) -> TokenManager {
        TokenManager {
            secret: ArcSwap::from_pointee(app.secret.clone()),
            app,
            slot: ArcSwapOption::empty(),
            gate: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                next_generation: 1,
                ..State::default()
            }),
            wake: Notify::new(),
            installed: watch::Sender::new(0),
            client,
            limits: Limits::of(upstream),
            observer,
            env,
            store: Arc::new(Store::Memory),
            grantor: None,
        }
    }

    /// Fetches through `grantor` instead of the app's token endpoint.
    pub(crate) fn with_grantor(mut self, grantor: Arc<dyn Grantor>) -> TokenManager {
        self.grantor = Some(grantor);
        self
    }

    /// The name in logs and errors: the app's, or the grantor's.
    pub(crate) fn label(&self) -> &str {
        match &self.grantor {
            Some(g) => g.label(),
            None => &self.app.name,
        }
    }

    /// The token's key in the store.
    fn key(&self) -> Key<'_> {
        match &self.grantor {
            Some(g) => Key {
                appid: g.appid(),
                kind: g.store_kind(),
            },
            None => Key::token(&self.app),
        }
    }

    /// Uses `store` to take saved tokens and save fetched ones (memory only
    /// without this).
    pub fn with_store(mut self, store: Arc<Store>) -> TokenManager {
        self.store = store;
        self
    }

    /// The app this token belongs to.
    pub fn app(&self) -> &AppConfig {
        &self.app
    }

    /// The upstream connection pool of the app's egress route, for the other
    /// calls made with this app's credentials (tickets, quota).
    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The current secret, for the one WeChat call that takes it instead of
    /// a token (`clear_quota/v2`).
    pub(crate) fn secret(&self) -> Arc<Secret> {
        self.secret.load_full()
    }

    /// Ends a fetch backoff now (its cause was just fixed: a new secret, a
    /// reset quota): the refresher fetches at once, and requests no longer
    /// get the last error. False when the last fetch did not fail.
    pub fn end_backoff(&self) -> bool {
        if !self.lock_state().failures.end_now() {
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// The held token if it has not expired. Lock-free: this is the hot path.
    pub fn current(&self) -> Option<Arc<Token>> {
        let token = self.slot.load_full()?;
        token.is_valid_at(Instant::now()).then_some(token)
    }

    /// A valid token: the held one, or one fetched now. During a fetch
    /// backoff this fails at once with the last error.
    pub async fn token(self: &Arc<Self>) -> Result<Arc<Token>, RefreshError> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.refresh_detached(Reason::OnDemand, None, None).await,
        }
    }

    /// Replaces `rejected` (the token WeChat just refused on a call to
    /// `path`), single-flight. Marks it rejected first, for the status page
    /// and readiness; unless `path` is the API whose rejection of the token
    /// before caused this one's fetch, and it has never accepted this one:
    /// that API refuses every token, and a fetch would only burn the quota.
    pub async fn replace(
        self: &Arc<Self>,
        rejected: &Arc<Token>,
        path: &str,
    ) -> Result<Arc<Token>, RefreshError> {
        if rejected.fetched_for.as_deref() == Some(path)
            && !rejected.accepted_by_trigger.load(Ordering::Relaxed)
        {
            // Once per token: a looping client would flood the log.
            if !rejected.refusal_told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    app = %self.label(),
                    path,
                    "WeChat rejected a token fetched because this API rejected the one before: the API refuses \
                     every token for reasons of its own (permissions, the account's kind); no new token is fetched for it"
                );
            }
            return Err(RefreshError::RejectedByOneApi);
        }
        rejected.rejected.store(true, Ordering::Relaxed);
        self.refresh_detached(Reason::TokenError, Some(rejected.clone()), Some(path))
            .await
    }

    /// WeChat answered a call to `path` made with `token` without a token
    /// error: a rejection seen on another call was about that call, not the
    /// token. When `path` is the API whose rejection caused this token's
    /// fetch, the token before had died there: a fight suspected then is
    /// real.
    pub fn accepted(&self, token: &Token, path: &str) {
        // Loads first: the common case stays plain reads.
        if token.is_rejected() {
            token.rejected.store(false, Ordering::Relaxed);
        }
        if token.fetched_for.as_deref() == Some(path)
            && !token.accepted_by_trigger.load(Ordering::Relaxed)
            && !token.accepted_by_trigger.swap(true, Ordering::Relaxed)
        {
            self.confirm_fight(token.generation);
        }
    }

    /// Fetches a new token now for the admin endpoint: at most once per
    /// `min_refresh_interval`, counting any successful fetch and every admin
    /// fetch, failed or not; through a fetch backoff only once.
    pub async fn refresh_by_admin(self: &Arc<Self>) -> Result<AdminRefresh, RefreshError> {
        let this = self.clone();
        let flight = tokio::spawn(async move { this.refresh(Reason::Admin, None, None).await });
        match flight.await {
            Ok(Ok((_, Source::Held))) => {
                let since = self
                    .lock_state()
                    .last_success
                    .map_or(Duration::ZERO, |t| t.elapsed());
                Ok(AdminRefresh::TooSoon {
                    since,
                    retry_in: self.app.min_refresh_interval.saturating_sub(since),
                })
            }
            Ok(Ok(_)) => Ok(AdminRefresh::Fetched),
            Ok(Err(RefreshError::Declined(retry_in))) => Ok(AdminRefresh::Declined {
                retry_in,
                last_error: self.lock_state().failures.last().cloned(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RefreshError::Failed(engine::stopped("token"))),
        }
    }

    /// What the status page shows.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let held = self.slot.load_full();
        let st = self.lock_state();
        Status {
            expires_in: held
                .as_ref()
                .filter(|t| t.is_valid_at(now) && !t.is_rejected())
                .map(|t| t.expires_at - now),
            rejected: held.as_ref().is_some_and(|t| t.is_rejected()),
            last_refresh: st.last_refresh,
            last_error: st.failures.last().cloned(),
            failures: st.failures.count(),
            fetches: st.fetches,
            fetches_today: if st.fetch_day == china_day(SystemTime::now()) {
                st.fetches_today
            } else {
                0
            },
            fights: st.fights,
            last_fight: st.last_fight,
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        engine::lock(&self.state)
    }

    /// What the admission rules need, read now.
    fn facts(&self, now: Instant) -> Facts {
        let held = self.slot.load().as_ref().map(|t| Held {
            generation: t.generation,
            valid: t.is_valid_at(now),
            rejected: t.is_rejected(),
        });
        let st = self.lock_state();
        Facts {
            held,
            // A backoff only stands with the error it answers.
            retry_at: st.failures.retry_at(),
            renew_at: st.renew_at,
            last_token_error_fetch: st.last_token_error_fetch,
            last_success: st.last_success,
            last_admin_fetch: st.last_admin_fetch,
            backoff_cut_by_operator: st.failures.cut_by_operator(),
            min_refresh_interval: self.app.min_refresh_interval,
        }
    }

    /// Runs the refresh in a task of its own and waits for it at most
    /// `token_timeout`, whoever fetches and whatever the flood guard makes
    /// the task wait for: the fetch outlives a caller that disconnects or
    /// gives up.
    async fn refresh_detached(
        self: &Arc<Self>,
        reason: Reason,
        rejected: Option<Arc<Token>>,
        path: Option<&str>,
    ) -> Result<Arc<Token>, RefreshError> {
        let replaced = rejected.as_ref().map(|t| t.generation);
        let mut installed = self.installed.subscribe();
        let this = self.clone();
        let path: Option<Box<str>> = path.map(Into::into);
        let work = async move {
            this.refresh(reason, rejected.as_deref(), path.as_deref())
                .await
        };
        let answer = engine::detached("token", self.limits.timeout, work);
        // Whoever's fetch brings a new token (this caller's, another's, the
        // refresher's), the caller takes it then rather than queue for the
        // gate behind every other caller.
        let arrived = async {
            loop {
                if installed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if let Some(token) = self.current() {
                    if Some(token.generation) != replaced && !token.is_rejected() {
                        return token;
                    }
                }
            }
        };
        tokio::select! {
            answer = answer => match answer {
                Ok(result) => result.map(|(token, _)| token),
                Err(Unanswered::StillRunning(wait)) => Err(RefreshError::StillFetching(wait)),
                Err(Unanswered::Stopped(e)) => Err(RefreshError::Failed(e)),
            },
            token = arrived => Ok(token),
        }
    }

    /// The single-flight refresh: see the module docs.
    /// `path` is the API that rejected `rejected` (token errors only).
    async fn refresh(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
        path: Option<&str>,
    ) -> Result<(Arc<Token>, Source), RefreshError> {
        let generation = rejected.map(|t| t.generation);
        engine::single_flight(
            &self.gate,
            |now| admission::decide(reason, generation, &self.facts(now), now),
            || self.current().map(|token| (token, Source::Held)),
            || {
                self.lock_state()
                    .failures
                    .last()
                    .cloned()
                    .map(RefreshError::Failed)
            },
            RefreshError::Declined,
            async |now| {
                self.before_fetch(reason, rejected, path, now);
                let outcome = self.obtain(reason, rejected).await;
                {
                    let mut st = self.lock_state();
                    st.trigger = None;
                    st.fight_candidate = None;
                }
                // Told once the token is also saved for the fleet.
                if let Ok((token, _)) = &outcome {
                    self.installed.send_replace(token.generation);
                }
                outcome
            },
        )
        .await
    }

    /// What a fetch about to be made for `reason` leaves in the state (gate
    /// held): a token error's time, API and fight suspicion; an admin
    /// fetch's time, and whether it went through a backoff.
    fn before_fetch(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
        path: Option<&str>,
        now: Instant,
    ) {
        let mut st = self.lock_state();
        let in_backoff = st.failures.retry_at().is_some_and(|at| now < at);
        if reason == Reason::TokenError {
            st.last_token_error_fetch = Some(now);
            st.trigger = path.map(Into::into);
            let mp = self.app.kind == AppKind::Mp;
            st.fight_candidate = rejected
                .map(|t| t.expires_at.saturating_duration_since(now))
                .filter(|&life_left| admission::is_fight(mp, life_left, false));
        }
        if reason == Reason::Admin {
            st.last_admin_fetch = Some(now);
            if in_backoff {
                st.failures.cut_by_operator_now();
            }
        }
    }

    /// The API that rejected the token before accepted the token of
    /// `generation`: if that was fetched to replace a token rejected well
    /// within its life, that was almost always another system fetching
    /// tokens for the same appid. Say so. (Counted only now: an API that
    /// rejects every token, the new one too, is no fight.)
    fn confirm_fight(&self, generation: u64) {
        let life_left = {
            let mut st = self.lock_state();
            match st.pending_fight {
                Some((g, life_left)) if g == generation => {
                    st.pending_fight = None;
                    st.fights += 1;
                    st.last_fight = Some(SystemTime::now());
                    life_left
                }
                _ => return,
            }
        };
        // Counted before it is logged: whoever reads the line finds it counted.
        if let Some(observer) = &self.observer {
            observer.fight(&self.app.name);
        }
        if self.grantor.is_some() {
            // A platform's token: no stable token API to move to.
            tracing::warn!(
                app = %self.label(),
                appid = %self.key().appid,
                life_left_s = life_left.as_secs(),
                "WeChat rejected a token with life left: another system is probably fetching this platform's tokens \
                 for this appid (api_component_token, api_authorizer_token). Route that system through this proxy: \
                 it answers those calls with placeholders"
            );
        } else {
            tracing::warn!(
                app = %self.label(),
                appid = %self.key().appid,
                life_left_s = life_left.as_secs(),
                "WeChat rejected a token with life left: another system is probably fetching tokens for this appid \
                 (each classic /cgi-bin/token call kills the previous token; a stable_token force_refresh kills it at once). \
                 Route that system through this proxy, or move every system to the stable token API (token_api = \"stable\")"
            );
        }
    }

    /// Counts a request to WeChat's token endpoint against today's quota.
    fn count_fetch(&self) {
        let today = china_day(SystemTime::now());
        let mut st = self.lock_state();
        if st.fetch_day != today {
            st.fetch_day = today;
            st.fetches_today = 0;
        }
        st.fetches_today += 1;
    }

    /// Puts a token (`fetched`, or taken from the store) in the slot,
    /// schedules its renewal and clears the failure record.
    fn install(
        &self,
        value: String,
        expires_at: Instant,
        renew_at: Instant,
        fetched: bool,
    ) -> Arc<Token> {
        let mut st = self.lock_state();
        let held = self.slot.load();
        // WeChat may hand back the token we hold (the stable API does until
        // its last minutes): same generation, and still rejected if it was.
        let (generation, rejected) = match held.as_ref() {
            Some(held) if *held.value == *value => (held.generation, held.is_rejected()),
            _ => {
                st.next_generation += 1;
                (st.next_generation - 1, false)
            }
        };
        let new = held.as_ref().is_none_or(|h| h.generation != generation);
        // A fight is suspected only against a token another system did not
        // hand this replica (the fleet's own replacement is no fight).
        let candidate = st.fight_candidate.take().filter(|_| fetched && new);
        if let Some(life_left) = candidate {
            st.pending_fight = Some((generation, life_left));
        }
        let token = Arc::new(Token {
            value: value.into_boxed_str(),
            expires_at,
            generation,
            rejected: AtomicBool::new(rejected),
            fetched_for: st.trigger.take(),
            accepted_by_trigger: AtomicBool::new(false),
            refusal_told: AtomicBool::new(false),
        });
        self.slot.store(Some(token.clone()));
        st.renew_at = Some(renew_at);
        st.installed_at = Some(Instant::now());
        st.failures.clear();
        st.last_refresh = Some(SystemTime::now());
        drop(st);
        self.wake.notify_one();
        token
    }

    /// Records a failed fetch and sets the backoff; returns the delay.
    fn record_failure(&self, e: &FetchError) -> Duration {
        let delay =
            self.lock_state()
                .failures
                .record(e, self.limits.retry_min, self.limits.retry_max);
        self.wake.notify_one();
        delay
    }

    fn report(&self, reason: Reason, failure: Option<(&FetchError, Duration)>) {
        let app = self.label();
        match failure {
            None => tracing::info!(
                app,
                reason = reason.as_str(),
                result = "ok",
                "token refreshed"
            ),
            Some((e, retry_in)) => tracing::warn!(
                app,
                reason = reason.as_str(),
                result = "error",
                error = %e,
                retry_in_ms = retry_in.as_millis() as u64,
                "token refresh failed"
            ),
        }
        if let Some(observer) = &self.observer {
            observer.refreshed(app, reason, failure.is_none());
            if let Some((e, _)) = failure {
                observer.failed(app, e);
            }
        }
    }

    /// Fetches at start, renews ahead of expiry, retries after failures;
    /// returns when `shutdown` flips.
    pub async fn run_refresher(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        engine::renew(
            &self.wake,
            shutdown,
            || {
                let (at, reason) = self.next_background_fetch();
                engine::Next::At(at, reason)
            },
            // Failures are logged and scheduled inside.
            |reason| {
                let this = &self;
                async move { drop(this.refresh(reason, None, None).await) }
            },
        )
        .await
    }

    /// For a scheduler that renews many tokens without a task each: whether
    /// a renewal (or a retry after a failed one) is due now for a token used
    /// at `used_at`. Only a token used during its own life is renewed; with
    /// no token held, nothing is due (the next request fetches).
    pub(crate) fn renewal_due(&self, used_at: Instant, now: Instant) -> bool {
        let st = self.lock_state();
        let Some(installed) = st.installed_at else {
            return false;
        };
        let at = st.failures.retry_at().or(st.renew_at);
        used_at >= installed && at.is_some_and(|at| at <= now)
    }

    /// The renewal [`TokenManager::renewal_due`] called for; failures are
    /// logged and scheduled inside.
    pub(crate) async fn renew_ahead(&self) {
        let _ = self.refresh(Reason::Ahead, None, None).await;
    }

    fn next_background_fetch(&self) -> (Instant, Reason) {
        // A token taken from the store counts as held: renewing it is "ahead".
        let reason = if self.slot.load().is_none() {
            Reason::Startup
        } else {
            Reason::Ahead
        };
        let st = self.lock_state();
        let at = st
            .failures
            .retry_at()
            .or(st.renew_at)
            .unwrap_or_else(Instant::now);
        (at, reason)
    }
}

/// The day number, counted in China Standard Time (UTC+8): WeChat's daily
/// quotas start over at its midnight.
fn china_day(now: SystemTime) -> u64 {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs + 8 * 3600) / 86_400
}
