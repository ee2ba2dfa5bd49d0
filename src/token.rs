//! Each app's access_token: the slot requests read, and the one place that
//! fetches.
//!
//! Who holds what:
//! - `slot` (an `ArcSwapOption`) holds the current token. Requests read it
//!   without a lock; only a fetch writes it.
//! - `gate` (an async mutex) is held for the whole of a fetch. Whoever wants a
//!   new token takes it, then looks again: if the token it wanted replaced is
//!   already gone, it takes the new one and leaves. So N requests that meet
//!   the same rejected token cause one fetch (single-flight), and the
//!   background refresher queues behind them like anyone else.
//! - `state` (a plain mutex, never held across an await) records failures,
//!   backoff and schedule, so the status page never waits behind a fetch.
//!
//! The background task fetches at start, renews ahead of expiry and retries
//! failed fetches with capped, jittered exponential backoff.
//!
//! With a [`Store`] other than memory, a fetch first asks the store (gate
//! held): a usable token saved by an earlier run or another replica is taken
//! instead of fetching. With Redis the fetch also holds the fleet lock, so
//! one replica fetches for all; see [`TokenManager`]'s `obtain`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{watch, Notify};

use crate::config::{AppConfig, Environment, Secret, TokenApi, UpstreamSettings};
use crate::store::{unix_ms, Lock, Saved, Store, StoreError};
use crate::upstream::HttpClient;
use crate::wechat::{self, FetchError, Grant};

/// The stable API allows a `force_refresh` at most this often.
const FORCE_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The admin refresh endpoint causes at most one fetch per this interval.
const ADMIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// How often a replica waiting for another's fetch looks for its token.
const FLEET_POLL: Duration = Duration::from_millis(50);
/// Added to the fetch time for the fleet lock's expiry: the lock holder's
/// Redis calls after the fetch.
const FLEET_LOCK_MARGIN: Duration = Duration::from_secs(1);
/// A stored token with less life than this is not worth taking.
const MIN_ADOPT_LIFE: Duration = Duration::from_secs(1);

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
}

impl Token {
    /// The token, for the one place that writes it into an upstream URL.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// This token's place in the sequence of tokens the app has held.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn is_valid_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
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
    /// A token-error fetch happened moments ago; another would only burn
    /// quota.
    #[error("token refresh rate-limited")]
    RateLimited,
    /// WeChat handed back the very token it had just rejected.
    #[error("WeChat returned the rejected token again")]
    NotRenewed,
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

/// What the status page and readiness probe show of an app's token.
#[derive(Debug, Clone)]
pub struct Status {
    /// Seconds of life left on the held token, if it is valid.
    pub expires_in: Option<Duration>,
    /// When the last fetch succeeded.
    pub last_refresh: Option<SystemTime>,
    /// The error of the last fetch, if it failed.
    pub last_error: Option<FetchError>,
    /// Fetch failures in a row.
    pub failures: u32,
    /// Successful fetches since start.
    pub fetches: u64,
}

/// Fetch bookkeeping; see the module docs for who may hold it when.
#[derive(Default)]
struct State {
    /// After a failure: no fetch before this (but from the refresher).
    retry_at: Option<Instant>,
    /// Failures in a row, for the backoff exponent.
    failures: u32,
    /// The last failure, answered at once to requests during the backoff.
    last_error: Option<FetchError>,
    /// When to renew ahead of expiry.
    renew_at: Option<Instant>,
    /// Last fetch attempt of any reason, for the admin rate limit.
    last_attempt: Option<Instant>,
    /// Last fetch caused by a token error, for `min_refresh_interval`.
    last_token_error_fetch: Option<Instant>,
    /// Last `force_refresh`, for WeChat's 30 s rule.
    last_force: Option<Instant>,
    /// Last success, for the status page.
    last_refresh: Option<SystemTime>,
    /// Successes since start.
    fetches: u64,
    /// The generation the next new token gets.
    next_generation: u64,
}

/// Observes every fetch's outcome (metrics hook in here).
pub trait RefreshObserver: Send + Sync {
    /// Called once per fetch attempt with its reason and whether it worked.
    fn refreshed(&self, app: &str, reason: Reason, ok: bool);
}

/// One app's token: the slot, the single-flight gate and the refresher.
pub struct TokenManager {
    /// The app's validated config (name, appid, API, lead time).
    app: Arc<AppConfig>,
    /// The current secret; swapped when a rotated secret file is re-read.
    secret: ArcSwap<Secret>,
    /// The current token, read lock-free on every request.
    slot: ArcSwapOption<Token>,
    /// Held for the whole of a fetch: the single-flight gate.
    gate: tokio::sync::Mutex<()>,
    /// Backoff, schedule and history; never held across an await.
    state: Mutex<State>,
    /// Tells the refresher its schedule changed.
    wake: Notify,
    /// Upstream connection pool shared with the proxy.
    client: HttpClient,
    /// Limits for one fetch and the backoff between failed ones.
    limits: FetchLimits,
    /// Told about every fetch.
    observer: Option<Arc<dyn RefreshObserver>>,
    /// Where a rotated secret is re-read from.
    env: Arc<dyn Environment + Send + Sync>,
    /// Where tokens are shared with earlier runs or other replicas; only
    /// used with `gate` held.
    store: Arc<Store>,
}

/// The `[upstream]` values the token manager needs.
#[derive(Debug, Clone, Copy)]
struct FetchLimits {
    timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
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
            client,
            limits: FetchLimits {
                timeout: upstream.token_timeout,
                retry_min: upstream.token_retry_min,
                retry_max: upstream.token_retry_max,
            },
            observer,
            env,
            store: Arc::new(Store::Memory),
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

    /// The held token if it is still valid. Lock-free: this is the hot path.
    pub fn current(&self) -> Option<Arc<Token>> {
        let token = self.slot.load_full()?;
        token.is_valid_at(Instant::now()).then_some(token)
    }

    /// A valid token: the held one, or one fetched now. During a fetch
    /// backoff this fails at once with the last error.
    pub async fn token(&self) -> Result<Arc<Token>, RefreshError> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.refresh(Reason::OnDemand, None).await,
        }
    }

    /// Replaces `rejected` (the token WeChat just refused), single-flight.
    pub async fn replace(&self, rejected: &Token) -> Result<Arc<Token>, RefreshError> {
        self.refresh(Reason::TokenError, Some(rejected)).await
    }

    /// Fetches a new token now for the admin endpoint, unless one was fetched
    /// in the last 10 s; then answers with the held token. Returns whether a
    /// fetch happened.
    pub async fn refresh_by_admin(&self) -> Result<(bool, Arc<Token>), RefreshError> {
        let before = self.lock_state().last_attempt;
        let token = self.refresh(Reason::Admin, None).await?;
        Ok((self.lock_state().last_attempt != before, token))
    }

    /// What the status page shows.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let st = self.lock_state();
        Status {
            expires_in: self
                .slot
                .load()
                .as_ref()
                .filter(|t| t.is_valid_at(now))
                .map(|t| t.expires_at - now),
            last_refresh: st.last_refresh,
            last_error: st.last_error.clone(),
            failures: st.failures,
            fetches: st.fetches,
        }
    }

    /// Re-reads a file secret (SIGHUP, or WeChat said the secret is wrong).
    /// When it changed after a failed fetch, the backoff is cut short so the
    /// new secret is tried now.
    pub fn reload_secret(&self) -> Result<bool, String> {
        let fresh = self.app.secret_source.read(self.env.as_ref())?;
        if **self.secret.load() == fresh {
            return Ok(false);
        }
        self.secret.store(Arc::new(fresh));
        let mut st = self.lock_state();
        if st.last_error.is_some() {
            // The last fetch failed, perhaps for this very secret: try the
            // new one now instead of after the backoff.
            tracing::info!(app = %self.app.name, "secret changed; fetching with the new one");
            st.retry_at = Some(Instant::now());
            drop(st);
            self.wake.notify_one();
        } else {
            tracing::info!(app = %self.app.name, "secret changed; the next refresh uses it");
        }
        Ok(true)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state holds plain values; a panic elsewhere cannot leave it
        // half-written in a way that matters, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The single-flight fetch: see the module docs.
    async fn refresh(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, RefreshError> {
        let _gate = self.gate.lock().await;
        let now = Instant::now();
        let current = self.current();
        match (reason, &current, rejected) {
            // Someone refreshed while this caller waited at the gate.
            (Reason::TokenError, Some(cur), Some(old)) if cur.generation != old.generation => {
                return Ok(cur.clone())
            }
            (Reason::OnDemand, Some(cur), _) => return Ok(cur.clone()),
            _ => {}
        }
        {
            let st = self.lock_state();
            // During a backoff everyone gets the last error at once; only an
            // operator's explicit refresh goes through.
            if let (Some(at), Some(e)) = (st.retry_at, &st.last_error) {
                if now < at && reason != Reason::Admin {
                    return Err(RefreshError::Failed(e.clone()));
                }
            }
            let within = |last: Option<Instant>, limit: Duration| {
                last.is_some_and(|t| now.duration_since(t) < limit)
            };
            let renewal_not_due = st.renew_at.is_some_and(|t| now < t);
            match (reason, current) {
                // A fetch for another reason rescheduled the renewal while
                // the refresher waited at the gate.
                (Reason::Startup | Reason::Ahead, Some(cur))
                    if renewal_not_due && st.last_error.is_none() =>
                {
                    return Ok(cur)
                }
                (Reason::TokenError, _)
                    if within(st.last_token_error_fetch, self.app.min_refresh_interval) =>
                {
                    return Err(RefreshError::RateLimited)
                }
                (Reason::Admin, Some(cur)) if within(st.last_attempt, ADMIN_REFRESH_INTERVAL) => {
                    return Ok(cur)
                }
                _ => {}
            }
        }
        self.obtain(reason, rejected).await
    }

    /// A new token from the store if it holds a usable one, else fetched
    /// (and saved). Gate held.
    ///
    /// With Redis, the fetch happens under the fleet lock: the holder reads
    /// Redis again (the previous holder may have saved a token between our
    /// read and our lock), fetches, saves and releases; the others poll until
    /// the new token appears, or the lock is gone (its holder failed or died)
    /// and they take it themselves. Redis unreachable: fetch alone.
    async fn obtain(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, RefreshError> {
        // Two fetches (the stable API's force_refresh) plus the margin.
        let lock_ttl = self.limits.timeout * 2 + FLEET_LOCK_MARGIN;
        let give_up_at = Instant::now() + lock_ttl + FLEET_LOCK_MARGIN;
        loop {
            match self.store.load(&self.app).await {
                Ok(Some(saved)) if self.usable(&saved, reason, rejected) => {
                    return Ok(self.adopt(saved, reason))
                }
                Ok(_) => {}
                Err(e) => return self.fetch_alone(&e, reason, rejected).await,
            }
            match self.store.lock(&self.app, lock_ttl).await {
                Ok(Lock::Unshared) => return self.fetch_and_save(reason, rejected).await,
                Ok(Lock::Acquired(lock)) => {
                    let result = match self.store.load(&self.app).await {
                        Ok(Some(saved)) if self.usable(&saved, reason, rejected) => {
                            Ok(self.adopt(saved, reason))
                        }
                        _ => self.fetch_and_save(reason, rejected).await,
                    };
                    if let Err(e) = self.store.unlock(lock).await {
                        tracing::warn!(app = %self.app.name, error = %e, "cannot release the fleet lock; it expires by itself");
                    }
                    return result;
                }
                Ok(Lock::Busy) if Instant::now() < give_up_at => {
                    tokio::time::sleep(FLEET_POLL).await;
                }
                Ok(Lock::Busy) => {
                    tracing::warn!(
                        app = %self.app.name,
                        waited_ms = lock_ttl.as_millis() as u64,
                        "other replicas kept the fleet lock without saving a token; fetching without it"
                    );
                    return self.fetch_and_save(reason, rejected).await;
                }
                Err(e) => return self.fetch_alone(&e, reason, rejected).await,
            }
        }
    }

    /// Whether a stored token may replace ours for this `reason`.
    fn usable(&self, saved: &Saved, reason: Reason, rejected: Option<&Token>) -> bool {
        let left = saved.life_left(SystemTime::now());
        let held = self.slot.load();
        let differs = |t: Option<&Token>| t.is_none_or(|t| *t.value != *saved.token);
        match reason {
            // Not itself due for renewal, and (ahead) not the token we hold.
            Reason::Startup => left > self.app.refresh_before_expiry,
            Reason::Ahead => left > self.app.refresh_before_expiry && differs(held.as_deref()),
            Reason::OnDemand => left >= MIN_ADOPT_LIFE,
            Reason::TokenError => left >= MIN_ADOPT_LIFE && differs(rejected),
            // The operator asked for a fetch.
            Reason::Admin => false,
        }
    }

    /// Fetches, and saves the token when the fetch brought a usable one.
    async fn fetch_and_save(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, RefreshError> {
        let token = self
            .fetch_and_store(reason, rejected, Instant::now())
            .await?;
        if !matches!(*self.store, Store::Memory) {
            let left = token.expires_at.saturating_duration_since(Instant::now());
            let saved = Saved {
                appid: self.app.appid.clone(),
                api: self.app.token_api.as_str().to_owned(),
                token: token.value.to_string(),
                expires_at_ms: unix_ms(SystemTime::now() + left),
            };
            if let Err(e) = self.store.save(&self.app, saved).await {
                tracing::warn!(app = %self.app.name, store = self.store.kind(), error = %e, "cannot save the token");
            }
        }
        Ok(token)
    }

    /// The store cannot be reached: fetch without it rather than fail.
    async fn fetch_alone(
        &self,
        e: &StoreError,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, RefreshError> {
        let consequence = match self.app.token_api {
            TokenApi::Stable => "none: the stable API hands every replica the same token",
            TokenApi::Classic => {
                "this fetch invalidates, 5 minutes from now, the token other replicas hold"
            }
            TokenApi::Wecom => "other replicas may fetch too; WeCom throttles frequent fetches",
        };
        tracing::warn!(
            app = %self.app.name,
            reason = reason.as_str(),
            error = %e,
            consequence,
            "token store unreachable; fetching without the fleet lock"
        );
        self.fetch_and_store(reason, rejected, Instant::now()).await
    }

    /// Puts a stored token in the slot and schedules its renewal; no fetch.
    fn adopt(&self, saved: Saved, reason: Reason) -> Arc<Token> {
        let left = saved.life_left(SystemTime::now());
        let now = Instant::now();
        tracing::info!(
            app = %self.app.name,
            reason = reason.as_str(),
            store = self.store.kind(),
            expires_in_s = left.as_secs(),
            "token taken from the store"
        );
        self.install(
            saved.token,
            now + left,
            now + renew_after(left, self.app.refresh_before_expiry),
        )
    }

    /// Fetches (and for the stable API, force-refreshes when WeChat hands
    /// back the rejected token), then stores the outcome. Gate held.
    async fn fetch_and_store(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
        now: Instant,
    ) -> Result<Arc<Token>, RefreshError> {
        {
            let mut st = self.lock_state();
            st.last_attempt = Some(now);
            if reason == Reason::TokenError {
                st.last_token_error_fetch = Some(now);
            }
        }
        let mut sent_at = Instant::now();
        let mut outcome = self.fetch_once(false).await;
        let same_as_rejected = |o: &Result<Grant, FetchError>| matches!((o, rejected), (Ok(g), Some(r)) if *g.token == *r.value);
        if same_as_rejected(&outcome) && self.app.token_api == TokenApi::Stable {
            let allowed = {
                let mut st = self.lock_state();
                let allowed = st
                    .last_force
                    .is_none_or(|t| t.elapsed() >= FORCE_REFRESH_INTERVAL);
                if allowed {
                    st.last_force = Some(Instant::now());
                }
                allowed
            };
            if allowed {
                tracing::info!(app = %self.app.name, "stable API returned the rejected token; forcing a refresh");
                sent_at = Instant::now();
                outcome = self.fetch_once(true).await;
            }
        }
        let not_renewed = same_as_rejected(&outcome);
        match outcome {
            Ok(grant) => {
                let token = self.store(grant, sent_at);
                self.report(reason, true, None);
                if not_renewed {
                    return Err(RefreshError::NotRenewed);
                }
                Ok(token)
            }
            Err(e) => {
                let retry_in = self.record_failure(&e);
                self.report(reason, false, Some((&e, retry_in)));
                if e.is_bad_secret() {
                    // A rotated secret file takes effect without a restart.
                    if let Err(problem) = self.reload_secret() {
                        tracing::warn!(app = %self.app.name, %problem, "cannot re-read the secret");
                    }
                }
                Err(RefreshError::Failed(e))
            }
        }
    }

    async fn fetch_once(&self, force: bool) -> Result<Grant, FetchError> {
        let secret = self.secret.load_full();
        let fetch = wechat::fetch(&self.client, &self.app, &secret, force);
        match tokio::time::timeout(self.limits.timeout, fetch).await {
            Ok(Ok(grant)) => Ok(grant),
            // The secret never appears in an error we build, but a server
            // could echo it back in an errmsg: scrub before anyone sees it.
            Ok(Err(e)) => Err(scrub(e, secret.expose())),
            Err(_) => Err(FetchError::Timeout(self.limits.timeout)),
        }
    }

    /// Puts a granted token in the slot and schedules its renewal.
    fn store(&self, grant: Grant, sent_at: Instant) -> Arc<Token> {
        let token = self.install(
            grant.token,
            sent_at + grant.expires_in,
            sent_at + renew_after(grant.expires_in, self.app.refresh_before_expiry),
        );
        self.lock_state().fetches += 1;
        token
    }

    /// Puts a token (fetched or taken from the store) in the slot, schedules
    /// its renewal and clears the failure record.
    fn install(&self, value: String, expires_at: Instant, renew_at: Instant) -> Arc<Token> {
        let mut st = self.lock_state();
        let generation = match self.slot.load().as_ref() {
            Some(held) if *held.value == *value => held.generation,
            _ => {
                st.next_generation += 1;
                st.next_generation - 1
            }
        };
        let token = Arc::new(Token {
            value: value.into_boxed_str(),
            expires_at,
            generation,
        });
        self.slot.store(Some(token.clone()));
        st.renew_at = Some(renew_at);
        st.retry_at = None;
        st.failures = 0;
        st.last_error = None;
        st.last_refresh = Some(SystemTime::now());
        drop(st);
        self.wake.notify_one();
        token
    }

    /// Records a failed fetch and sets the backoff; returns the delay.
    fn record_failure(&self, e: &FetchError) -> Duration {
        let mut st = self.lock_state();
        st.failures = st.failures.saturating_add(1);
        let exp = st.failures.saturating_sub(1).min(20);
        let backoff = self
            .limits
            .retry_min
            .saturating_mul(1 << exp)
            .min(self.limits.retry_max);
        let delay = jitter(backoff).max(e.min_retry_delay());
        st.retry_at = Some(Instant::now() + delay);
        st.last_error = Some(e.clone());
        drop(st);
        self.wake.notify_one();
        delay
    }

    fn report(&self, reason: Reason, ok: bool, failure: Option<(&FetchError, Duration)>) {
        let app = self.app.name.as_str();
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
            observer.refreshed(app, reason, ok);
        }
    }

    /// Fetches at start, renews ahead of expiry, retries after failures;
    /// returns when `shutdown` flips.
    pub async fn run_refresher(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (at, reason) = self.next_background_fetch();
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {
                    // Failures are logged and scheduled inside.
                    let _ = self.refresh(reason, None).await;
                }
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn next_background_fetch(&self) -> (Instant, Reason) {
        // A token taken from the store counts as held: renewing it is "ahead".
        let reason = if self.slot.load().is_none() {
            Reason::Startup
        } else {
            Reason::Ahead
        };
        let st = self.lock_state();
        let at = st.retry_at.or(st.renew_at).unwrap_or_else(Instant::now);
        (at, reason)
    }
}

/// How long after a fetch to renew: `lead` before expiry, but never sooner
/// than a tenth of the lifetime (nor 1 s), so a token that comes back with
/// little life left — the stable API returns the same token until its last
/// five minutes — is asked for again after a pause, not in a loop.
fn renew_after(lifetime: Duration, lead: Duration) -> Duration {
    lifetime
        .saturating_sub(lead)
        .max(lifetime / 10)
        .max(Duration::from_secs(1))
        .min(lifetime)
}

/// Spreads retries of many proxies apart: ±20 %.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let r = (h.finish() % 401) as f64 / 1000.0; // 0.0 ..= 0.4
    d.mul_f64(0.8 + r)
}

fn scrub(e: FetchError, secret: &str) -> FetchError {
    match e {
        FetchError::Refused { errcode, errmsg } if errmsg.contains(secret) => FetchError::Refused {
            errcode,
            errmsg: errmsg.replace(secret, "[redacted]"),
        },
        FetchError::Transport(m) if m.contains(secret) => {
            FetchError::Transport(m.replace(secret, "[redacted]"))
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_lead_before_expiry() {
        let s = Duration::from_secs;
        assert_eq!(renew_after(s(7200), s(300)), s(6900));
    }

    #[test]
    fn renewal_of_a_short_lived_token_pauses_instead_of_looping() {
        let s = Duration::from_secs;
        // The stable API handed back the same token with 301 s left.
        assert_eq!(renew_after(s(301), s(300)), Duration::from_millis(30_100));
        assert_eq!(renew_after(s(4), s(300)), s(1));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
        }
    }
}
