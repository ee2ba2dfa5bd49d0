//! The accounts a parent credential serves: a third-party platform's
//! authorizers, a WeCom suite's corps. Thousands may be registered and few
//! used, so an account costs its map entry until a request names it.
//!
//! Who holds what:
//! - [`Accounts`] maps each account's id (an appid, a case-sensitive
//!   corpid) to an [`Account`]: its grant (the durable secret the parent
//!   holds for it and the fetch), when it was last used, a [`TokenManager`]
//!   made on its first use and JS-SDK tickets made on its first ask.
//! - One scheduler per parent ([`Accounts::run_scheduler`]) renews ahead
//!   the tokens used during their life; an idle account costs no fetch and
//!   no task.
//! - Removing an account drops its token and tickets; the tickets' renewal
//!   ends with them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::config::{AppConfig, Environment, UpstreamSettings};
use crate::engine::Limits;
use crate::forward::upstream::HttpClient;
use crate::jssdk::OnDemand;
use crate::metrics::{AuthorizerObserver, Metrics};
use crate::store::{Registered, Store};
use crate::ticket::{Kind, Tickets};
use crate::token::{Grantor, RefreshObserver, TokenManager};

/// How often the scheduler looks for tokens due for renewal.
const TICK: Duration = Duration::from_secs(1);
/// Longer path segments are not account ids: not worth a store lookup, nor
/// registered.
pub const MAX_ID: usize = 64;

/// One account: cheap while idle.
pub struct Account<G> {
    /// Its credential's source and the fetch.
    pub grant: Arc<G>,
    /// Milliseconds after the registry's epoch of the last request; 0:
    /// never.
    last_used: AtomicU64,
    /// Made on first use.
    tokens: OnceLock<Arc<TokenManager>>,
    /// Its JS-SDK tickets, made on first ask.
    js_sdk: OnDemand,
    /// A renewal started by the scheduler is under way.
    renewing: AtomicBool,
}

impl<G> Account<G> {
    /// An account nobody has used yet.
    pub fn new(grant: G) -> Account<G> {
        Account {
            grant: Arc::new(grant),
            last_used: AtomicU64::new(0),
            tokens: OnceLock::new(),
            js_sdk: OnDemand::default(),
            renewing: AtomicBool::new(false),
        }
    }

    /// Its token manager, once it was used.
    pub fn tokens(&self) -> Option<&Arc<TokenManager>> {
        self.tokens.get()
    }

    /// Whether a request has named it since start.
    pub fn was_used(&self) -> bool {
        self.last_used.load(Ordering::Relaxed) != 0
    }

    /// Its tickets' state by kind, if they were ever asked for.
    pub fn tickets_status(&self) -> Option<Value> {
        self.js_sdk.made().map(|t| crate::jssdk::status(t))
    }
}

/// An account as the request path uses it.
pub struct Served<G> {
    /// Its token.
    pub tokens: Arc<TokenManager>,
    /// Its grant, and its tickets when asked for.
    account: Arc<Account<G>>,
}

impl<G> Served<G> {
    /// Its credential's source.
    pub fn grant(&self) -> &Arc<G> {
        &self.account.grant
    }
}

/// What every account's token manager and tickets share.
pub struct Shared {
    /// The parent's name (its path prefix), for logs.
    pub name: String,
    /// The parent's id: a platform's component_appid, a suite's suite_id.
    /// Tickets are stored under it.
    pub parent: String,
    /// The parent's egress pool.
    pub client: HttpClient,
    /// Fetch limits.
    pub upstream: UpstreamSettings,
    /// For re-read secrets (none of an account's own).
    pub env: Arc<dyn Environment + Send + Sync>,
    /// Counts every account's fetches under the parent's name.
    pub observer: Arc<dyn RefreshObserver>,
    /// Where tokens and tickets are kept.
    pub store: Arc<Store>,
}

/// What a platform or a suite is built with, besides its own config.
pub struct Wiring {
    /// Fetch limits.
    pub upstream: UpstreamSettings,
    /// Its egress pool.
    pub client: HttpClient,
    /// Where its credentials and registry are kept.
    pub store: Arc<Store>,
    /// Where secrets are re-read from.
    pub env: Arc<dyn Environment + Send + Sync>,
    /// Where fetches are counted.
    pub metrics: Arc<Metrics>,
}

impl Wiring {
    /// A parent's own token (a component, suite or provider token) from
    /// `grant`, kept in the store and counted like an app's, under the
    /// name in `app`.
    pub fn manager(&self, app: Arc<AppConfig>, grant: Arc<dyn Grantor>) -> Arc<TokenManager> {
        let observer = Some(self.metrics.clone() as Arc<dyn RefreshObserver>);
        let manager = TokenManager::new(
            app,
            &self.upstream,
            self.client.clone(),
            observer,
            self.env.clone(),
        )
        .with_store(self.store.clone())
        .with_grantor(grant);
        Arc::new(manager)
    }

    /// The registry of the accounts `parent` (a platform's or suite's own
    /// config) serves; their fetches counted under its name.
    pub fn accounts<G: Grantor + 'static>(&self, parent: &AppConfig) -> Accounts<G> {
        Accounts::new(Shared {
            name: parent.name.clone(),
            parent: parent.appid.clone(),
            client: self.client.clone(),
            upstream: self.upstream.clone(),
            env: self.env.clone(),
            observer: Arc::new(AuthorizerObserver::new(self.metrics.clone(), &parent.name)),
            store: self.store.clone(),
        })
    }
}

/// The accounts of one parent, by id.
pub struct Accounts<G> {
    /// The registry.
    map: RwLock<HashMap<Box<str>, Arc<Account<G>>>>,
    /// What their token managers and tickets are made with.
    shared: Shared,
    /// `last_used` counts from here.
    epoch: Instant,
}

impl<G: Grantor + 'static> Accounts<G> {
    /// An empty registry.
    pub fn new(shared: Shared) -> Accounts<G> {
        Accounts {
            map: RwLock::new(HashMap::new()),
            shared,
            epoch: Instant::now(),
        }
    }

    /// The registry, for a look.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, Arc<Account<G>>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry, for a change.
    pub fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, Arc<Account<G>>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The account `id`, if held here.
    pub fn get(&self, id: &str) -> Option<Arc<Account<G>>> {
        self.read().get(id).cloned()
    }

    /// Adds or updates accounts from registry entries. A known one gets the
    /// entry's secret through `renew` and keeps its token, whose backoff
    /// ends (the old secret may be what failed); an unknown one is made by
    /// `make`.
    pub fn insert_all(
        &self,
        entries: Vec<Registered>,
        renew: impl Fn(&G, String),
        make: impl Fn(&str, String) -> Account<G>,
    ) {
        let mut map = self.write();
        for entry in entries {
            match map.get(entry.appid.as_str()) {
                Some(held) => {
                    renew(&held.grant, entry.refresh_token);
                    if let Some(tokens) = held.tokens() {
                        tokens.end_backoff();
                    }
                }
                None => {
                    let account = make(&entry.appid, entry.refresh_token);
                    map.insert(entry.appid.into_boxed_str(), Arc::new(account));
                }
            }
        }
    }

    /// The durable secret (refresh token, permanent code) with which
    /// another replica registered `id` after this one loaded the registry:
    /// one store lookup, only for an id not served here.
    pub async fn registered_elsewhere(&self, id: &str) -> Option<String> {
        if id.is_empty() || id.len() > MAX_ID {
            return None;
        }
        match self.shared.store.authorizer(&self.shared.parent, id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(platform = %self.shared.name, error = %e, "cannot look the account up in the store");
                None
            }
        }
    }

    /// Marks `account` used now and hands it to the request path with its
    /// token manager, made on its first use with `config` (what the manager
    /// reads of an app: kind, base URL, lead time).
    pub fn serve(&self, account: Arc<Account<G>>, config: &Arc<AppConfig>) -> Served<G> {
        let ms = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        account.last_used.store(ms, Ordering::Relaxed);
        let tokens = account
            .tokens
            .get_or_init(|| {
                let shared = &self.shared;
                let manager = TokenManager::new(
                    config.clone(),
                    &shared.upstream,
                    shared.client.clone(),
                    Some(shared.observer.clone()),
                    shared.env.clone(),
                )
                .with_store(shared.store.clone())
                .with_grantor(account.grant.clone());
                Arc::new(manager)
            })
            .clone();
        Served { tokens, account }
    }

    /// The account's JS-SDK tickets, made on this first ask: fetched with
    /// its token, stored under the parent.
    pub fn tickets(&self, served: &Served<G>) -> Arc<Tickets> {
        served.account.js_sdk.get_or_make(|stop| {
            Tickets::of_kinds(
                Kind::of(served.tokens.app().kind),
                served.tokens.clone(),
                Some(&self.shared.parent),
                self.shared.store.clone(),
                Limits::of(&self.shared.upstream),
                stop,
            )
        })
    }

    /// How many are registered, how many were used, and their tickets.
    pub fn counts(&self) -> (usize, usize, Value) {
        let map = self.read();
        let in_use = map.values().filter(|a| a.tokens.get().is_some()).count();
        let tickets = crate::jssdk::summary(map.values().map(|a| &a.js_sdk));
        (map.len(), in_use, tickets)
    }

    /// Every [`TICK`], renews the tokens due whose account was used during
    /// their life and that `renewable` lets through (a revoked one is not),
    /// after `each_tick`: one task for the whole registry. At shutdown, ends
    /// the accounts' ticket renewals too.
    pub async fn run_scheduler<F: Future<Output = ()>>(
        &self,
        mut shutdown: watch::Receiver<bool>,
        renewable: impl Fn(&G) -> bool,
        each_tick: impl Fn() -> F,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => {
                    self.read().values().for_each(|a| a.js_sdk.stop());
                    return;
                }
            }
            let now = Instant::now();
            let due: Vec<(Arc<Account<G>>, Arc<TokenManager>)> = self
                .read()
                .values()
                .filter_map(|a| Some((a.clone(), a.tokens.get()?.clone())))
                .filter(|(a, tokens)| {
                    let used =
                        self.epoch + Duration::from_millis(a.last_used.load(Ordering::Relaxed));
                    !a.renewing.load(Ordering::Relaxed)
                        && renewable(&a.grant)
                        && tokens.renewal_due(used, now)
                })
                .collect();
            each_tick().await;
            for (account, tokens) in due {
                account.renewing.store(true, Ordering::Relaxed);
                tokio::spawn(async move {
                    tokens.renew_ahead().await;
                    account.renewing.store(false, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Why a parent cannot serve yet, if it cannot: its token (`token`, fetched
/// with a pushed ticket: `ticket_held`) is not valid. `waiting` says what
/// the ticket's absence means.
pub fn not_ready(
    token: &TokenManager,
    name: &str,
    ticket_held: bool,
    waiting: &str,
) -> Option<String> {
    // A token another replica fetched (found in the store) serves without
    // this replica ever having seen the ticket.
    let status = token.status();
    if status.expires_in.is_some() {
        return None;
    }
    if !ticket_held {
        return Some(waiting.to_owned());
    }
    Some(match status.last_error {
        Some(e) => format!("no {name}: {e}"),
        None => format!("no {name} fetched yet"),
    })
}

/// `path` for the access log under the parent `name` (a platform's or a
/// suite's prefix): an account's id, the segment after the parent's unless
/// the path is one of the parent's own (under `own`), becomes `stand_in`.
/// Taken in normal form where it has one, so no spelling shows the id.
pub fn loggable(name: &str, path: &str, own: &[&str], stand_in: &str) -> String {
    let normal = crate::forward::route::normalize(path).unwrap_or(Cow::Borrowed(path));
    let after = normal
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(name))
        .unwrap_or("");
    match after.strip_prefix('/') {
        Some(rest) if !rest.is_empty() && !own.iter().any(|p| rest.starts_with(p)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            format!("/{name}/{stand_in}{}", &rest[end..])
        }
        _ => normal.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::loggable;

    #[test]
    fn an_accounts_id_never_shows_in_a_logged_path_however_spelled() {
        let platform = |path| loggable("saas", path, &["cgi-bin/component/", "sns/"], "{a}");
        assert_eq!(
            platform("/saas/wxAPP/cgi-bin/user/get"),
            "/saas/{a}/cgi-bin/user/get"
        );
        assert_eq!(platform("//saas//wxAPP/./cgi-bin"), "/saas/{a}/cgi-bin");
        assert_eq!(platform("/saas/wx%41PP"), "/saas/{a}");
        assert_eq!(platform("/saas/wxAPP/%2F"), "/saas/{a}/%2F");
        assert_eq!(
            platform("/saas/cgi-bin/component/api_query_auth"),
            "/saas/cgi-bin/component/api_query_auth"
        );
        assert_eq!(platform("/saas/sns/oauth2/x"), "/saas/sns/oauth2/x");
        assert_eq!(platform("/other/wxAPP/x"), "/other/wxAPP/x");
        let suite = |path| loggable("crm", path, &["cgi-bin/"], "{corp}");
        assert_eq!(
            suite("/crm/wwCorp/cgi-bin/user/get"),
            "/crm/{corp}/cgi-bin/user/get"
        );
        assert_eq!(suite("/crm/cgi-bin/service/x"), "/crm/cgi-bin/service/x");
    }
}
