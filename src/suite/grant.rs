//! A WeCom suite's calls to WeCom: the suite token (needs the pushed
//! suite_ticket), the provider token, a corp's token (from its permanent
//! code), and the auth-code exchange. Each token is a grant on the token
//! engine, like the Open Platform's component and authorizer tokens.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::config::{AppConfig, BaseUrl, Secret};
use crate::forward::upstream::HttpClient;
use crate::platform::pushed::Exchange;
use crate::store::Store;
use crate::token::{Grantor, TokenManager};
use crate::wechat::{self, grant_from, redact, FetchError, Grant};

/// The suite_ticket's kind in the store.
pub const TICKET_KIND: &str = "suite_ticket";

/// Errcodes that mean the suite (or provider) token is dead: 40082
/// invalid, 42009 expired.
pub fn is_suite_token_error(errcode: i64) -> bool {
    matches!(errcode, 40082 | 42009)
}

/// POSTs `body` to `path` with the suite token; on 40082/42009 the token
/// is replaced and the call made once more. The engine is told which API
/// refused or accepted the token (`path`), as the Open Platform's calls do.
/// A suite token that cannot be had is [`FetchError::NotReady`].
pub async fn with_suite_token(
    client: &HttpClient,
    base: &BaseUrl,
    path: &str,
    suite: &Arc<TokenManager>,
    body: Value,
) -> Result<Value, FetchError> {
    let not_ready = |e| FetchError::NotReady(format!("no suite_access_token: {e}"));
    let mut token = suite.token().await.map_err(not_ready)?;
    let mut retried = false;
    loop {
        let credential = Some(("suite_access_token", token.value()));
        match wechat::post_json(client, base, path, credential, body.clone()).await {
            Err(FetchError::Refused { errcode, .. })
                if !retried && is_suite_token_error(errcode) =>
            {
                retried = true;
                token = suite.replace(&token, path).await.map_err(not_ready)?;
            }
            answer => {
                if answer.is_ok() {
                    suite.accepted(&token, path);
                }
                return answer;
            }
        }
    }
}

/// How the suite token is made: `get_suite_token` with the suite_secret
/// and the newest suite_ticket.
pub static SUITE: Exchange = Exchange {
    store_kind: "suite_token",
    path: "/cgi-bin/service/get_suite_token",
    fields: ["suite_id", "suite_secret", "suite_ticket"],
    token_field: "suite_access_token",
    ticket_refused: &[40085],
    waiting: |name| {
        format!("waiting for suite_ticket: WeCom pushes one every 10 minutes to the 指令回调 URL and offers no way to ask for one; forward it to POST /platforms/{name}/ticket")
    },
};

/// The provider token's source: the provider's corpid (the manager's
/// appid) and provider_secret (its secret).
pub struct ProviderGrant {
    /// `platform (provider)`, for logs and errors.
    pub label: String,
    /// The provider's corpid.
    pub corpid: String,
    /// Where WeCom is.
    pub base_url: BaseUrl,
}

impl Grantor for ProviderGrant {
    fn appid(&self) -> &str {
        &self.corpid
    }

    fn store_kind(&self) -> &str {
        "provider_token"
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn grant<'a>(
        &'a self,
        client: &'a HttpClient,
        secret: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, FetchError>> + Send + 'a>> {
        Box::pin(async move {
            let body = json!({"corpid": self.corpid, "provider_secret": secret.expose()});
            let path = "/cgi-bin/service/get_provider_token";
            let answer = wechat::post_json(client, &self.base_url, path, None, body)
                .await
                .map_err(|e| redact(e, &[secret.expose()]));
            grant_from(&answer?, "provider_access_token")
        })
    }
}

/// One corp's token source: its permanent code, and the suite token
/// (`get_corp_token`) or, for a customized app, `gettoken` with the code as
/// the corpsecret.
pub struct CorpGrant {
    /// `platform/corpid`, for logs and errors.
    pub label: String,
    /// The corp's config as a WeCom app: corpid, base URL, `gettoken`.
    pub corp: Arc<AppConfig>,
    /// Its kind in the store: one per suite, since two suites a corp
    /// installed hold different tokens for it.
    pub store_kind: String,
    /// The suite_id, the registry's key.
    pub suite_id: String,
    /// A customized-app template: `gettoken`, no suite token.
    pub customized: bool,
    /// The suite token.
    pub suite: Arc<TokenManager>,
    /// The permanent code; replaced when WeCom resets it.
    pub code: Mutex<Secret>,
    /// Where the registry is kept.
    pub store: Arc<Store>,
}

impl CorpGrant {
    /// The permanent code held.
    pub fn code(&self) -> Secret {
        self.code.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The code to fetch with: the registry's in a shared store (another
    /// replica may have had it reset), else the one held. A corp another
    /// replica removed is not fetched for.
    async fn latest_code(&self) -> Result<Secret, FetchError> {
        match self.store.authorizer(&self.suite_id, &self.corp.appid).await {
            Ok(Some(stored)) if stored != self.code().expose() => {
                let stored = Secret::new(stored);
                *self.code.lock().unwrap_or_else(|e| e.into_inner()) = stored.clone();
                Ok(stored)
            }
            Ok(None) if self.store.is_shared() => Err(FetchError::NotReady(
                "the corp was removed from the registry (cancel_auth, or DELETE /platforms/NAME/authorizers/CORPID on any replica)".into(),
            )),
            Ok(_) => Ok(self.code()),
            Err(e) => {
                tracing::warn!(corp = %self.label, error = %e, "cannot read the permanent code from the store; using the one held");
                Ok(self.code())
            }
        }
    }

    async fn fetch(&self, client: &HttpClient) -> Result<Grant, FetchError> {
        let code = self.latest_code().await?;
        if self.customized {
            return wechat::fetch(client, &self.corp, &code, false)
                .await
                .map_err(|e| redact(e, &[code.expose()]));
        }
        let body = json!({"auth_corpid": self.corp.appid, "permanent_code": code.expose()});
        let path = "/cgi-bin/service/get_corp_token";
        let answer = with_suite_token(client, &self.corp.base_url, path, &self.suite, body)
            .await
            .map_err(|e| redact(e, &[code.expose()]));
        grant_from(&answer?, "access_token")
    }
}

impl Grantor for CorpGrant {
    fn appid(&self) -> &str {
        &self.corp.appid
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
