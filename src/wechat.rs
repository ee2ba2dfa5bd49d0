//! What the proxy knows of WeChat: the placeholder SDKs get instead of a
//! token, which errcodes mean "this token is no good", the token endpoints,
//! and how a fetch is built, read, and each refusal explained.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use serde::Deserialize;

use crate::config::{AppConfig, AppKind, BaseUrl, Secret, TokenApi};
use crate::error::with_causes;
use crate::forward::body::{buffer_up_to, Buffered, ProxyBody};
use crate::forward::query::encode;
use crate::forward::upstream::HttpClient;

/// What SDKs get instead of a real token when they ask for one. They send it
/// back on every call; the proxy drops it and puts in the real one.
pub const PLACEHOLDER_TOKEN: &str = "WECHAT_TOKEN_PROXY_PLACEHOLDER";

/// Whether `errcode` means "this token is no good" for an app of `kind`.
/// In WeCom 40001 means a bad secret, not a bad token.
pub(crate) fn is_token_error(kind: AppKind, errcode: i64) -> bool {
    matches!(
        (kind, errcode),
        (AppKind::Mp, 40001 | 40014 | 42001) | (AppKind::Wecom, 40014 | 42001)
    )
}

/// A token as WeChat granted it.
pub struct Grant {
    /// The access_token itself.
    pub token: String,
    /// Its lifetime as WeChat stated it.
    pub expires_in: Duration,
}

/// Why a credential fetch failed. Messages name what happened and what to
/// do; none holds the secret or a token. Its `Display` speaks of a token;
/// [`FetchError::describe`] of any credential.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe("token"))]
pub enum FetchError {
    /// WeChat answered with an errcode.
    Refused {
        /// WeChat's errcode.
        errcode: i64,
        /// WeChat's errmsg, as sent.
        errmsg: String,
    },
    /// An HTTP status other than 200.
    Status(u16),
    /// 200, but not the credential's answer.
    BadAnswer(String),
    /// Connecting or talking to WeChat failed.
    Transport(String),
    /// The whole fetch took longer than `token_timeout_ms`.
    Timeout(Duration),
    /// Something the fetch needs is not there yet (a platform's
    /// component_verify_ticket, its component_access_token), or the
    /// credential is gone (a revoked authorizer).
    NotReady(String),
}

fn hint(errcode: i64) -> &'static str {
    match errcode {
        40164 | 60020 => " — add this server's egress IP to the account's IP whitelist",
        40125 | 40001 => " — the AppSecret is wrong: check the secret (a rotated secret_file is re-read)",
        40243 => " — the AppSecret is frozen: unfreeze or reset it in the WeChat console",
        40013 => " — the appid is wrong",
        45009 => " — the daily token quota is used up: clear it with /cgi-bin/clear_quota or wait for tomorrow",
        45011 => " — the per-minute quota is used up",
        89503 | 89501 => " — an administrator must approve this IP in the WeChat console",
        89506 | 89507 => " — the administrator rejected this IP; WeChat blocks retries for a while",
        61005 | 61006 => " — the component_verify_ticket is expired or invalid: the proxy asked WeChat to push a new one; check that pushes reach POST /platforms/NAME/ticket",
        61003 | 61023 => " — the authorizer's refresh token is invalid or revoked: the account must authorize the platform again",
        _ => "",
    }
}

impl FetchError {
    /// What happened, in words about the credential `noun` names (`token`,
    /// `ticket`): one wording for every kind of credential.
    pub fn describe(&self, noun: &str) -> String {
        match self {
            FetchError::Refused { errcode, errmsg } => {
                format!(
                    "WeChat refused the {noun}: {errcode} {errmsg}{}",
                    hint(*errcode)
                )
            }
            FetchError::Status(status) => format!("the {noun} endpoint answered HTTP {status}"),
            FetchError::BadAnswer(what) => {
                format!("the {noun} endpoint answered something that is not a {noun} ({what})")
            }
            FetchError::Transport(what) => format!("cannot reach the {noun} endpoint: {what}"),
            FetchError::Timeout(after) => {
                format!("the {noun} fetch timed out after {} ms", after.as_millis())
            }
            FetchError::NotReady(what) => what.clone(),
        }
    }

    /// The errcode to show clients: WeChat's, or -1 when WeChat gave none.
    pub fn errcode(&self) -> i64 {
        match self {
            FetchError::Refused { errcode, .. } => *errcode,
            _ => -1,
        }
    }

    /// The shortest wait WeChat's rules demand before the next attempt.
    pub fn min_retry_delay(&self) -> Duration {
        const MIN: u64 = 60;
        match self.errcode() {
            45011 => Duration::from_secs(MIN),
            45009 => Duration::from_secs(10 * MIN),
            89503 | 89501 => Duration::from_secs(5 * MIN),
            89507 => Duration::from_secs(60 * MIN),
            89506 => Duration::from_secs(24 * 60 * MIN),
            _ => Duration::ZERO,
        }
    }

    /// Whether WeChat said the secret itself is wrong, so a rotated secret
    /// file is worth re-reading.
    pub fn is_bad_secret(&self) -> bool {
        matches!(self.errcode(), 40001 | 40125 | 40243)
    }
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Fetches a token for `app` once. `force` asks the stable API to revoke the
/// current token and issue a new one.
pub async fn fetch(
    client: &HttpClient,
    app: &AppConfig,
    secret: &Secret,
    force: bool,
) -> Result<Grant, FetchError> {
    let base = &app.base_url;
    let (appid, secret) = (app.appid.as_str(), secret.expose());
    let builder = request();
    let request = match app.token_api {
        TokenApi::Classic => builder.method(Method::GET).uri(format!(
            "{base}/cgi-bin/token?grant_type=client_credential&appid={}&secret={}",
            encode(appid),
            encode(secret)
        )),
        TokenApi::Wecom => builder.method(Method::GET).uri(format!(
            "{base}/cgi-bin/gettoken?corpid={}&corpsecret={}",
            encode(appid),
            encode(secret)
        )),
        TokenApi::Stable => builder
            .method(Method::POST)
            .uri(format!("{base}/cgi-bin/stable_token"))
            .header(header::CONTENT_TYPE, "application/json"),
    };
    let body = match app.token_api {
        TokenApi::Stable => ProxyBody::full(Bytes::from(
            serde_json::json!({
                "grant_type": "client_credential",
                "appid": appid,
                "secret": secret,
                "force_refresh": force,
            })
            .to_string(),
        )),
        _ => ProxyBody::empty(),
    };
    let request = request
        .body(body)
        .map_err(|_| FetchError::BadAnswer("the request could not be built".into()))?;

    let answer: Answer = serde_json::from_value(exchange(client, request).await?)
        .map_err(|_| FetchError::BadAnswer("not a token answer".into()))?;
    match (answer.access_token, answer.expires_in) {
        (Some(token), Some(secs)) if !token.is_empty() => Ok(Grant {
            token,
            expires_in: lifetime(secs)?,
        }),
        _ => Err(FetchError::BadAnswer(
            "no access_token or expires_in".into(),
        )),
    }
}

/// The largest answer read from a token endpoint: a token answer is under
/// 1 KiB.
pub const TOKEN_ANSWER_LIMIT: usize = 64 * 1024;

/// The longest `expires_in` taken as WeChat's word: a week. Tokens and
/// tickets live 7200 s; WeChat says that may change, not by orders of
/// magnitude. Anything beyond is a broken answer, and an instant that far
/// ahead would overflow the clock.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A credential's lifetime from the `expires_in` WeChat stated: from 1 s to
/// [`MAX_LIFETIME`], else a clear error.
pub fn lifetime(secs: u64) -> Result<Duration, FetchError> {
    let lifetime = Duration::from_secs(secs);
    if secs == 0 || lifetime > MAX_LIFETIME {
        return Err(FetchError::BadAnswer(format!(
            "expires_in {secs} is out of range (1 to {} s)",
            MAX_LIFETIME.as_secs()
        )));
    }
    Ok(lifetime)
}

/// Sends a call WeChat answers with small JSON (a token, a ticket, a quota)
/// and reads the answer: not HTTP 200, not JSON, or a non-zero `errcode`
/// become a [`FetchError`]. Errors are described without the URL: it may
/// hold a secret or a token.
pub async fn exchange(
    client: &HttpClient,
    request: Request<ProxyBody>,
) -> Result<serde_json::Value, FetchError> {
    exchange_up_to(client, request, TOKEN_ANSWER_LIMIT).await
}

/// [`exchange`] for an answer of up to `limit` bytes.
pub async fn exchange_up_to(
    client: &HttpClient,
    mut request: Request<ProxyBody>,
    limit: usize,
) -> Result<serde_json::Value, FetchError> {
    request
        .extensions_mut()
        .insert(crate::forward::upstream::FirstInLine);
    let response = client
        .request(request)
        .await
        .map_err(|e| FetchError::Transport(with_causes(&e)))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        return Err(FetchError::Status(status.as_u16()));
    }
    let body = match buffer_up_to(response.into_body(), limit).await {
        Ok(Buffered::Complete(bytes)) => bytes,
        Ok(Buffered::Partial(_)) => {
            return Err(FetchError::BadAnswer(format!("more than {limit} bytes")))
        }
        Err(e) => return Err(FetchError::Transport(e.to_string())),
    };
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| FetchError::BadAnswer(format!("{} bytes that are not JSON", body.len())))?;
    let errcode = answer.get("errcode").and_then(serde_json::Value::as_i64);
    match errcode {
        None | Some(0) => Ok(answer),
        Some(errcode) => Err(FetchError::Refused {
            errcode,
            errmsg: answer
                .get("errmsg")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }),
    }
}

/// POSTs `body` as JSON to `path` under `base`, with `credential` (a query
/// parameter's name and value) when given, and reads the answer as
/// [`exchange`] does: the calls a platform or suite makes with its own
/// credentials.
pub async fn post_json(
    client: &HttpClient,
    base: &BaseUrl,
    path: &str,
    credential: Option<(&str, &str)>,
    body: serde_json::Value,
) -> Result<serde_json::Value, FetchError> {
    post_json_up_to(client, base, path, credential, body, TOKEN_ANSWER_LIMIT).await
}

/// [`post_json`] for an answer of up to `limit` bytes.
pub async fn post_json_up_to(
    client: &HttpClient,
    base: &BaseUrl,
    path: &str,
    credential: Option<(&str, &str)>,
    body: serde_json::Value,
    limit: usize,
) -> Result<serde_json::Value, FetchError> {
    let uri = match credential {
        Some((name, value)) => format!("{base}{path}?{name}={}", encode(value)),
        None => format!("{base}{path}"),
    };
    let request = request()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ProxyBody::full(Bytes::from(body.to_string())))
        .map_err(|_| FetchError::BadAnswer("the request could not be built".into()))?;
    exchange_up_to(client, request, limit).await
}

/// The token named `field` and its `expires_in` out of an answer.
pub fn grant_from(answer: &serde_json::Value, field: &str) -> Result<Grant, FetchError> {
    let token = answer.get(field).and_then(serde_json::Value::as_str);
    let secs = answer.get("expires_in").and_then(serde_json::Value::as_u64);
    match (token, secs) {
        (Some(token), Some(secs)) if !token.is_empty() => Ok(Grant {
            token: token.to_owned(),
            expires_in: lifetime(secs)?,
        }),
        _ => Err(FetchError::BadAnswer(format!("no {field} or expires_in"))),
    }
}

/// `e` with each of `secrets` replaced wherever WeChat echoed it in its
/// errmsg.
pub fn redact(e: FetchError, secrets: &[&str]) -> FetchError {
    match e {
        FetchError::Refused {
            errcode,
            mut errmsg,
        } => {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                errmsg = errmsg.replace(secret, "[redacted]");
            }
            FetchError::Refused { errcode, errmsg }
        }
        e => e,
    }
}

/// A request to WeChat as this proxy sends it: the upstream client's, which
/// its own probes use too.
pub use crate::forward::upstream::request;
