//! The daily quota of an mp app's token API, in sight: read from WeChat's
//! `openapi/quota/get` at most every 10 minutes (and after a fetch refused
//! with 45009), shown on `/apps` and exported as
//! `wechat_proxy_token_quota_remaining{app}`; and reset on an operator's
//! request with `clear_quota/v2`, which takes the secret instead of a token
//! and so works when the token quota is used up. WeCom has no such API.
//!
//! WeChat allows 10 resets a month: this process counts its own, refuses a
//! second within [`RESET_INTERVAL`] (a double click, a retrying script), and
//! refuses any while the quota is not spent (no 45009 seen since the last
//! reset, and `quota/get` shows calls left).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, Method};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::config::TokenApi;
use crate::forward::body::ProxyBody;
use crate::forward::query::encode;
use crate::metrics::Metrics;
use crate::token::{Reason, RefreshObserver, TokenManager};
use crate::wechat::{self, FetchError};

/// How often the quota is read.
const POLL_INTERVAL: Duration = Duration::from_secs(600);
/// How long after a reset another is refused.
pub const RESET_INTERVAL: Duration = Duration::from_secs(60);

/// The quota as WeChat last reported it.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// Calls allowed per day.
    daily_limit: u64,
    /// Calls made today.
    used: u64,
    /// Calls left today.
    remain: u64,
    /// When it was read.
    at: SystemTime,
}

/// What is known; never held across an await.
#[derive(Default)]
struct State {
    /// The last reading.
    reading: Option<Reading>,
    /// Resets this process made.
    resets: u32,
    /// When the last one succeeded.
    last_reset: Option<Instant>,
    /// A token fetch was refused with 45009 since the last reset.
    spent_seen: bool,
}

/// One mp app's quota.
pub struct Quota {
    /// The app's token: quota/get needs one, and a reset ends its backoff.
    tokens: Arc<TokenManager>,
    /// Where `remain` is exported.
    metrics: Arc<Metrics>,
    /// Readings and resets.
    state: Mutex<State>,
    /// Asks the poller for a reading now.
    wake: Notify,
    /// Held for a whole reset, so two at once make one.
    resetting: tokio::sync::Mutex<()>,
}

/// What a reset request came to.
pub struct ResetAnswer {
    /// The HTTP status to answer with.
    pub status: http::StatusCode,
    /// The JSON body.
    pub body: Value,
}

impl Quota {
    /// The quota of `tokens`' app; `None` for WeCom, which has no quota API.
    pub fn new(tokens: Arc<TokenManager>, metrics: Arc<Metrics>) -> Option<Arc<Quota>> {
        (tokens.app().token_api != TokenApi::Wecom).then(|| {
            Arc::new(Quota {
                tokens,
                metrics,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                resetting: tokio::sync::Mutex::new(()),
            })
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        crate::engine::lock(&self.state)
    }

    /// `/apps` fields: `quota` (WeChat's numbers, or null before the first
    /// reading) and `quota_resets`.
    pub fn status(&self) -> (Value, u32) {
        let st = self.lock_state();
        let unix = |t: SystemTime| crate::store::unix_ms(t) / 1000;
        let quota = st.reading.map_or(Value::Null, |r| {
            json!({"daily_limit": r.daily_limit, "used": r.used, "remain": r.remain, "read_unix": unix(r.at)})
        });
        (quota, st.resets)
    }

    /// Reads the quota every [`POLL_INTERVAL`] and when woken; returns when
    /// `shutdown` flips. Needs a valid token: without one it reads nothing
    /// (and asks for none).
    pub async fn run_poller(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // A first reading once the first token is likely there.
        let mut next = Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            let read = self.read().await;
            next = Instant::now()
                + if read {
                    POLL_INTERVAL
                } else {
                    Duration::from_secs(5)
                };
        }
    }

    /// One reading; false when there was no token to read with.
    async fn read(&self) -> bool {
        let Some(token) = self.tokens.current() else {
            return false;
        };
        let app = self.tokens.app();
        let cgi_path = match app.token_api {
            TokenApi::Classic => "/cgi-bin/token",
            _ => "/cgi-bin/stable_token",
        };
        let request = wechat::request()
            .method(Method::POST)
            .uri(format!(
                "{}/cgi-bin/openapi/quota/get?access_token={}",
                app.base_url,
                encode(token.value())
            ))
            .header(header::CONTENT_TYPE, "application/json")
            .body(ProxyBody::full(Bytes::from(
                json!({ "cgi_path": cgi_path }).to_string(),
            )));
        let Ok(request) = request else { return true };
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            wechat::exchange(self.tokens.client(), request),
        )
        .await;
        let quota = match answer {
            Ok(Ok(answer)) => answer.get("quota").cloned().unwrap_or_default(),
            Ok(Err(e)) => {
                tracing::warn!(app = %app.name, error = %e, "cannot read the token quota");
                return true;
            }
            Err(_) => {
                tracing::warn!(app = %app.name, "cannot read the token quota: no answer within 10 s");
                return true;
            }
        };
        let number = |k: &str| quota.get(k).and_then(Value::as_u64);
        if let (Some(daily_limit), Some(used), Some(remain)) =
            (number("daily_limit"), number("used"), number("remain"))
        {
            self.lock_state().reading = Some(Reading {
                daily_limit,
                used,
                remain,
                at: SystemTime::now(),
            });
            self.metrics.quota_remaining(&app.name, remain);
        }
        true
    }

    /// `None` when the quota is spent: a 45009 was seen since the last reset,
    /// or a reading taken now shows nothing left. Otherwise what is known of
    /// what is left, in words.
    async fn not_spent(&self) -> Option<String> {
        if self.lock_state().spent_seen {
            return None;
        }
        self.read().await;
        match self.lock_state().reading {
            Some(r) if r.remain == 0 => None,
            Some(r) => Some(format!(
                "{} of {} calls left today",
                r.remain, r.daily_limit
            )),
            None => Some("no 45009 seen, and quota/get could not be read".to_owned()),
        }
    }

    /// Resets the token API's quota with `clear_quota/v2` and, on success,
    /// lets the token engine fetch at once.
    pub async fn reset(&self) -> ResetAnswer {
        let _resetting = self.resetting.lock().await;
        let app = self.tokens.app();
        let since = self.lock_state().last_reset.map(|t| t.elapsed());
        if let Some(since) = since.filter(|s| *s < RESET_INTERVAL) {
            return ResetAnswer {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                body: json!({"errcode": -1, "errmsg": format!(
                    "{}: the quota was reset {} s ago; WeChat allows 10 resets a month, so a second within {} s is refused: try again in {} s",
                    app.name, since.as_secs(), RESET_INTERVAL.as_secs(), (RESET_INTERVAL - since).as_secs().max(1)
                )}),
            };
        }
        if let Some(left) = self.not_spent().await {
            return ResetAnswer {
                status: http::StatusCode::CONFLICT,
                body: json!({"errcode": -1, "errmsg": format!(
                    "{}: the token quota is not used up ({left}); a reset would spend one of the month's 10 for nothing: \
                     it is only made after WeChat refused a token fetch with 45009 or when quota/get shows nothing left",
                    app.name
                )}),
            };
        }
        let secret = self.tokens.secret();
        let form = format!(
            "appid={}&appsecret={}",
            encode(&app.appid),
            encode(secret.expose())
        );
        let request = wechat::request()
            .method(Method::POST)
            .uri(format!("{}/cgi-bin/clear_quota/v2", app.base_url))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(ProxyBody::full(Bytes::from(form)));
        let outcome = match request {
            Ok(request) => tokio::time::timeout(
                Duration::from_secs(10),
                wechat::exchange(self.tokens.client(), request),
            )
            .await
            .unwrap_or(Err(FetchError::Timeout(Duration::from_secs(10)))),
            Err(_) => Err(FetchError::BadAnswer(
                "the request could not be built".into(),
            )),
        };
        match outcome {
            Ok(_) => {
                let resets = {
                    let mut st = self.lock_state();
                    st.resets += 1;
                    st.last_reset = Some(Instant::now());
                    st.spent_seen = false;
                    // Read again before it counts: the poller is woken below.
                    st.reading = None;
                    st.resets
                };
                let backoff_ended = self.tokens.end_backoff();
                self.wake.notify_one();
                tracing::info!(app = %app.name, resets, backoff_ended, "token quota reset");
                ResetAnswer {
                    status: http::StatusCode::OK,
                    body: json!({"errcode": 0, "errmsg": "ok", "resets": resets, "backoff_ended": backoff_ended}),
                }
            }
            Err(e) => {
                // WeChat could echo the secret back: never pass it on.
                let errmsg = match &e {
                    FetchError::Refused { errmsg, .. } => errmsg.clone(),
                    other => other.to_string(),
                }
                .replace(secret.expose(), "[redacted]");
                tracing::warn!(app = %app.name, errcode = e.errcode(), %errmsg, "token quota reset failed");
                ResetAnswer {
                    status: http::StatusCode::BAD_GATEWAY,
                    body: json!({"errcode": e.errcode(), "errmsg": format!("{}: clear_quota: {errmsg}", app.name)}),
                }
            }
        }
    }
}

/// The token manager's observer: every fetch to the metrics, a 45009 to the
/// quota watch. Connected once both exist (the watch needs the manager, the
/// manager its observer); the manager's refresher starts after that.
#[derive(Default)]
pub struct Relay {
    /// Where fetches are told; set once by [`Relay::connect`].
    to: std::sync::OnceLock<(Arc<Metrics>, Option<Arc<Quota>>)>,
}

impl Relay {
    /// Sets where fetches are told.
    pub fn connect(&self, metrics: Arc<Metrics>, quota: Option<Arc<Quota>>) {
        let _ = self.to.set((metrics, quota));
    }
}

impl RefreshObserver for Relay {
    fn refreshed(&self, app: &str, reason: Reason, ok: bool) {
        if let Some((metrics, _)) = self.to.get() {
            metrics.refreshed(app, reason, ok);
        }
    }

    fn fight(&self, app: &str) {
        if let Some((metrics, _)) = self.to.get() {
            metrics.fight(app);
        }
    }

    fn failed(&self, app: &str, error: &FetchError) {
        if let Some((_, Some(quota))) = self.to.get() {
            quota.fetch_failed(app, error);
        }
    }
}

impl Quota {
    /// A 45009 on a token fetch: say how to reset the quota, and read it.
    fn fetch_failed(&self, app: &str, error: &FetchError) {
        if error.errcode() != 45009 {
            return;
        }
        let resets = {
            let mut st = self.lock_state();
            st.spent_seen = true;
            st.resets
        };
        tracing::warn!(
            app,
            resets_by_this_process = resets,
            "the daily token quota is used up: POST /apps/{app}/clear-quota on the admin listener resets it \
             (WeChat allows 10 resets a month; this process made {resets})"
        );
        self.wake.notify_one();
    }
}
