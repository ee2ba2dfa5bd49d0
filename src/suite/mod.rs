//! WeCom service providers (企业微信第三方应用): the `suite_ticket` WeCom
//! pushes, the suite token made from it, the optional provider token, and
//! the tokens of the corps that installed the suite, each from its
//! permanent code, on the token engine.
//!
//! Who holds what:
//! - The suite token is a [`TokenManager`] fetching through
//!   a [`pushed::TicketGrant`] (suite_secret + newest ticket); the provider
//!   token one through [`grant::ProviderGrant`]. Both renew ahead with their
//!   own refresher, shared through the store and fleet lease.
//! - The ticket and the corps' events arrive at the admin listener
//!   ([`admin`], verified and decrypted by the Open Platform's push code
//!   with ReceiveId = suite_id); the ticket is kept in the store (30 min).
//! - The registry ([`Accounts`], shared with the Open Platform) maps each
//!   corpid (case-sensitive, as WeCom sends it) to its permanent code (a
//!   secret: store only), when it was last used, a token manager made on
//!   first use, and JS-SDK tickets made on its first ticket or `/jssdk/…`
//!   ask, stored apart from any app's. One scheduler per suite renews ahead
//!   the corp tokens used during their life; an idle corp costs no fetch.

mod admin;
mod grant;

pub use self::admin::answer;
pub use self::grant::is_suite_token_error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::accounts::{self, Account, Accounts, Served, Wiring};
use crate::config::{AppConfig, PlatformConfig, Secret, TokenApi};
use crate::error::LocalError;
use crate::forward::upstream::HttpClient;
use crate::store::{Registered, Store};
use crate::ticket::Tickets;
use crate::token::TokenManager;
use crate::wechat::PLACEHOLDER_TOKEN;

use crate::platform::pushed::{self, PushedTicket};

use self::grant::{CorpGrant, ProviderGrant, TICKET_KIND};

/// How long WeCom's suite_ticket stays valid.
const TICKET_LIFE: Duration = Duration::from_secs(30 * 60);
/// The auth-code exchange WeCom recommends.
pub const EXCHANGE: &str = "/cgi-bin/service/v2/get_permanent_code";

/// What SDKs get instead of the suite token.
pub const SUITE_PLACEHOLDER: &str = "WECHAT_TOKEN_PROXY_SUITE_PLACEHOLDER";
/// What SDKs get instead of the provider token.
pub const PROVIDER_PLACEHOLDER: &str = "WECHAT_TOKEN_PROXY_PROVIDER_PLACEHOLDER";
/// What SDKs get instead of a corp's permanent code.
pub const CODE_PLACEHOLDER: &str = "WECHAT_TOKEN_PROXY_PERMANENT_CODE_PLACEHOLDER";

/// One corp that installed the suite: cheap while idle.
pub type Corp = Account<CorpGrant>;

/// A corp as the request path uses it.
pub type CorpHandle = Served<CorpGrant>;

/// One `[platforms.NAME]` with `kind = "wecom"`.
pub struct Suite {
    /// Its config as the request path sees it: name, suite_id (as appid),
    /// suite_secret, base URL, path rules.
    app: Arc<AppConfig>,
    /// The push keys and the provider.
    config: PlatformConfig,
    /// A customized-app (dk…) template.
    customized: bool,
    /// The suite_ticket, which the suite token is made from.
    ticket: Arc<PushedTicket>,
    /// The suite token.
    suite: Arc<TokenManager>,
    /// The provider token, when configured.
    provider: Option<Arc<TokenManager>>,
    /// The corps by corpid.
    corps: Accounts<CorpGrant>,
    /// Where the ticket, tokens and registry are kept.
    store: Arc<Store>,
    /// The pool of the suite's egress route.
    client: HttpClient,
    /// Signatures of the pushes taken recently, with their timestamps: a
    /// push seen twice is a replay.
    seen: Mutex<HashMap<String, u64>>,
}

impl Suite {
    /// A suite holding nothing yet; [`Suite::start`] loads and runs it.
    pub fn new(config: &PlatformConfig, wiring: &Wiring) -> Suite {
        let app = Arc::new(config.app.clone());
        let suite_config = config.suite.clone().unwrap_or(crate::config::SuiteConfig {
            customized: false,
            provider: None,
        });
        let (ticket, suite) =
            pushed::parent_token(wiring, &app, TICKET_KIND, TICKET_LIFE, &grant::SUITE);
        let provider = suite_config.provider.map(|(corpid, secret)| {
            let provider_app = Arc::new(AppConfig {
                appid: corpid.clone(),
                secret,
                ..config.app.clone()
            });
            let grant = Arc::new(ProviderGrant {
                label: format!("{} (provider)", app.name),
                corpid,
                base_url: app.base_url.clone(),
            });
            wiring.manager(provider_app, grant)
        });
        Suite {
            customized: suite_config.customized,
            config: config.clone(),
            ticket,
            suite,
            provider,
            corps: wiring.accounts(&app),
            store: wiring.store.clone(),
            client: wiring.client.clone(),
            seen: Mutex::new(HashMap::new()),
            app,
        }
    }

    /// The platform's name (its path prefix).
    pub fn name(&self) -> &str {
        &self.app.name
    }

    /// `path` (the suite's prefix included) for the access log: a corp's id
    /// becomes `{corp}`.
    pub fn loggable(&self, path: &str) -> String {
        accounts::loggable(self.name(), path, &["cgi-bin/"], "{corp}")
    }

    /// The suite as the request path sees it.
    pub fn app(&self) -> &Arc<AppConfig> {
        &self.app
    }

    /// The suite token.
    pub fn suite(&self) -> &Arc<TokenManager> {
        &self.suite
    }

    /// The provider token, when configured.
    pub fn provider(&self) -> Option<&Arc<TokenManager>> {
        self.provider.as_ref()
    }

    /// Loads the ticket and the registry, then runs the refreshers and the
    /// renewal scheduler until `shutdown`.
    pub async fn start(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.ticket.load().await;
        match self.store.authorizers(&self.app.appid).await {
            Ok(entries) => {
                let n = entries.len();
                self.insert_all(entries);
                tracing::info!(platform = %self.name(), corps = n, "corp registry loaded");
            }
            Err(e) => {
                tracing::warn!(platform = %self.name(), error = %e, "cannot load the corp registry")
            }
        }
        tokio::spawn(self.suite.clone().run_refresher(shutdown.clone()));
        if let Some(provider) = &self.provider {
            tokio::spawn(provider.clone().run_refresher(shutdown.clone()));
        }
        tokio::spawn(self.run_scheduler(shutdown));
    }

    /// The corp `corpid` (a path segment as sent), its token and tickets,
    /// for a path the route table gave to a corp.
    pub async fn corp(&self, corpid: &str) -> Result<CorpHandle, LocalError> {
        let held = self.corps.get(corpid);
        let corp = match held {
            Some(corp) => corp,
            None => self.registered_elsewhere(corpid).await.ok_or_else(|| {
                LocalError::UnknownAuthorizer {
                    platform: self.name().to_owned(),
                    appid: corpid.to_owned(),
                }
            })?,
        };
        let config = corp.grant.corp.clone();
        Ok(self.corps.serve(corp, &config))
    }

    /// The corp's JS-SDK tickets, made on this first ask: fetched with its
    /// token, stored under the suite_id.
    pub fn tickets(&self, handle: &CorpHandle) -> Arc<Tickets> {
        self.corps.tickets(handle)
    }

    /// A corp another replica registered after this one loaded the
    /// registry: one store lookup, only for a corpid not served here.
    async fn registered_elsewhere(&self, corpid: &str) -> Option<Arc<Corp>> {
        let code = self.corps.registered_elsewhere(corpid).await?;
        self.insert_all(vec![self.entry(corpid.to_owned(), code)]);
        self.corps.read().get(corpid).cloned()
    }

    fn entry(&self, corpid: String, permanent_code: String) -> Registered {
        Registered {
            component_appid: self.app.appid.clone(),
            appid: corpid,
            refresh_token: permanent_code,
        }
    }

    fn new_corp(&self, corpid: &str, code: String) -> Corp {
        let corp = Arc::new(AppConfig {
            appid: corpid.to_owned(),
            token_api: TokenApi::Wecom,
            ..(*self.app).clone()
        });
        Account::new(CorpGrant {
            label: format!("{}/{corpid}", self.name()),
            corp,
            store_kind: format!("corp_token@{}", self.app.appid),
            suite_id: self.app.appid.clone(),
            customized: self.customized,
            suite: self.suite.clone(),
            code: Mutex::new(Secret::new(code)),
            store: self.store.clone(),
        })
    }

    /// Adds or updates corps in memory. A known one gets the new code and
    /// keeps its token (a reset code does not end the token).
    fn insert_all(&self, entries: Vec<Registered>) {
        let renew = |grant: &CorpGrant, code| {
            *grant.code.lock().unwrap_or_else(|e| e.into_inner()) = Secret::new(code);
        };
        let make = |corpid: &str, code| self.new_corp(corpid, code);
        self.corps.insert_all(entries, renew, make);
    }

    /// Saves, then holds, a corp and its permanent code.
    async fn register(&self, corpid: String, code: String) -> Result<(), String> {
        let entries = vec![self.entry(corpid.clone(), code)];
        self.store
            .register(&entries)
            .await
            .map_err(|e| format!("{}: the registry cannot be saved: {e}", self.name()))?;
        tracing::info!(platform = %self.name(), corp = %corpid, "corp registered");
        self.insert_all(entries);
        Ok(())
    }

    /// Removes a corp here and from the store; false if it was unknown.
    async fn unregister(&self, corpid: &str) -> Result<bool, String> {
        let known = self.corps.read().contains_key(corpid)
            || matches!(
                self.store.authorizer(&self.app.appid, corpid).await,
                Ok(Some(_))
            );
        if !known {
            return Ok(false);
        }
        self.store
            .unregister(&self.app.appid, corpid)
            .await
            .map_err(|e| format!("{}: the registry cannot be saved: {e}", self.name()))?;
        self.corps.write().remove(corpid);
        tracing::info!(platform = %self.name(), corp = %corpid, "corp removed");
        Ok(true)
    }

    /// The permanent code of `corpid`, for a body that carries its
    /// placeholder.
    pub async fn permanent_code(&self, corpid: &str) -> Option<Secret> {
        let held = self.corps.get(corpid);
        let corp = match held {
            Some(corp) => corp,
            None => self.registered_elsewhere(corpid).await?,
        };
        Some(corp.grant.code())
    }

    /// Exchanges a corp's `auth_code` through `path` (WeCom's
    /// `v2/get_permanent_code` unless an SDK asked for the first version) and
    /// registers the corp. Returns WeCom's answer with the permanent code
    /// (and the first version's token) replaced by placeholders, and the
    /// corpid.
    pub async fn exchange(
        &self,
        path: &str,
        auth_code: &str,
    ) -> Result<(String, Value), LocalError> {
        let unavailable = |errcode: i64, reason: String| LocalError::TokenUnavailable {
            app: self.name().to_owned(),
            errcode,
            reason,
        };
        let body = json!({"auth_code": auth_code});
        let answer =
            grant::with_suite_token(&self.client, &self.app.base_url, path, &self.suite, body)
                .await;
        let mut answer = answer.map_err(|e| {
            unavailable(
                e.errcode(),
                format!(
                    "get_permanent_code: {}",
                    crate::wechat::redact(e, &[auth_code])
                ),
            )
        })?;
        let corpid = answer
            .pointer("/auth_corp_info/corpid")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let code = answer
            .get("permanent_code")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(corpid), Some(code)) = (corpid, code.filter(|c| !c.is_empty())) else {
            return Err(unavailable(
                -1,
                "get_permanent_code answered without permanent_code or auth_corp_info.corpid"
                    .into(),
            ));
        };
        self.register(corpid.clone(), code)
            .await
            .map_err(|reason| unavailable(-1, reason))?;
        answer["permanent_code"] = json!(CODE_PLACEHOLDER);
        if answer.get("access_token").is_some() {
            answer["access_token"] = json!(PLACEHOLDER_TOKEN);
        }
        Ok((corpid, answer))
    }

    /// Keeps a ticket issued at `issued` (seconds) unless a newer one is
    /// held here or in the store, and ends the suite token's backoff.
    async fn keep_ticket(&self, ticket: String, issued: u64) {
        if !self.ticket.keep(ticket, issued).await {
            return;
        }
        if self.suite.current().is_none() {
            self.suite.end_backoff();
        }
    }

    /// Renews ahead the tokens of the corps used during their life.
    async fn run_scheduler(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.corps
            .run_scheduler(shutdown, |_| true, || async {})
            .await
    }

    /// Why the suite cannot serve yet, if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        crate::accounts::not_ready(
            &self.suite,
            "suite_access_token",
            self.ticket.is_held(),
            "waiting for suite_ticket: WeCom pushes one every 10 minutes (there is no API to ask for one)",
        )
    }

    /// The suite's entry on `GET /platforms` (and `/apps`).
    pub fn status(&self) -> Value {
        let token = |tokens: &TokenManager| {
            let status = tokens.status();
            json!({
                "state": status.state(),
                "expires_in_s": status.expires_in.map(|d| d.as_secs()),
                "last_error": status.last_error.map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
            })
        };
        let (registered, in_use, tickets) = self.corps.counts();
        let ticket = match (self.ticket.is_held(), self.ticket.refused()) {
            (false, _) => "waiting for suite_ticket",
            (true, 0) => "held",
            (true, _) => "refused by WeCom (40085): waiting for the next push",
        };
        json!({
            "name": self.name(),
            "kind": "wecom",
            "suite_id": self.app.appid,
            "customized": self.customized,
            "base_url": self.app.base_url.to_string(),
            "ticket": ticket,
            "suite_token": token(&self.suite),
            "provider_token": self.provider.as_deref().map(token),
            "corps": {"registered": registered, "in_use": in_use},
            "tickets": tickets,
        })
    }
}
