//! `wechat-token-proxy demo`: the real proxy ([`crate::run`] over real
//! listeners) in front of a simulated WeChat in the same process, so a
//! newcomer sees a call succeed without an account, a secret or a network.
//!
//! The simulated WeChat is a small plain-HTTP server on a loopback port of
//! its own; the demo's app points at it with an `http://` `base_url`, which
//! any config may do (a local stand-in), so real configs keep their TLS
//! untouched. It knows one mp app: it issues stable-API tokens for the
//! demo's generated secret, checks the token on every call (41001 without
//! one, 40001 for a dead one), and can revoke the token the proxy holds, as
//! another system's `force_refresh` would. Every answer it gives carries
//! [`SIMULATED_HEADER`] and a `"simulated"` field.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::config::{Config, Environment};
use crate::{Listeners, RunError};

/// The demo app's appid: an mp appid's shape, known only to the simulated
/// WeChat.
pub const APPID: &str = "wxd000000000000de0";
/// The path (through the proxy) at which the simulated WeChat revokes the
/// token it is called with.
pub const REVOKE_PATH: &str = "/simulated-wechat/revoke-token";
/// Header on every answer of the simulated WeChat.
pub const SIMULATED_HEADER: &str = "x-simulated-wechat";
/// What every answer and log line of the demo says about its WeChat.
pub const MARK: &str = "simulated WeChat (wechat-token-proxy demo), not the real one";
/// The variable the demo config names for the secret; it is answered from
/// memory ([`DemoEnv`]), never from the process environment.
const SECRET_VAR: &str = "WECHAT_DEMO_SECRET";
/// A token's life, as WeChat's.
const TOKEN_LIFE: Duration = Duration::from_secs(7200);
/// The stable API hands out a new token in the last five minutes of one.
const RENEW_WINDOW: Duration = Duration::from_secs(300);
/// The daily quota the simulated WeChat reports for the token API.
const DAILY_LIMIT: u64 = 10_000;

/// Why the demo cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A listener on an address other hosts could reach: the demo has no keys.
    #[error("demo: {flag} {addr}: the demo serves loopback only (127.0.0.1:PORT or [::1]:PORT); to serve other hosts, run the proxy with a config and keys")]
    NotLoopback {
        /// `--listen` or `--admin-listen`.
        flag: &'static str,
        /// The address given.
        addr: SocketAddr,
    },
    /// An address that cannot be bound (port taken).
    #[error("demo: {flag} {addr}: cannot listen: {source}; pick another port with {flag} 127.0.0.1:PORT")]
    Bind {
        /// `--listen`, `--admin-listen`, or the simulated WeChat.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The generated config was refused (a bug: it is built here).
    #[error("demo: {0}")]
    Config(#[from] crate::config::ConfigError),
}

impl DemoError {
    /// Whether the input was refused (exit 2), rather than a port being
    /// taken (exit 1, a retry may help).
    pub fn is_refusal(&self) -> bool {
        matches!(self, DemoError::NotLoopback { .. })
    }
}

/// The demo, bound and ready to serve.
pub struct Demo {
    /// The config the proxy runs with: one mp app pointed at the simulated
    /// WeChat.
    pub config: Config,
    /// The proxy's listeners, bound.
    pub listeners: Listeners,
    /// The simulated WeChat's listener.
    wechat: TcpListener,
    /// Its state, shared with its handler.
    simulated: Arc<Simulated>,
}

/// The demo's secret, handed to the config as if from a variable.
struct DemoEnv(String);

impl Environment for DemoEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == SECRET_VAR).then(|| self.0.clone())
    }
}

/// Binds the proxy's listeners (loopback only) and the simulated WeChat.
pub async fn bind(listen: SocketAddr, admin_listen: SocketAddr) -> Result<Demo, DemoError> {
    for (flag, addr) in [("--listen", listen), ("--admin-listen", admin_listen)] {
        if !addr.ip().is_loopback() {
            return Err(DemoError::NotLoopback { flag, addr });
        }
    }
    let bind = |flag: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DemoError::Bind { flag, addr, source })
    };
    let proxy = bind("--listen", listen).await?;
    let admin = bind("--admin-listen", admin_listen).await?;
    let any_port = SocketAddr::new(listen.ip(), 0);
    let wechat = bind("(simulated WeChat)", any_port).await?;
    let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let (listen, admin_listen) = (local(&proxy, listen), local(&admin, admin_listen));
    let wechat_addr = local(&wechat, any_port);

    let secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let toml = format!(
        r#"
[proxy]
listen = "{listen}"
admin_listen = "{admin_listen}"

[apps.mp]
kind = "mp"
appid = "{APPID}"
secret_env = "{SECRET_VAR}"
base_url = "http://{wechat_addr}"
"#
    );
    let config = Config::parse(
        Path::new("demo (no config file)"),
        &toml,
        &DemoEnv(secret.clone()),
    )?;
    Ok(Demo {
        config,
        listeners: Listeners { proxy, admin },
        wechat,
        simulated: Arc::new(Simulated::new(secret)),
    })
}

impl Demo {
    /// What to try, with this demo's addresses: the commands the README's
    /// quick start shows.
    pub fn instructions(&self) -> String {
        let proxy = self.config.proxy.listen;
        let admin = self.config.proxy.admin_listen;
        let wechat = self
            .wechat
            .local_addr()
            .map_or("?".into(), |a| a.to_string());
        format!(
            "\
wechat-token-proxy demo: the real proxy on http://{proxy} (status page http://{admin}/),
in front of a SIMULATED WeChat on {wechat}, in this process: not the real WeChat.
One mp app (appid {APPID}); no config file, no secret, no network. Ctrl-C stops it.

Try, in another terminal:

# An API call without a token: the proxy adds it, the simulated WeChat checks it (HTTP 200)
curl -i 'http://{proxy}/cgi-bin/user/info?openid=OPENID&lang=zh_CN'
# An SDK asking for a token gets a placeholder: the real token never leaves the proxy
curl 'http://{proxy}/cgi-bin/token?grant_type=client_credential&appid=APPID&secret=anything'
# Revoke the proxy's token, as another system's force_refresh would...
curl -X POST 'http://{proxy}{REVOKE_PATH}'
# ...and call again: still a 200, the proxy fetched a new token and retried
curl -i 'http://{proxy}/cgi-bin/user/info?openid=OPENID&lang=zh_CN'
# What the operator sees: the token, its refreshes, the fight the revocation was
curl 'http://{admin}/apps'

The status page: open http://{admin}/ in a browser.
"
        )
    }

    /// Serves until `shutdown` resolves: the simulated WeChat beside the
    /// proxy's own [`crate::run`].
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), RunError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let simulated = self.simulated;
        let wechat = tokio::spawn(crate::server::serve(
            "simulated-wechat",
            self.wechat,
            move |request| {
                let simulated = simulated.clone();
                async move { simulated.answer(request).await }
            },
            stop_rx,
            Duration::from_secs(1),
            self.config.proxy.limits,
        ));
        // SIGHUP re-reads secret files; the demo has none.
        let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let env: Arc<dyn Environment + Send + Sync> =
            Arc::new(DemoEnv(self.config.apps[0].secret.expose().to_owned()));
        let outcome = crate::run(self.config, self.listeners, env, reload_rx, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = wechat.await;
        outcome
    }
}

/// The simulated WeChat: one app, its tokens and quota.
struct Simulated {
    /// The secret the demo config holds; a token request with another is
    /// refused with 40125, as WeChat would.
    secret: String,
    /// Tokens and counts; never held across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The tokens that work, with their expiry.
    live: Vec<(String, Instant)>,
    /// Token requests answered today.
    fetches: u64,
    /// The JS-SDK ticket, issued on first request.
    ticket: Option<String>,
}

impl Simulated {
    fn new(secret: String) -> Simulated {
        Simulated {
            secret,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        let mut answer = match (&parts.method, path) {
            (&Method::POST, "/cgi-bin/stable_token") => self.stable_token(&body),
            (&Method::POST, "/cgi-bin/clear_quota/v2") => self.clear_quota(&body),
            _ => match self.check_token(param(query, "access_token")) {
                Err(refusal) => refusal,
                Ok(token) => self.api(&parts.method, path, query, &token),
            },
        };
        let errcode = answer.get("errcode").and_then(Value::as_i64).unwrap_or(0);
        tracing::info!(
            target: "simulated_wechat",
            method = %parts.method,
            path,
            errcode,
            "the simulated WeChat answered"
        );
        answer["simulated"] = json!(MARK);
        let mut response = Response::new(ProxyBody::full(Bytes::from(answer.to_string())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; encoding=utf-8"),
        );
        headers.insert(SIMULATED_HEADER, HeaderValue::from_static(MARK));
        *response.status_mut() = StatusCode::OK;
        response
    }

    /// `POST /cgi-bin/stable_token`: the same token while it has more than
    /// five minutes left, a new one after; `force_refresh` revokes it.
    fn stable_token(&self, body: &[u8]) -> Value {
        let asked: Value = serde_json::from_slice(body).unwrap_or_default();
        if asked["appid"] != APPID {
            return json!({"errcode": 40013, "errmsg": "invalid appid"});
        }
        if asked["secret"] != self.secret.as_str() {
            return json!({"errcode": 40125, "errmsg": "invalid appsecret"});
        }
        let mut state = self.lock();
        state.fetches += 1;
        let now = Instant::now();
        state.live.retain(|(_, expires)| *expires > now);
        if asked["force_refresh"] == true {
            state.live.clear();
        }
        let current = state
            .live
            .last()
            .filter(|(_, expires)| *expires - now > RENEW_WINDOW)
            .cloned();
        let (token, expires) = current.unwrap_or_else(|| {
            let issued = (new_token(), now + TOKEN_LIFE);
            state.live.push(issued.clone());
            issued
        });
        json!({"access_token": token, "expires_in": (expires - now).as_secs()})
    }

    /// `POST /cgi-bin/clear_quota/v2` (appid and appsecret as a form).
    fn clear_quota(&self, body: &[u8]) -> Value {
        let form = String::from_utf8_lossy(body);
        if param(&form, "appid") != Some(APPID) || param(&form, "appsecret") != Some(&self.secret) {
            return json!({"errcode": 40125, "errmsg": "invalid appsecret"});
        }
        self.lock().fetches = 0;
        json!({"errcode": 0, "errmsg": "ok"})
    }

    /// The token a call carries, if it is alive; else WeChat's refusal.
    fn check_token(&self, token: Option<&str>) -> Result<String, Value> {
        let Some(token) = token else {
            return Err(json!({"errcode": 41001, "errmsg": "access_token missing"}));
        };
        let now = Instant::now();
        let live = self.lock().live.iter().any(|(t, e)| t == token && *e > now);
        if live {
            Ok(token.to_owned())
        } else {
            Err(
                json!({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}),
            )
        }
    }

    /// A call with a live token.
    fn api(&self, method: &Method, path: &str, query: &str, token: &str) -> Value {
        match (method, path) {
            (&Method::GET, "/cgi-bin/user/info") => json!({
                "subscribe": 1,
                "openid": param(query, "openid").unwrap_or(""),
                "nickname": "A simulated follower",
                "language": param(query, "lang").unwrap_or("zh_CN"),
                "token_check": "the access_token the proxy added is valid",
            }),
            (&Method::POST, REVOKE_PATH) => {
                // Another system's force_refresh: this token dies at once,
                // the next fetch gets a new one.
                self.lock().live.retain(|(t, _)| t != token);
                json!({
                    "errcode": 0,
                    "errmsg": "ok",
                    "revoked": "the token the proxy holds; its next call meets 40001, and it fetches a new token and retries",
                })
            }
            (&Method::POST, "/cgi-bin/openapi/quota/get") => {
                let used = self.lock().fetches;
                json!({"errcode": 0, "errmsg": "ok", "quota": {
                    "daily_limit": DAILY_LIMIT,
                    "used": used,
                    "remain": DAILY_LIMIT.saturating_sub(used),
                }})
            }
            (&Method::GET, "/cgi-bin/ticket/getticket") => {
                let ticket = self.lock().ticket.get_or_insert_with(new_token).clone();
                json!({"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": TOKEN_LIFE.as_secs()})
            }
            _ => json!({"errcode": 0, "errmsg": "ok"}),
        }
    }
}

/// A fresh token or ticket: WeChat's are opaque strings of about 140
/// characters.
fn new_token() -> String {
    let mut token = String::from("SIMULATED_");
    token.extend(std::iter::repeat_with(fastrand::alphanumeric).take(128));
    token
}

/// The first value of `name` in a query string or form, as sent.
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_found_by_exact_name() {
        let query = "appid=wx1&access_token=abc&token=x";
        assert_eq!(param(query, "access_token"), Some("abc"));
        assert_eq!(param(query, "token"), Some("x"));
        assert_eq!(param(query, "appid"), Some("wx1"));
        assert_eq!(param(query, "secret"), None);
    }
}
