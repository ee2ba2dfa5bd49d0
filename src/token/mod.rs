//! Each app's access_token: a [credential cell](crate::engine::cell) whose
//! grant ([`TokenGrant`]) fetches from the app's token endpoint, or through
//! a [`Grantor`] for the tokens a third-party platform or WeCom suite holds
//! (component, authorizer, suite, provider and corp tokens).
//!
//! The cell gives it what every credential has: the lock-free slot
//! requests read, single flight, a fetch that outlives its caller, backoff,
//! the store and fleet lease, renewal ahead of expiry. What is a token's
//! own:
//! - A request that sees WeChat reject the token marks it rejected: the
//!   status page and readiness say so until a new token arrives, or WeChat
//!   accepts this one on another call. Requests keep sending it meanwhile
//!   (one caller's API answering 40001 for its own reasons must not stall
//!   everyone else's); each that meets the rejection joins the single
//!   flight, which fetches once.
//! - The rules ([`crate::engine::admission`]): during a fetch backoff
//!   requests get the last error at once; token errors cause at most one
//!   fetch per `min_refresh_interval_ms`, and requests that meet one inside
//!   that window wait for the next allowed fetch rather than fail; the admin
//!   refresh makes at most one fetch per `min_refresh_interval_ms`, failed or
//!   not, and goes through a fetch backoff once.
//! - The quota guard: a token fetched because API P rejected the one before
//!   remembers P. If P rejects it too before ever accepting it, P refuses
//!   every token for reasons of its own: no fetch, the token is not marked
//!   rejected, and the caller gets WeChat's answer. A fight (the old token
//!   rejected with life left) is counted only once P accepts the new token.
//! - [`fetch`] talks to WeChat (the stable API's `force_refresh` quirk,
//!   secret rotation, today's count against the daily quota).

mod fetch;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{AppConfig, Environment, Secret, UpstreamSettings};
use crate::engine::{self, Ask, Cell, CellError, Credential, Limits};
use crate::forward::upstream::HttpClient;
use crate::wechat::{FetchError, Grant};

use crate::engine::cell::Source;
use crate::engine::cell::{Noun, Stamp};
pub use crate::engine::Reason;

/// A token rejected with at least this much life left was not rejected for
/// its age: somebody else replaced it.
pub const FIGHT_MIN_LIFE: Duration = Duration::from_secs(60);

/// Why no (new) token could be had: the cell's error.
pub type RefreshError = CellError;

/// One app's token: a credential cell with the token's grant.
pub type TokenManager = Cell<TokenGrant>;

/// One access_token as the proxy holds it.
pub struct Token {
    /// The token, its expiry (measured from when the fetch was sent, so it
    /// errs early) and its generation.
    stamp: Stamp,
    /// The value percent-encoded for a query, when that differs from the
    /// value (never, for WeChat's own tokens): made once here rather than
    /// checked byte by byte on every request.
    in_query: Option<Box<str>>,
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
    /// The token itself: what answers are scrubbed of.
    pub fn value(&self) -> &str {
        self.stamp.value()
    }

    /// The token as it goes into an upstream URL's query.
    pub fn in_query(&self) -> &str {
        self.in_query.as_deref().unwrap_or(self.stamp.value())
    }

    /// A token held as `stamp` says, not yet rejected or accepted anywhere.
    fn new(stamp: Stamp, rejected: bool, fetched_for: Option<Box<str>>) -> Token {
        let in_query = match crate::forward::query::encoded(stamp.value()) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(encoded) => Some(encoded.into_boxed_str()),
        };
        Token {
            stamp,
            in_query,
            rejected: AtomicBool::new(rejected),
            fetched_for,
            accepted_by_trigger: AtomicBool::new(false),
            refusal_told: AtomicBool::new(false),
        }
    }
}

impl Credential for Token {
    fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    fn is_rejected(&self) -> bool {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.stamp.generation())
            .field("rejected", &self.is_rejected())
            .finish_non_exhaustive()
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

/// A token's own bookkeeping, kept in its cell's book.
#[derive(Default)]
pub struct TokenBook {
    /// Last `force_refresh`, for WeChat's 30 s rule.
    last_force: Option<Instant>,
    /// Token fights seen since start.
    fights: u64,
    /// When the last one was seen.
    last_fight: Option<SystemTime>,
    /// Token endpoint requests on [`TokenBook::fetch_day`].
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

/// Where a token comes from: the app's own token endpoint
/// ([`AppEndpoint`]), or a platform's or suite's call (component,
/// authorizer, suite, provider and corp tokens). The token's grant keeps
/// everything else the same for all of them; this is the fetch itself and
/// the token's key in the store.
pub(crate) trait Grantor: Send + Sync {
    /// The appid the token is for (the store's key, logs).
    fn appid(&self) -> &str;
    /// Its kind in the store ([`crate::store::Key::kind`]).
    fn store_kind(&self) -> &str;
    /// The name in logs and errors (`platform` or `platform/appid`).
    fn label(&self) -> &str;
    /// One fetch from WeChat. `secret` is the cell's current secret (the
    /// AppSecret, the component_appsecret, re-read on rotation).
    fn grant<'a>(
        &'a self,
        client: &'a HttpClient,
        secret: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, FetchError>> + Send + 'a>>;
    /// What to do when WeChat rejects a token with life left: which calls
    /// of another system fetch tokens for this appid.
    fn fight_advice(&self) -> &'static str {
        // A platform's token: no stable token API to move to.
        "WeChat rejected a token with life left: another system is probably fetching this platform's tokens \
         for this appid (api_component_token, api_authorizer_token). Route that system through this proxy: \
         it answers those calls with placeholders"
    }
}

/// An app's own token endpoint (classic, stable or WeCom's `gettoken`).
struct AppEndpoint {
    /// The app.
    app: Arc<AppConfig>,
}

impl Grantor for AppEndpoint {
    fn appid(&self) -> &str {
        &self.app.appid
    }

    fn store_kind(&self) -> &str {
        self.app.token_api.as_str()
    }

    fn label(&self) -> &str {
        &self.app.name
    }

    fn grant<'a>(
        &'a self,
        client: &'a HttpClient,
        secret: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, FetchError>> + Send + 'a>> {
        Box::pin(crate::wechat::fetch(client, &self.app, secret, false))
    }

    fn fight_advice(&self) -> &'static str {
        "WeChat rejected a token with life left: another system is probably fetching tokens for this appid \
         (each classic /cgi-bin/token call kills the previous token; a stable_token force_refresh kills it at once). \
         Route that system through this proxy, or move every system to the stable token API (token_api = \"stable\")"
    }
}

/// A token's grant: the app it belongs to, its secret, and where the token
/// comes from.
pub struct TokenGrant {
    /// The app's validated config (name, appid, API, lead time).
    app: Arc<AppConfig>,
    /// The current secret; swapped when a rotated secret file is re-read.
    secret: ArcSwap<Secret>,
    /// Upstream connection pool shared with the proxy.
    client: HttpClient,
    /// Told about every fetch.
    observer: Option<Arc<dyn RefreshObserver>>,
    /// Where a rotated secret is re-read from.
    env: Arc<dyn Environment + Send + Sync>,
    /// Where the token comes from: the app's endpoint unless a platform or
    /// suite said otherwise.
    grantor: Arc<dyn Grantor>,
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
        let grant = TokenGrant {
            secret: ArcSwap::from_pointee(app.secret.clone()),
            grantor: Arc::new(AppEndpoint { app: app.clone() }),
            app: app.clone(),
            client,
            observer,
            env,
        };
        Cell::of(grant, Limits::of(upstream), &app)
    }

    /// Fetches through `grantor` instead of the app's token endpoint.
    pub(crate) fn with_grantor(mut self, grantor: Arc<dyn Grantor>) -> TokenManager {
        self.grant.grantor = grantor;
        self
    }

    /// The name in logs and errors: the app's, or the grantor's.
    pub(crate) fn label(&self) -> &str {
        self.grant.grantor.label()
    }

    /// The appid the token is for: the app's, or an authorizer's or corp's
    /// (not the platform's or suite's whose config the token shares).
    pub(crate) fn appid(&self) -> &str {
        self.grant.grantor.appid()
    }

    /// The app this token belongs to.
    pub fn app(&self) -> &AppConfig {
        &self.grant.app
    }

    /// The upstream connection pool of the app's egress route, for the other
    /// calls made with this app's credentials (tickets, quota).
    pub(crate) fn client(&self) -> &HttpClient {
        &self.grant.client
    }

    /// The current secret, for the one WeChat call that takes it instead of
    /// a token (`clear_quota/v2`).
    pub(crate) fn secret(&self) -> Arc<Secret> {
        self.grant.secret.load_full()
    }

    /// A valid token: the held one, or one fetched now. During a fetch
    /// backoff this fails at once with the last error.
    pub async fn token(self: &Arc<Self>) -> Result<Arc<Token>, RefreshError> {
        match self.current() {
            Some(token) => Ok(token),
            None => self.refresh_detached(Ask::because(Reason::OnDemand)).await,
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
        self.refresh_detached(Ask {
            reason: Reason::TokenError,
            rejected: Some(rejected.clone()),
            path: Some(path.into()),
        })
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
            self.confirm_fight(token.stamp.generation());
        }
    }

    /// Fetches a new token now for the admin endpoint: at most once per
    /// `min_refresh_interval`, counting any successful fetch and every admin
    /// fetch, failed or not; through a fetch backoff only once.
    pub async fn refresh_by_admin(self: &Arc<Self>) -> Result<AdminRefresh, RefreshError> {
        let this = self.clone();
        let flight = tokio::spawn(async move { this.refresh(&Ask::because(Reason::Admin)).await });
        match flight.await {
            Ok(Ok((_, Source::Held))) => {
                let since = self
                    .book()
                    .last_success
                    .map_or(Duration::ZERO, |t| t.elapsed());
                Ok(AdminRefresh::TooSoon {
                    since,
                    retry_in: self.app().min_refresh_interval.saturating_sub(since),
                })
            }
            Ok(Ok(_)) => Ok(AdminRefresh::Fetched),
            Ok(Err(RefreshError::Declined(retry_in))) => Ok(AdminRefresh::Declined {
                retry_in,
                last_error: self.book().failures.last().cloned(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RefreshError::Failed {
                noun: Noun::Token,
                error: engine::stopped("token"),
            }),
        }
    }

    /// What the status page shows.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let held = self.held();
        let book = self.book();
        Status {
            expires_in: held
                .as_ref()
                .filter(|t| now < t.stamp.expires_at() && !t.is_rejected())
                .map(|t| t.stamp.expires_at() - now),
            rejected: held.as_ref().is_some_and(|t| t.is_rejected()),
            last_refresh: book.last_refresh,
            last_error: book.failures.last().cloned(),
            failures: book.failures.count(),
            fetches: book.fetches,
            fetches_today: if book.extra.fetch_day == china_day(SystemTime::now()) {
                book.extra.fetches_today
            } else {
                0
            },
            fights: book.extra.fights,
            last_fight: book.extra.last_fight,
        }
    }

    /// The API that rejected the token before accepted the token of
    /// `generation`: if that was fetched to replace a token rejected well
    /// within its life, that was almost always another system fetching
    /// tokens for the same appid. Say so. (Counted only now: an API that
    /// rejects every token, the new one too, is no fight.)
    fn confirm_fight(&self, generation: u64) {
        let life_left = {
            let mut book = self.book();
            let st = &mut book.extra;
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
        if let Some(observer) = &self.grant.observer {
            observer.fight(&self.app().name);
        }
        tracing::warn!(
            app = %self.label(),
            appid = %self.grant.grantor.appid(),
            life_left_s = life_left.as_secs(),
            "{}",
            self.grant.grantor.fight_advice()
        );
    }

    /// Fetches at start, renews ahead of expiry, retries after failures;
    /// returns when `shutdown` flips.
    pub async fn run_refresher(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.renew_while(shutdown, |book, held| {
            // A token taken from the store counts as held: renewing it is
            // "ahead".
            let reason = if held { Reason::Ahead } else { Reason::Startup };
            let at = book
                .failures
                .retry_at()
                .or(book.renew_at)
                .unwrap_or_else(Instant::now);
            engine::Next::At(at, reason)
        })
        .await
    }
}

/// Whether a rejection means another system is fetching tokens for the same
/// appid. Only Official Account / Mini Program tokens die that way (WeCom
/// hands every caller the same token, and may end one early by itself); and
/// a token rejected near its end, or replaced from this proxy's own fleet
/// store, is no fight.
pub fn is_fight(mp: bool, life_left: Duration, replaced_by_fleet: bool) -> bool {
    mp && life_left >= FIGHT_MIN_LIFE && !replaced_by_fleet
}

/// The day number, counted in China Standard Time (UTC+8): WeChat's daily
/// quotas start over at its midnight.
fn china_day(now: SystemTime) -> u64 {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs + 8 * 3600) / 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_young_mp_token_rejected_outside_the_fleet_is_a_fight() {
        assert!(is_fight(true, s(7000), false));
        assert!(is_fight(true, FIGHT_MIN_LIFE, false));
    }

    #[test]
    fn rejections_near_expiry_from_the_fleet_or_on_wecom_are_no_fight() {
        assert!(!is_fight(true, s(59), false));
        assert!(!is_fight(true, s(7000), true));
        assert!(!is_fight(false, s(7000), false));
    }
}
