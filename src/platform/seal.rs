//! What keeps a platform's credentials inside the proxy: the calls whose
//! answers carry them are made here, not forwarded, and answered with
//! placeholders.
//!
//! - `api_query_auth` (an SDK's own flow, e.g. wechatpy's `parse_message` of
//!   an "authorized" event) exchanges the one-time code here: the authorizer
//!   is registered and the answer's tokens are placeholders. The same code
//!   pushed with the event, asked through the admin listener or by the SDK
//!   reaches WeChat once; every other asker gets the same answer, on any
//!   replica sharing Redis.
//! - `api_get_authorizer_list` and `api_get_authorizer_info` list refresh
//!   tokens: their answers are read whole (a list page of 500 is ~75 KB)
//!   and every credential field is replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

use crate::config::AppKind;
use crate::error::json_response;
use crate::forward::body::ProxyBody;
use crate::store::{unix_ms, Key, Lock, Registered, Saved};
use crate::wechat::FetchError;
use crate::wechat::{is_token_error, PLACEHOLDER_TOKEN};

use super::{grant, Platform};

/// How long WeChat keeps an authorization code valid: an exchange is
/// remembered that long.
const CODE_LIFE: Duration = Duration::from_secs(3600);
/// How often a replica looks for the answer of an exchange another one is
/// making.
const FLEET_POLL: Duration = Duration::from_millis(50);
/// The largest answer read from a component API: a page of 500 authorizers
/// is about 75 KB, well over the 64 KiB of a token answer.
pub const MAX_COMPONENT_ANSWER: usize = 1024 * 1024;
/// The answer fields that hold a credential, wherever they sit.
const CREDENTIAL_FIELDS: [&str; 5] = [
    "access_token",
    "authorizer_access_token",
    "authorizer_refresh_token",
    "refresh_token",
    "component_access_token",
];

/// A call the platform answers itself, with placeholders for credentials.
pub enum Local<'p> {
    /// `api_query_auth`: exchange the code, register, answer sealed.
    QueryAuth,
    /// A component API whose answer lists credentials; `path` is forwarded.
    Sealed {
        /// `/cgi-bin/component/…`.
        path: &'p str,
    },
}

/// One exchange of a code: the sealed answer, or WeChat's refusal, once it
/// is known. Empty while under way; an attempt that got no answer from
/// WeChat leaves it empty for the next asker.
type Exchange = Arc<OnceCell<Result<Value, FetchError>>>;

/// The authorization codes exchanged (or being exchanged) in the last hour.
/// Holds no credential: the answers kept are sealed.
#[derive(Default)]
pub struct Exchanges(Mutex<HashMap<String, (Instant, Exchange)>>);

impl Exchanges {
    /// The exchange of `code`, new or under way; forgets expired ones.
    fn of(&self, code: &str) -> Exchange {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (at, _)| now.duration_since(*at) < CODE_LIFE);
        map.entry(code.to_owned())
            .or_insert_with(|| (now, Arc::default()))
            .1
            .clone()
    }
}

impl Platform {
    /// Answers a call routed as [`Local`], whose JSON body is `body`.
    pub async fn answer_local(&self, call: Local<'_>, body: &[u8]) -> Response<ProxyBody> {
        let Some(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body).ok() else {
            return refused(
                StatusCode::BAD_REQUEST,
                "the body is not a JSON object, as WeChat's component APIs take",
            );
        };
        if fields
            .get("component_appid")
            .and_then(Value::as_str)
            .is_some_and(|a| a != self.app.appid)
        {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!(
                    "{}: component_appid is not this platform's ({})",
                    self.name(),
                    self.app.appid
                ),
            );
        }
        fields.insert("component_appid".into(), self.app.appid.clone().into());
        let answer = match call {
            Local::QueryAuth => match fields.get("authorization_code").and_then(Value::as_str) {
                Some(code) if !code.is_empty() => self.exchange(code).await,
                _ => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        "api_query_auth without authorization_code",
                    )
                }
            },
            Local::Sealed { path } => {
                self.component_call(path, Value::Object(fields))
                    .await
                    .map(|mut answer| {
                        seal(&mut answer);
                        answer
                    })
            }
        };
        match answer {
            Ok(answer) => json_response(StatusCode::OK, "sealed", &answer),
            // WeChat's own refusal, as WeChat answers it.
            Err(FetchError::Refused { errcode, errmsg }) => json_response(
                StatusCode::OK,
                "sealed",
                &json!({"errcode": errcode, "errmsg": errmsg}),
            ),
            Err(e @ FetchError::NotReady(_)) => refused(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}: {e}", self.name()),
            ),
            Err(e) => refused(StatusCode::BAD_GATEWAY, &format!("{}: {e}", self.name())),
        }
    }

    /// Exchanges an authorization code through `api_query_auth` once,
    /// registers the authorizer, and gives WeChat's answer with placeholders
    /// for its tokens. A code already exchanged (or under way) gets the same
    /// answer without reaching WeChat again.
    pub async fn exchange(&self, code: &str) -> Result<Value, FetchError> {
        let exchange = self.exchanges.of(code);
        let answer = exchange
            .get_or_try_init(|| self.exchange_in_fleet(code))
            .await?;
        answer.clone()
    }

    /// With a shared store, the exchange is made by one replica under the
    /// fleet lock and its answer kept in the store an hour: WeChat's push
    /// and the SDK's call may reach different replicas.
    async fn exchange_in_fleet(&self, code: &str) -> Result<Result<Value, FetchError>, FetchError> {
        if !self.store.is_shared() {
            return self.exchange_once(code).await;
        }
        // The store holds a digest, not the code.
        let digest = ring::digest::digest(&ring::digest::SHA256, code.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let kind = format!("authorization_code:{hex}");
        let key = Key {
            appid: &self.app.appid,
            kind: &kind,
        };
        let give_up_at = Instant::now() + self.upstream.token_timeout;
        loop {
            if let Ok(Some(saved)) = self.store.load(key).await {
                if let Ok(kept) = serde_json::from_str::<Value>(&saved.token) {
                    return Ok(from_kept(kept));
                }
            }
            match self.store.lock(key, self.upstream.token_timeout).await {
                Ok(Lock::Busy) if Instant::now() < give_up_at => {
                    tokio::time::sleep(FLEET_POLL).await;
                }
                Ok(Lock::Acquired(lock)) => {
                    let answer = self.exchange_once(code).await;
                    if let Ok(known) = &answer {
                        let kept = match known {
                            Ok(sealed) => sealed.clone(),
                            Err(FetchError::Refused { errcode, errmsg }) => {
                                json!({"errcode": errcode, "errmsg": errmsg})
                            }
                            Err(e) => json!({"errcode": e.errcode(), "errmsg": e.to_string()}),
                        };
                        let saved = Saved {
                            appid: self.app.appid.clone(),
                            api: kind.clone(),
                            token: kept.to_string(),
                            expires_at_ms: unix_ms(SystemTime::now() + CODE_LIFE),
                        };
                        if let Err(e) = self.store.save(key, saved).await {
                            tracing::warn!(platform = %self.name(), error = %e, "cannot keep an authorization code's answer for the other replicas");
                        }
                    }
                    if let Err(e) = self.store.unlock(lock).await {
                        tracing::warn!(platform = %self.name(), error = %e, "cannot release the fleet lock");
                    }
                    return answer;
                }
                // The store is down, or the holder never finished: the code
                // goes to WeChat from here.
                _ => return self.exchange_once(code).await,
            }
        }
    }

    /// `api_query_auth` itself. `Err` when WeChat gave no answer (the next
    /// asker tries again: a code WeChat did spend then gets its refusal);
    /// `Ok` with WeChat's verdict otherwise.
    async fn exchange_once(&self, code: &str) -> Result<Result<Value, FetchError>, FetchError> {
        let body = json!({"component_appid": self.app.appid, "authorization_code": code});
        match self
            .component_call("/cgi-bin/component/api_query_auth", body)
            .await
        {
            Ok(answer) => Ok(self.keep_authorization(answer).await),
            Err(e @ (FetchError::Refused { .. } | FetchError::BadAnswer(_))) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Registers the authorizer `api_query_auth` answered for, and seals the
    /// answer.
    async fn keep_authorization(&self, mut answer: Value) -> Result<Value, FetchError> {
        let info = &answer["authorization_info"];
        let field = |f: &str| info.get(f).and_then(Value::as_str).map(str::to_owned);
        let (Some(appid), Some(refresh_token)) =
            (field("authorizer_appid"), field("authorizer_refresh_token"))
        else {
            return Err(FetchError::BadAnswer(
                "api_query_auth answered without authorizer_appid or authorizer_refresh_token"
                    .into(),
            ));
        };
        let entry = Registered {
            component_appid: self.app.appid.clone(),
            appid: appid.clone(),
            refresh_token,
        };
        // The code is spent: the refresh token is held even when the store
        // fails, and the account served.
        if let Err(e) = self.store.register(std::slice::from_ref(&entry)).await {
            tracing::error!(platform = %self.name(), error = %e, "an authorizer's refresh token cannot be saved: it is held in memory only, and lost at restart");
        }
        self.insert_all(vec![entry]);
        tracing::info!(platform = %self.name(), "authorizer registered from an authorization code");
        seal(&mut answer);
        Ok(answer)
    }

    /// Whether WeChat takes `refresh_token` for `appid`; gives the refresh
    /// token to keep (WeChat may have rotated it in the check).
    pub async fn check_refresh_token(
        &self,
        appid: &str,
        refresh_token: &str,
    ) -> Result<String, FetchError> {
        let body = json!({
            "component_appid": self.app.appid,
            "authorizer_appid": appid,
            "authorizer_refresh_token": refresh_token,
        });
        let answer = self
            .component_call("/cgi-bin/component/api_authorizer_token", body)
            .await
            .map_err(|e| grant::scrub(e, refresh_token))?;
        Ok(answer
            .get("authorizer_refresh_token")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or(refresh_token)
            .to_owned())
    }

    /// POSTs `body` to a component API with the component token, once more
    /// with a new one if WeChat refuses it, reading up to
    /// [`MAX_COMPONENT_ANSWER`].
    pub(super) async fn component_call(
        &self,
        path: &str,
        body: Value,
    ) -> Result<Value, FetchError> {
        let no_token = |e: crate::token::RefreshError| {
            FetchError::NotReady(format!("no component_access_token: {e}"))
        };
        let mut token = self.component.token().await.map_err(no_token)?;
        let mut retried = false;
        loop {
            let answer = grant::call_up_to(
                &self.client,
                &self.app.base_url,
                path,
                Some(token.value()),
                body.clone(),
                MAX_COMPONENT_ANSWER,
            )
            .await;
            match answer {
                Err(FetchError::Refused { errcode, .. })
                    if !retried && is_token_error(AppKind::Mp, errcode) =>
                {
                    retried = true;
                    token = self
                        .component
                        .replace(&token, path)
                        .await
                        .map_err(no_token)?;
                }
                answer => {
                    if answer.is_ok() {
                        self.component.accepted(&token, path);
                    }
                    return answer;
                }
            }
        }
    }
}

/// Replaces every credential field's string value, at any depth, with the
/// placeholder.
pub fn seal(value: &mut Value) {
    match value {
        Value::Object(fields) => seal_fields(fields),
        Value::Array(items) => items.iter_mut().for_each(seal),
        _ => {}
    }
}

fn seal_fields(fields: &mut Map<String, Value>) {
    for (name, value) in fields.iter_mut() {
        match value {
            Value::String(s) if CREDENTIAL_FIELDS.contains(&name.as_str()) => {
                *s = PLACEHOLDER_TOKEN.to_owned();
            }
            other => seal(other),
        }
    }
}

/// An exchange's answer as another replica kept it: the sealed answer, or
/// WeChat's refusal.
fn from_kept(kept: Value) -> Result<Value, FetchError> {
    match kept.get("errcode").and_then(Value::as_i64) {
        Some(errcode) if errcode != 0 => Err(FetchError::Refused {
            errcode,
            errmsg: kept
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }),
        _ => Ok(kept),
    }
}

fn refused(status: StatusCode, errmsg: &str) -> Response<ProxyBody> {
    json_response(status, "error", &json!({"errcode": -1, "errmsg": errmsg}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_field_is_sealed_at_any_depth_and_nothing_else() {
        let mut answer = json!({
            "total_count": 2,
            "list": [
                {"authorizer_appid": "wx1", "refresh_token": "live-1", "auth_time": 1},
                {"authorizer_appid": "wx2", "refresh_token": "live-2", "auth_time": 2},
            ],
            "authorization_info": {
                "authorizer_access_token": "live-a",
                "authorizer_refresh_token": "live-r",
                "expires_in": 7200,
                "func_info": [{"funcscope_category": {"id": 1}}],
            },
        });
        seal(&mut answer);
        let text = answer.to_string();
        assert!(!text.contains("live"), "{text}");
        assert_eq!(answer["list"][1]["refresh_token"], PLACEHOLDER_TOKEN);
        assert_eq!(answer["list"][1]["authorizer_appid"], "wx2");
        assert_eq!(answer["authorization_info"]["expires_in"], 7200);
        assert_eq!(
            answer["authorization_info"]["func_info"][0]["funcscope_category"]["id"],
            1
        );
    }
}
