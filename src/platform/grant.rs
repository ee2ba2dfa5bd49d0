//! The platform's calls to WeChat: the component token (needs the ticket),
//! an authorizer's token (needs the component token and the refresh token,
//! which WeChat may rotate), the push request, the authorization-code
//! exchange and the authorizer list.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::config::{BaseUrl, Secret};
use crate::forward::upstream::HttpClient;
use crate::store::{Registered, Store};
use crate::token::{Grantor, TokenManager};
use crate::wechat::is_token_error;

use super::pushed::Exchange;
use crate::wechat::{self, grant_from, redact, FetchError, Grant};

/// WeChat's path that renews an authorizer's token with the component token.
const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";

/// Errcodes that mean the refresh token will never work again.
pub const REVOKED: [i64; 2] = [61003, 61023];

/// POSTs `body` as JSON to `path` (with `component_access_token` when
/// given) and reads WeChat's answer.
pub async fn call(
    client: &HttpClient,
    base: &BaseUrl,
    path: &str,
    component_token: Option<&str>,
    body: Value,
) -> Result<Value, FetchError> {
    call_up_to(
        client,
        base,
        path,
        component_token,
        body,
        wechat::TOKEN_ANSWER_LIMIT,
    )
    .await
}

/// [`call`] for an answer of up to `limit` bytes: the authorizer list.
pub async fn call_up_to(
    client: &HttpClient,
    base: &BaseUrl,
    path: &str,
    component_token: Option<&str>,
    body: Value,
    limit: usize,
) -> Result<Value, FetchError> {
    let credential = component_token.map(|t| ("component_access_token", t));
    wechat::post_json_up_to(client, base, path, credential, body, limit).await
}

/// Replaces `secret` wherever WeChat echoed it in an error.
pub(super) fn scrub(e: FetchError, secret: &str) -> FetchError {
    redact(e, &[secret])
}

/// How the component token is made: `api_component_token` with the
/// component_appsecret and the newest `component_verify_ticket`.
pub static COMPONENT: Exchange = Exchange {
    store_kind: "component_token",
    path: "/cgi-bin/component/api_component_token",
    fields: [
        "component_appid",
        "component_appsecret",
        "component_verify_ticket",
    ],
    token_field: "component_access_token",
    ticket_refused: &[61005, 61006],
    waiting: |name| {
        format!("waiting for component_verify_ticket: WeChat pushes one every 10 minutes; forward it to POST /platforms/{name}/ticket")
    },
};

/// One authorizer's token source: the platform's component token and the
/// authorizer's refresh token.
pub struct AuthorizerGrant {
    /// `platform/appid`, for logs and errors.
    pub label: String,
    /// The authorizer's appid.
    pub appid: String,
    /// Its kind in the store: one per platform, since two platforms an
    /// account authorized hold different tokens for it.
    pub store_kind: String,
    /// The platform's component_appid.
    pub component_appid: String,
    /// Where WeChat is.
    pub base_url: BaseUrl,
    /// The platform's component token.
    pub component: Arc<TokenManager>,
    /// The current refresh token; replaced (after it is saved) when WeChat
    /// rotates it.
    pub refresh: Mutex<Secret>,
    /// The errcode with which WeChat refused the refresh token for good;
    /// 0 while it works.
    pub revoked: AtomicI64,
    /// Where the registry is kept.
    pub store: Arc<Store>,
}

impl AuthorizerGrant {
    pub(super) fn refresh_token(&self) -> Secret {
        self.refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The refresh token to fetch with: the registry's in a shared store
    /// (another replica may have had it rotated, and the old one then no
    /// longer works; the fleet lease is held, so it is the latest), else the
    /// one held. An authorizer another replica removed is not fetched for.
    async fn latest_refresh_token(&self) -> Result<Secret, FetchError> {
        Ok(match self
            .store
            .authorizer(&self.component_appid, &self.appid)
            .await
        {
            Ok(Some(stored)) if stored != self.refresh_token().expose() => {
                let stored = Secret::new(stored);
                *self.refresh.lock().unwrap_or_else(|e| e.into_inner()) = stored.clone();
                stored
            }
            Ok(None) if self.store.is_shared() => {
                return Err(FetchError::NotReady(
                    "the authorizer was removed from the registry (DELETE /platforms/NAME/authorizers/APPID, on any replica); PUT it again if it authorized the platform again".into(),
                ))
            }
            Ok(_) => self.refresh_token(),
            Err(e) => {
                tracing::warn!(authorizer = %self.label, error = %e, "cannot read the refresh token from the store; using the one held");
                self.refresh_token()
            }
        })
    }

    async fn fetch(&self, client: &HttpClient) -> Result<Grant, FetchError> {
        let refresh = self.latest_refresh_token().await?;
        let body = json!({
            "component_appid": self.component_appid,
            "authorizer_appid": self.appid,
            "authorizer_refresh_token": refresh.expose(),
        });
        let mut component = self.component.token().await.map_err(|e| {
            FetchError::NotReady(format!("no component_access_token to fetch with: {e}"))
        })?;
        let mut retried = false;
        let answer = loop {
            let answer = call(
                client,
                &self.base_url,
                AUTHORIZER_TOKEN,
                Some(component.value()),
                body.clone(),
            )
            .await;
            if answer.is_ok() {
                self.component.accepted(&component, AUTHORIZER_TOKEN);
            }
            match answer {
                Err(FetchError::Refused { errcode, .. })
                    if !retried && is_token_error(crate::config::AppKind::Mp, errcode) =>
                {
                    retried = true;
                    component = self
                        .component
                        .replace(&component, AUTHORIZER_TOKEN)
                        .await
                        .map_err(|e| {
                            FetchError::NotReady(format!(
                                "no component_access_token to fetch with: {e}"
                            ))
                        })?;
                }
                answer => break answer.map_err(|e| redact(e, &[refresh.expose()])),
            }
        };
        if let Err(FetchError::Refused { errcode, .. }) = &answer {
            if REVOKED.contains(errcode) {
                self.revoked.store(*errcode, Ordering::Relaxed);
            }
        }
        let answer = answer?;
        let grant = grant_from(&answer, "authorizer_access_token")?;
        if let Some(rotated) = answer
            .get("authorizer_refresh_token")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != refresh.expose())
        {
            // Kept in memory at once (the old one may be dead already), and
            // the token is only handed out once the new one is saved.
            *self.refresh.lock().unwrap_or_else(|e| e.into_inner()) =
                Secret::new(rotated.to_owned());
            let entry = Registered {
                component_appid: self.component_appid.clone(),
                appid: self.appid.clone(),
                refresh_token: rotated.to_owned(),
            };
            match self.store.rotate(&entry).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(FetchError::NotReady(
                        "the authorizer was removed from the registry while its token was fetched (on any replica); PUT it again if it authorized the platform again".into(),
                    ))
                }
                Err(e) => {
                    return Err(FetchError::NotReady(format!(
                        "WeChat rotated the refresh token and it cannot be saved ({e}); the token is held back until it is"
                    )))
                }
            }
            tracing::info!(authorizer = %self.label, "refresh token rotated and saved");
        }
        Ok(grant)
    }
}

impl Grantor for AuthorizerGrant {
    fn appid(&self) -> &str {
        &self.appid
    }

    fn store_kind(&self) -> &str {
        &self.store_kind
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn grant<'a>(
        &'a self,
        client: &'a HttpClient,
        _secret: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, FetchError>> + Send + 'a>> {
        Box::pin(self.fetch(client))
    }
}
