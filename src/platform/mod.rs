//! Third-party platforms (开放平台): the `component_verify_ticket` WeChat
//! pushes, the component token made from it, and the tokens of the accounts
//! that authorized the platform, thousands of them, on the token engine.
//!
//! Who holds what:
//! - The component token is a [`TokenManager`] like an app's, fetching
//!   through a [`pushed::TicketGrant`] (secret + latest ticket): renewed
//!   ahead by its own refresher, shared through the store and fleet lease.
//! - The ticket arrives at the admin listener ([`admin`], decrypted by
//!   [`push`]), is kept in the store (12 h) so a restart or another replica
//!   has it, and ends the component token's backoff at once.
//! - The registry ([`Accounts`], shared with WeCom suites) maps each
//!   authorizer's appid to its refresh token (in [`grant::AuthorizerGrant`]),
//!   when it was last used, and a [`TokenManager`] and JS-SDK tickets made
//!   on first use and first ask only. So 10,000 registered authorizers cost
//!   their map entries, not 10,000 tasks; one scheduler per platform renews
//!   ahead the tokens used during their life.
//! - The registry is loaded from the store in one read at start; when it is
//!   empty and the component token works, it is recovered from WeChat's
//!   `api_get_authorizer_list`.
//! - No live refresh, authorizer or component token leaves: the calls whose
//!   answers hold them are made by the proxy and sealed ([`seal`]).

mod admin;
mod grant;
pub(crate) mod push;
pub(crate) mod pushed;
mod seal;

pub use self::admin::answer;
pub use self::seal::Local;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use crate::accounts::{self, Account, Accounts, Served, Wiring};
use crate::config::{AppConfig, PlatformConfig, Secret, UpstreamSettings};
use crate::error::LocalError;
use crate::forward::upstream::HttpClient;
use crate::store::{Registered, Store};
use crate::ticket::Tickets;
use crate::token::TokenManager;

use self::grant::AuthorizerGrant;
use self::pushed::PushedTicket;

/// How long WeChat's ticket stays valid.
const TICKET_LIFE: Duration = Duration::from_secs(12 * 3600);
/// The ticket's kind in the store.
const TICKET_KIND: &str = "component_verify_ticket";
/// `api_start_push_ticket` at most this often: WeChat pushes every 10 min
/// anyway.
const START_PUSH_INTERVAL: Duration = Duration::from_secs(600);
/// How often a recovery waiting for the component token looks again.
const TICK: Duration = Duration::from_secs(1);
/// `api_get_authorizer_list` page size (WeChat's maximum).
const PAGE: u64 = 500;

/// One authorizer: cheap while idle.
pub type Authorizer = Account<AuthorizerGrant>;

/// An authorizer as the request path uses it.
pub type AuthorizerHandle = Served<AuthorizerGrant>;

/// One `[platforms.NAME]`.
pub struct Platform {
    /// Its config as the request path sees it (name, component_appid,
    /// base URL, path rules); shared by every authorizer's manager.
    app: Arc<AppConfig>,
    /// The push keys.
    config: PlatformConfig,
    /// The component_verify_ticket, which the component token is made from.
    ticket: Arc<PushedTicket>,
    /// The component token.
    component: Arc<TokenManager>,
    /// The authorizers by appid.
    authorizers: Accounts<AuthorizerGrant>,
    /// Where the ticket, tokens and registry are kept.
    store: Arc<Store>,
    /// The pool of the platform's egress route.
    client: HttpClient,
    /// Fetch limits, for the code exchange's fleet lock.
    upstream: UpstreamSettings,
    /// The last `api_start_push_ticket`, for its rate limit.
    last_start_push: Mutex<Option<Instant>>,
    /// Authorization codes exchanged lately: each reaches WeChat once.
    exchanges: seal::Exchanges,
    /// The `msg_signature` of each push taken in the last
    /// [`push::MAX_AGE_S`], with its timestamp: a replay is refused.
    seen_pushes: Mutex<HashMap<String, u64>>,
    /// Serializes removals and the end of a recovery, so a removal made
    /// while the list is read is not undone by it.
    registry_writes: tokio::sync::Mutex<()>,
    /// Set while the registry is recovered from `api_get_authorizer_list`:
    /// the appids removed meanwhile, kept out of what it found.
    recovering: Mutex<Option<HashSet<String>>>,
}

impl Platform {
    /// A platform holding nothing yet; [`Platform::start`] loads and runs it.
    pub fn new(config: &PlatformConfig, wiring: &Wiring) -> Platform {
        let app = Arc::new(config.app.clone());
        let (ticket, component) =
            pushed::parent_token(wiring, &app, TICKET_KIND, TICKET_LIFE, &grant::COMPONENT);
        Platform {
            app,
            config: config.clone(),
            ticket,
            component,
            authorizers: wiring.accounts(&config.app),
            store: wiring.store.clone(),
            client: wiring.client.clone(),
            upstream: wiring.upstream.clone(),
            last_start_push: Mutex::new(None),
            exchanges: seal::Exchanges::default(),
            seen_pushes: Mutex::new(HashMap::new()),
            registry_writes: tokio::sync::Mutex::new(()),
            recovering: Mutex::new(None),
        }
    }

    /// The platform's name (its path prefix).
    pub fn name(&self) -> &str {
        &self.app.name
    }

    /// The platform as the request path sees it.
    pub fn app(&self) -> &Arc<AppConfig> {
        &self.app
    }

    /// The component token.
    pub fn component(&self) -> &Arc<TokenManager> {
        &self.component
    }

    /// Loads the ticket and the registry, then runs the component token's
    /// refresher and the renewal scheduler until `shutdown`.
    pub async fn start(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let started = Instant::now();
        self.ticket.load().await;
        if !self.ticket.is_held() {
            self.ask_for_push().await;
        }
        match self.store.authorizers(&self.app.appid).await {
            Ok(entries) => {
                let n = entries.len();
                self.insert_all(entries);
                tracing::info!(platform = %self.name(), authorizers = n, took_ms = started.elapsed().as_millis() as u64, "authorizer registry loaded");
            }
            Err(e) => {
                tracing::warn!(platform = %self.name(), error = %e, "cannot load the authorizer registry")
            }
        }
        tokio::spawn(self.component.clone().run_refresher(shutdown.clone()));
        if self.registered() == 0 && !matches!(*self.store, Store::Memory) {
            *self.recovering.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
            tokio::spawn(self.clone().recover(shutdown.clone()));
        }
        tokio::spawn(self.run_scheduler(shutdown));
    }

    /// How many authorizers are registered.
    fn registered(&self) -> usize {
        self.authorizers.read().len()
    }

    /// The authorizer `appid` (a path segment as sent) and its token, for a
    /// path the route table gave to an authorizer.
    pub async fn authorizer(&self, appid: &str) -> Result<AuthorizerHandle, LocalError> {
        let unknown = || LocalError::UnknownAuthorizer {
            platform: self.name().to_owned(),
            appid: appid.to_owned(),
        };
        let held = self.authorizers.get(appid);
        let authorizer = match held {
            Some(authorizer) => authorizer,
            None => self
                .registered_elsewhere(appid, None)
                .await
                .ok_or_else(unknown)?,
        };
        let mut revoked = authorizer.grant.revoked.load(Ordering::Relaxed);
        if revoked != 0 {
            // Registered again through another replica, with a new refresh
            // token: that one is worth a try.
            let current = authorizer.grant.refresh_token();
            if let Some(renewed) = self.registered_elsewhere(appid, Some(&current)).await {
                revoked = renewed.grant.revoked.load(Ordering::Relaxed);
            }
        }
        if revoked != 0 {
            return Err(LocalError::TokenUnavailable {
                app: authorizer.grant.label.clone(),
                errcode: revoked,
                reason: "the authorizer's refresh token is invalid or revoked: the account must authorize the platform again (then PUT /platforms/NAME/authorizers/APPID)".into(),
            });
        }
        Ok(self.authorizers.serve(authorizer, &self.app))
    }

    /// The authorizer's JS-SDK tickets, made on this first ask: fetched
    /// with its token, stored under the platform's component_appid.
    pub fn tickets(&self, handle: &AuthorizerHandle) -> Arc<Tickets> {
        self.authorizers.tickets(handle)
    }

    /// `path` (the platform's prefix included) for the access log: an
    /// authorizer's appid becomes `{authorizer}`.
    pub fn loggable(&self, path: &str) -> String {
        accounts::loggable(
            self.name(),
            path,
            &["cgi-bin/component/", "sns/"],
            "{authorizer}",
        )
    }

    /// The authorizer as the store has it, when another replica registered
    /// it (or gave it a refresh token other than `current`) after this one
    /// loaded the registry: one `HGET`, only for an appid not served here.
    async fn registered_elsewhere(
        &self,
        appid: &str,
        current: Option<&Secret>,
    ) -> Option<Arc<Authorizer>> {
        let refresh_token = self.authorizers.registered_elsewhere(appid).await?;
        if current.is_some_and(|c| c.expose() == refresh_token) {
            return None;
        }
        self.insert_all(vec![Registered {
            component_appid: self.app.appid.clone(),
            appid: appid.to_owned(),
            refresh_token,
        }]);
        self.authorizers.read().get(appid).cloned()
    }

    fn new_authorizer(&self, appid: &str, refresh_token: String) -> Authorizer {
        Account::new(AuthorizerGrant {
            label: format!("{}/{appid}", self.name()),
            appid: appid.to_owned(),
            store_kind: format!("authorizer_token@{}", self.app.appid),
            component_appid: self.app.appid.clone(),
            base_url: self.app.base_url.clone(),
            component: self.component.clone(),
            refresh: Mutex::new(Secret::new(refresh_token)),
            revoked: AtomicI64::new(0),
            store: self.store.clone(),
        })
    }

    /// Adds or updates authorizers in memory. A known one gets the new
    /// refresh token and loses its revoked mark, keeping its token.
    fn insert_all(&self, entries: Vec<Registered>) {
        let renew = |grant: &AuthorizerGrant, refresh_token| {
            *grant.refresh.lock().unwrap_or_else(|e| e.into_inner()) = Secret::new(refresh_token);
            grant.revoked.store(0, Ordering::Relaxed);
        };
        let make = |appid: &str, refresh_token| self.new_authorizer(appid, refresh_token);
        self.authorizers.insert_all(entries, renew, make);
    }

    /// Keeps a ticket pushed at `pushed_at` (Unix seconds): in memory, in
    /// the store, and ends the component token's backoff so it is fetched
    /// with it now. False, and nothing changed, when the ticket held here
    /// or in the store was pushed later: a late push never rolls it back.
    pub async fn keep_ticket(&self, ticket: String, pushed_at: u64) -> bool {
        if !self.ticket.keep(ticket, pushed_at).await {
            return false;
        }
        if self.component.current().is_none() {
            self.component.end_backoff();
        }
        true
    }

    /// Records a push by its signature; false if it was taken before.
    fn first_sight(&self, signature: &str, timestamp: u64, now: u64) -> bool {
        let mut seen = self.seen_pushes.lock().unwrap_or_else(|e| e.into_inner());
        // Older ones are refused by age anyway.
        seen.retain(|_, at| at.abs_diff(now) <= push::MAX_AGE_S);
        seen.insert(signature.to_owned(), timestamp).is_none()
    }

    /// `api_start_push_ticket`, at most once per [`START_PUSH_INTERVAL`].
    pub async fn ask_for_push(&self) {
        {
            let mut last = self
                .last_start_push
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < START_PUSH_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let secret = self.component.secret();
        let body = json!({
            "component_appid": self.app.appid,
            "component_secret": secret.expose(),
        });
        let path = "/cgi-bin/component/api_start_push_ticket";
        match grant::call(&self.client, &self.app.base_url, path, None, body).await {
            Ok(_) => {
                tracing::info!(platform = %self.name(), "asked WeChat to push a component_verify_ticket")
            }
            Err(e) => {
                tracing::warn!(platform = %self.name(), error = %e, "api_start_push_ticket failed")
            }
        }
    }

    /// Fills an empty registry from `api_get_authorizer_list` once the
    /// component token works.
    async fn recover(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let token = loop {
            if let Some(token) = self.component.current() {
                break token;
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        };
        let mut offset = 0;
        let mut found = Vec::new();
        loop {
            let body = json!({"component_appid": self.app.appid, "offset": offset, "count": PAGE});
            let path = "/cgi-bin/component/api_get_authorizer_list";
            let page = match grant::call_up_to(
                &self.client,
                &self.app.base_url,
                path,
                Some(token.value()),
                body,
                seal::MAX_COMPONENT_ANSWER,
            )
            .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(platform = %self.name(), error = %e, "cannot recover the authorizer list");
                    self.recovering
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    return;
                }
            };
            let list = page
                .get("list")
                .and_then(|l| l.as_array())
                .cloned()
                .unwrap_or_default();
            for item in &list {
                let field = |f: &str| item.get(f).and_then(|v| v.as_str()).map(str::to_owned);
                if let (Some(appid), Some(refresh_token)) =
                    (field("authorizer_appid"), field("refresh_token"))
                {
                    found.push(Registered {
                        component_appid: self.app.appid.clone(),
                        appid,
                        refresh_token,
                    });
                }
            }
            let total = page
                .get("total_count")
                .and_then(|t| t.as_u64())
                .unwrap_or(0);
            offset += PAGE;
            if list.is_empty() || offset >= total {
                break;
            }
        }
        // Removals wait while what was found is kept: those made while the
        // list was read are left out, and so are authorizers registered
        // meanwhile (their refresh token is newer than the list's).
        let _writes = self.registry_writes.lock().await;
        let removed = self
            .recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let new_here = |found: &mut Vec<Registered>| {
            let held = self.authorizers.read();
            found.retain(|e| !removed.contains(&e.appid) && !held.contains_key(e.appid.as_str()));
        };
        new_here(&mut found);
        if let Err(e) = self.store.recover(&found).await {
            tracing::warn!(platform = %self.name(), error = %e, "cannot save the recovered authorizers");
        } else if self.store.is_shared() {
            // Other replicas may have removed or registered some meanwhile:
            // the shared registry, as the store kept it, is the truth.
            match self.store.authorizers(&self.app.appid).await {
                Ok(mut all) => {
                    new_here(&mut all);
                    found = all;
                }
                Err(e) => {
                    tracing::warn!(platform = %self.name(), error = %e, "cannot read the recovered authorizers back")
                }
            }
        }
        tracing::info!(platform = %self.name(), authorizers = found.len(), left_out = removed.len(), "authorizer registry recovered from api_get_authorizer_list");
        self.insert_all(found);
    }

    /// Renews ahead the tokens of the authorizers used during their life,
    /// unless revoked; asks for a ticket push while WeChat refuses the one
    /// held.
    async fn run_scheduler(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let renewable = |grant: &AuthorizerGrant| grant.revoked.load(Ordering::Relaxed) == 0;
        let each_tick = || async {
            if self.ticket.refused() != 0 {
                self.ask_for_push().await;
            }
        };
        self.authorizers
            .run_scheduler(shutdown, renewable, each_tick)
            .await
    }

    /// Why the platform cannot serve yet, if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        crate::accounts::not_ready(
            &self.component,
            "component_access_token",
            self.ticket.is_held(),
            "waiting for component_verify_ticket",
        )
    }
}
