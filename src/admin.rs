//! The admin listener: liveness, readiness, per-app status, and the
//! "refresh now" entry WeChat asks a central token service to offer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::error::{json_response, LocalError};
use crate::forward::body::{buffer_up_to, Buffered, ProxyBody};
use crate::inbound::auth::InboundKey;
use crate::metrics::Metrics;
use crate::platform::Platform;
use crate::quota::Quota;
use crate::status_page;
use crate::suite::Suite;
use crate::ticket::Tickets;
use crate::token::{AdminRefresh, TokenManager};

/// The largest admin request body read (a ticket push is under 1 KiB).
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Serves the admin endpoints.
pub struct Admin {
    /// Every app's token, in config order.
    apps: Vec<Arc<TokenManager>>,
    /// Set when shutdown begins, so readiness fails while in-flight
    /// requests drain.
    draining: Arc<AtomicBool>,
    /// Exported at `/metrics`.
    metrics: Arc<Metrics>,
    /// Callers but probes must present this key, if set.
    key: Option<InboundKey>,
    /// Every app's JS-SDK tickets, in config order (empty until
    /// [`Admin::with_js_sdk`]).
    tickets: Vec<Arc<Tickets>>,
    /// Every app's quota watch, in config order; `None` for WeCom.
    quotas: Vec<Option<Arc<Quota>>>,
    /// The third-party platforms, in config order.
    platforms: Vec<Arc<Platform>>,
    /// The WeCom suites, in config order.
    suites: Vec<Arc<Suite>>,
    /// A request body must arrive whole within this, as on the application
    /// listener: a stalled one must not hold its connection for good.
    body_timeout: Duration,
}

impl Admin {
    /// An admin service over `apps`; `draining` is flipped by the shutdown
    /// path; request bodies not in within `body_timeout` (the listeners'
    /// `idle_timeout_ms`) get a 408.
    pub fn new(
        apps: Vec<Arc<TokenManager>>,
        draining: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        body_timeout: Duration,
    ) -> Admin {
        Admin {
            apps,
            draining,
            metrics,
            key: None,
            tickets: Vec::new(),
            quotas: Vec::new(),
            platforms: Vec::new(),
            suites: Vec::new(),
            body_timeout,
        }
    }

    /// Serves the WeCom suites' `/platforms/NAME/…`, and counts them in
    /// `GET /platforms`, readiness and `/apps`.
    pub fn with_suites(mut self, suites: Vec<Arc<Suite>>) -> Admin {
        self.suites = suites;
        self
    }

    /// Serves `/platforms…`, and counts the platforms in readiness and
    /// `/apps`.
    pub fn with_platforms(mut self, platforms: Vec<Arc<Platform>>) -> Admin {
        self.platforms = platforms;
        self
    }

    /// Shows each app's tickets and quota on `/apps`, and serves
    /// `POST /apps/NAME/clear-quota`. Both lists are in config order.
    pub fn with_js_sdk(
        mut self,
        tickets: Vec<Arc<Tickets>>,
        quotas: Vec<Option<Arc<Quota>>>,
    ) -> Admin {
        self.tickets = tickets;
        self.quotas = quotas;
        self
    }

    /// Requires `key` on every endpoint but the probes (`/healthz`,
    /// `/servingz`, `/readyz`), which
    /// probes must reach without one and which show nothing sensitive.
    pub fn with_key(mut self, key: Option<InboundKey>) -> Admin {
        self.key = key;
        self
    }

    /// Serves one admin request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path();
        let probe = matches!(path, "/healthz" | "/servingz" | "/readyz");
        if !probe
            && self
                .key
                .as_ref()
                .is_some_and(|k| !admits(k, request.headers()))
        {
            let mut refused = LocalError::Unauthorized.into_response();
            // Lets a browser ask for the key (see `admits`).
            refused
                .headers_mut()
                .append(http::header::WWW_AUTHENTICATE, status_page::BASIC_CHALLENGE);
            return refused;
        }
        if path == "/platforms" || path.starts_with("/platforms/") {
            return self.platform(request).await;
        }
        match (request.method(), path) {
            (&Method::GET, "/") => status_page::response(&self.app_statuses(), SystemTime::now()),
            (&Method::GET, "/healthz") => ok(json!({"status": "ok"})),
            (&Method::GET, "/servingz") => self.serving(),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(ProxyBody::full(self.metrics.encode(&self.apps)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            (&Method::GET, "/apps") => {
                let mut statuses = self.app_statuses();
                statuses.extend(self.platforms.iter().map(|p| p.status()));
                statuses.extend(self.suites.iter().map(|s| s.status()));
                ok(Value::Array(statuses))
            }
            (&Method::POST, p) if app_action(p, "clear-quota").is_some() => {
                self.clear_quota(app_action(p, "clear-quota").unwrap_or_default())
                    .await
            }
            (&Method::POST, p) if app_action(p, "refresh").is_some() => {
                self.refresh(app_action(p, "refresh").unwrap_or_default())
                    .await
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                "error",
                &json!({"errcode": -1, "errmsg": format!("no admin endpoint {path}: try /, /healthz, /servingz, /readyz, /apps, /metrics, POST /apps/NAME/refresh, POST /apps/NAME/clear-quota, /platforms")}),
            ),
        }
    }

    /// The platform endpoints, which read a body (a push, a refresh token).
    async fn platform(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        let Ok(buffered) =
            tokio::time::timeout(self.body_timeout, buffer_up_to(body, MAX_ADMIN_BODY)).await
        else {
            return LocalError::ClientTimeout {
                ms: self.body_timeout.as_millis(),
            }
            .into_response();
        };
        let body = match buffered {
            Ok(Buffered::Complete(bytes)) => bytes,
            Ok(Buffered::Partial(_)) => {
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "error",
                    &json!({"errcode": -1, "errmsg": format!("admin request bodies are at most {MAX_ADMIN_BODY} bytes")}),
                )
            }
            Err(e) => return LocalError::ClientBody(e.to_string()).into_response(),
        };
        let path = parts.uri.path();
        if path == "/platforms" && parts.method == Method::GET {
            let mut statuses: Vec<Value> = self.platforms.iter().map(|p| p.status()).collect();
            statuses.extend(self.suites.iter().map(|s| s.status()));
            let mut response = json_response(StatusCode::OK, "admin", &Value::Array(statuses));
            response.headers_mut().remove(crate::error::LOCAL_ANSWER);
            return response;
        }
        if let Some(answer) = crate::suite::answer(
            &self.suites,
            &parts.method,
            path,
            parts.uri.query(),
            body.clone(),
        )
        .await
        {
            return answer;
        }
        crate::platform::answer(
            &self.platforms,
            &parts.method,
            path,
            parts.uri.query(),
            body,
        )
        .await
        .unwrap_or_else(|| {
            json_response(
                StatusCode::NOT_FOUND,
                "error",
                &json!({"errcode": -1, "errmsg": format!("no admin endpoint {path}")}),
            )
        })
    }

    /// Whether the proxy takes calls, whatever WeChat says: the readiness a
    /// Service should follow, so a WeChat outage or a whitelist problem
    /// does not take the application's pod out of it (its calls get
    /// WeChat-shaped 503s meanwhile; token health is `/readyz`'s).
    fn serving(&self) -> Response<ProxyBody> {
        if self.draining.load(Ordering::Relaxed) {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                &json!({"serving": false, "reason": "shutting down"}),
            );
        }
        ok(json!({"serving": true}))
    }

    fn readiness(&self) -> Response<ProxyBody> {
        if self.draining.load(Ordering::Relaxed) {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                &json!({"ready": false, "reason": "shutting down"}),
            );
        }
        let waiting: Vec<Value> = self
            .apps
            .iter()
            .filter_map(|t| {
                let status = t.status();
                // A token WeChat rejected cannot serve, whatever its age.
                if status.expires_in.is_some() {
                    return None;
                }
                let reason = match (status.rejected, status.last_error) {
                    (true, Some(e)) => {
                        format!("WeChat rejected the token and fetching a new one failed: {e}")
                    }
                    (true, None) => "WeChat rejected the token; fetching a new one".to_owned(),
                    (false, Some(e)) => e.to_string(),
                    (false, None) => "no token fetched yet".to_owned(),
                };
                Some(json!({"app": t.app().name, "reason": reason}))
            })
            .chain(self.platforms.iter().filter_map(|p| {
                let reason = p.not_ready()?;
                Some(json!({"platform": p.name(), "reason": reason}))
            }))
            .chain(self.suites.iter().filter_map(|s| {
                let reason = s.not_ready()?;
                Some(json!({"platform": s.name(), "reason": reason}))
            }))
            .collect();
        if waiting.is_empty() {
            ok(json!({"ready": true}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                &json!({"ready": false, "apps": waiting}),
            )
        }
    }

    /// Every app's `/apps` entry, tickets and quota included.
    fn app_statuses(&self) -> Vec<Value> {
        self.apps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut status = app_status(t);
                if let Some(tickets) = self.tickets.get(i) {
                    status["tickets"] = crate::jssdk::status(tickets);
                }
                if let Some(Some(quota)) = self.quotas.get(i) {
                    let (reading, resets) = quota.status();
                    status["quota"] = reading;
                    status["quota_resets"] = json!(resets);
                }
                status
            })
            .collect()
    }

    /// The 404 answer for an app name that is not configured, naming those
    /// that are.
    fn no_app(&self, name: &str) -> Response<ProxyBody> {
        let names: Vec<&str> = self.apps.iter().map(|t| t.app().name.as_str()).collect();
        json_response(
            StatusCode::NOT_FOUND,
            "error",
            &json!({"errcode": -1, "errmsg": format!("no app named '{name}'; apps: {}", names.join(", "))}),
        )
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|t| t.app().name == name)
    }

    async fn clear_quota(&self, name: &str) -> Response<ProxyBody> {
        let Some(i) = self.find(name) else {
            return self.no_app(name);
        };
        let Some(Some(quota)) = self.quotas.get(i) else {
            return json_response(
                StatusCode::NOT_FOUND,
                "error",
                &json!({"errcode": -1, "errmsg": format!("{name}: WeCom has no quota reset; only mp apps do")}),
            );
        };
        let answer = quota.reset().await;
        let mut response = json_response(answer.status, "admin", &answer.body);
        if answer.status.is_success() {
            response.headers_mut().remove(crate::error::LOCAL_ANSWER);
        }
        response
    }

    async fn refresh(&self, name: &str) -> Response<ProxyBody> {
        let Some(tokens) = self.find(name).map(|i| &self.apps[i]) else {
            return self.no_app(name);
        };
        let expires_in = |t: &TokenManager| t.status().expires_in.map_or(0, |d| d.as_secs());
        match tokens.refresh_by_admin().await {
            Ok(AdminRefresh::Fetched) => ok(json!({
                "refreshed": true,
                "expires_in": expires_in(tokens),
            })),
            Ok(AdminRefresh::TooSoon { since, retry_in }) => ok(json!({
                "refreshed": false,
                "expires_in": expires_in(tokens),
                "reason": format!(
                    "a token was fetched {} s ago; the admin refresh fetches at most once per min_refresh_interval_ms ({} ms): try again in {} s",
                    since.as_secs(),
                    tokens.app().min_refresh_interval.as_millis(),
                    retry_in.as_secs().max(1)
                ),
                "retry_in_s": retry_in.as_secs().max(1),
            })),
            Ok(AdminRefresh::Declined {
                retry_in,
                last_error,
            }) => {
                let retry_in_s = retry_in.as_secs().max(1);
                let failed = last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("; the last fetch failed: {e}"));
                let why = format!(
                    "the admin refresh makes at most one fetch per min_refresh_interval_ms ({} ms) and goes through a fetch backoff once{failed}",
                    tokens.app().min_refresh_interval.as_millis()
                );
                let mut response = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "error",
                    &json!({
                        "refreshed": false,
                        "errcode": last_error.as_ref().map_or(-1, |e| e.errcode()),
                        "errmsg": format!("{name}: no refresh made: {why}: the next may be made in {retry_in_s} s"),
                        "retry_in_s": retry_in_s,
                    }),
                );
                response.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(retry_in_s),
                );
                response
            }
            Err(e) => {
                let errcode = e.errcode();
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "error",
                    &json!({"refreshed": false, "errcode": errcode, "errmsg": format!("{name}: {e}")}),
                )
            }
        }
    }
}

/// Whether `headers` carry the admin key: as a bearer or key header, or, for
/// a browser, as the password of HTTP Basic credentials.
fn admits(key: &InboundKey, headers: &http::HeaderMap) -> bool {
    let basic = status_page::basic_password(headers).is_some_and(|p| key.matches(&p));
    key.admits(headers) | basic
}

/// The app named by `/apps/NAME/{action}`; `None` for any other path,
/// `/apps/{action}` included (prefix and suffix overlap there).
fn app_action<'p>(path: &'p str, action: &str) -> Option<&'p str> {
    path.strip_prefix("/apps/")?
        .strip_suffix(action)?
        .strip_suffix('/')
}

/// An admin endpoint's answer: `body`, 200, not marked as the proxy's own
/// (it is the answer asked for, not a stand-in for WeChat's).
pub(crate) fn ok(body: Value) -> Response<ProxyBody> {
    let mut response = json_response(StatusCode::OK, "admin", &body);
    response.headers_mut().remove(crate::error::LOCAL_ANSWER);
    response
}

/// An admin request refused with `status`, saying why.
pub(crate) fn refused(status: StatusCode, errmsg: String) -> Response<ProxyBody> {
    json_response(status, "error", &json!({"errcode": -1, "errmsg": errmsg}))
}

/// One app's entry on the status page: never the token or the secret.
fn app_status(tokens: &TokenManager) -> Value {
    let app = tokens.app();
    let status = tokens.status();
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({
        "name": app.name,
        "kind": app.kind.as_str(),
        "appid": app.appid,
        "token_api": app.token_api.as_str(),
        "base_url": app.base_url.to_string(),
        "fallback_base_urls": app.fallback_base_urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "upstream": tokens.client().upstream().unwrap_or(&app.base_url).to_string(),
        "token": {
            "state": status.state(),
            "expires_in_s": status.expires_in.map(|d| d.as_secs()),
        },
        "fights": status.fights,
        "last_fight_unix": status.last_fight.map(unix),
        "last_refresh_unix": status.last_refresh.map(unix),
        "refreshes": status.fetches,
        "fetches_today": status.fetches_today,
        "consecutive_failures": status.failures,
        "last_error": status.last_error.map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
    })
}
