//! The ticket a parent's token is made from, pushed to the admin listener:
//! WeChat's `component_verify_ticket` for a platform, WeCom's
//! `suite_ticket` for a suite. The newest is held here and kept in the
//! store, where an earlier run or another replica (the push reaches one)
//! finds it; an older push never replaces a newer ticket. The parent's
//! token is made from it ([`TicketGrant`]), each kind by its own endpoint
//! ([`Exchange`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde_json::json;

use crate::accounts::Wiring;
use crate::config::{AppConfig, BaseUrl, Secret};
use crate::forward::upstream::HttpClient;
use crate::store::{unix_ms, Key, Saved, Store, StoreError};
use crate::token::{Grantor, TokenManager};
use crate::wechat::{self, grant_from, redact, FetchError, Grant};

/// One parent's pushed ticket.
pub struct PushedTicket {
    /// What it is: its kind in the store, and its name in logs.
    kind: &'static str,
    /// Whose it is: the component_appid or suite_id, the store's key.
    owner: String,
    /// The platform's name, for logs.
    name: String,
    /// How long a ticket works after it was issued.
    life: Duration,
    /// The newest ticket seen. A secret of sorts: never shown.
    held: ArcSwapOption<Secret>,
    /// When the held ticket was issued (Unix seconds; 0: none held).
    issued: AtomicU64,
    /// The errcode with which the token endpoint refused the held ticket on
    /// the last fetch; 0 otherwise.
    refused: AtomicI64,
    /// Where tickets are shared.
    store: Arc<Store>,
}

impl PushedTicket {
    /// None held yet.
    pub fn new(
        kind: &'static str,
        owner: &str,
        name: &str,
        life: Duration,
        store: Arc<Store>,
    ) -> PushedTicket {
        PushedTicket {
            kind,
            owner: owner.to_owned(),
            name: name.to_owned(),
            life,
            held: ArcSwapOption::empty(),
            issued: AtomicU64::new(0),
            refused: AtomicI64::new(0),
            store,
        }
    }

    /// Whether a ticket is held.
    pub fn is_held(&self) -> bool {
        self.held.load().is_some()
    }

    /// The errcode with which the held ticket was refused; 0 if it was not.
    pub fn refused(&self) -> i64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Records that the token endpoint refused the held ticket.
    pub fn refused_with(&self, errcode: i64) {
        self.refused.store(errcode, Ordering::Relaxed);
    }

    fn key(&self) -> Key<'_> {
        Key {
            appid: &self.owner,
            kind: self.kind,
        }
    }

    /// When a saved ticket was issued (Unix seconds).
    fn issued_of(&self, saved: &Saved) -> u64 {
        saved
            .expires_at_ms
            .saturating_sub(self.life.as_millis() as u64)
            / 1000
    }

    /// Takes the ticket kept in the store when it is still valid, not the
    /// one held, and not issued before it. True if one was taken.
    pub async fn take_stored(&self) -> Result<bool, StoreError> {
        let Some(saved) = self.store.load(self.key()).await? else {
            return Ok(false);
        };
        let issued = self.issued_of(&saved);
        if saved.life_left(SystemTime::now()).is_zero()
            || issued < self.issued.load(Ordering::Relaxed)
            || self
                .held
                .load()
                .as_ref()
                .is_some_and(|t| t.expose() == saved.token)
        {
            return Ok(false);
        }
        self.issued.store(issued, Ordering::Relaxed);
        self.held.store(Some(Arc::new(Secret::new(saved.token))));
        Ok(true)
    }

    /// At start: the ticket an earlier run or another replica kept, if
    /// still valid. True if one was taken.
    pub async fn load(&self) -> bool {
        match self.take_stored().await {
            Ok(true) => {
                tracing::info!(platform = %self.name, store = self.store.kind(), "{} taken from the store", self.kind);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(platform = %self.name, error = %e, "cannot read the {} from the store", self.kind);
                false
            }
        }
    }

    /// The ticket to fetch a token with: a newer one another replica kept
    /// (the fleet lease is held), else the one held; `waiting` says why
    /// there is none.
    pub async fn for_fetch(
        &self,
        waiting: impl FnOnce() -> String,
    ) -> Result<Arc<Secret>, FetchError> {
        if let Err(e) = self.take_stored().await {
            tracing::warn!(platform = %self.name, error = %e, "cannot read the {} from the store", self.kind);
        }
        self.held
            .load_full()
            .ok_or_else(|| FetchError::NotReady(waiting()))
    }

    /// Keeps a ticket issued at `issued` (Unix seconds): held, no longer
    /// refused, and saved. False, and nothing changed, when a ticket issued
    /// later is held here or kept in the store: a late push never rolls it
    /// back.
    pub async fn keep(&self, ticket: String, issued: u64) -> bool {
        let newer_in_store = matches!(
            self.store.load(self.key()).await,
            Ok(Some(saved)) if self.issued_of(&saved) > issued
        );
        if newer_in_store || self.issued.load(Ordering::Relaxed) > issued {
            tracing::warn!(platform = %self.name, "a {} older than the one held was not kept", self.kind);
            return false;
        }
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(issued);
        let saved = Saved {
            appid: self.owner.clone(),
            api: self.kind.to_owned(),
            token: ticket.clone(),
            expires_at_ms: unix_ms(issued_at + self.life),
        };
        self.issued.store(issued, Ordering::Relaxed);
        self.held.store(Some(Arc::new(Secret::new(ticket))));
        self.refused.store(0, Ordering::Relaxed);
        if let Err(e) = self.store.save(self.key(), saved).await {
            tracing::warn!(platform = %self.name, error = %e, "cannot save the {}", self.kind);
        }
        tracing::info!(platform = %self.name, "{} received", self.kind);
        true
    }
}

/// A parent's ticket (`kind` in the store, living `life` after issue) and
/// its token, made from it by `exchange`.
pub fn parent_token(
    wiring: &Wiring,
    app: &Arc<AppConfig>,
    kind: &'static str,
    life: Duration,
    exchange: &'static Exchange,
) -> (Arc<PushedTicket>, Arc<TokenManager>) {
    let ticket = Arc::new(PushedTicket::new(
        kind,
        &app.appid,
        &app.name,
        life,
        wiring.store.clone(),
    ));
    let grant = Arc::new(TicketGrant {
        name: app.name.clone(),
        id: app.appid.clone(),
        base_url: app.base_url.clone(),
        ticket: ticket.clone(),
        exchange,
    });
    (ticket, wiring.manager(app.clone(), grant))
}

/// How one kind of parent turns its ticket into its token: WeChat's
/// `api_component_token`, WeCom's `get_suite_token`.
pub struct Exchange {
    /// Its kind in the store.
    pub store_kind: &'static str,
    /// The endpoint.
    pub path: &'static str,
    /// The body's names for the parent's id, its secret and the ticket.
    pub fields: [&'static str; 3],
    /// The answer's name for the token.
    pub token_field: &'static str,
    /// Errcodes that mean the ticket was refused.
    pub ticket_refused: &'static [i64],
    /// Why there is no token yet without a ticket, given the platform's name.
    pub waiting: fn(&str) -> String,
}

/// A parent's token source: its secret (the manager's) and the newest
/// pushed ticket.
pub struct TicketGrant {
    /// The platform's name, for logs and errors.
    pub name: String,
    /// The parent's id: the component_appid or suite_id.
    pub id: String,
    /// Where WeChat or WeCom is.
    pub base_url: BaseUrl,
    /// The newest ticket pushed, here or to another replica (found in the
    /// store).
    pub ticket: Arc<PushedTicket>,
    /// How the ticket becomes a token.
    pub exchange: &'static Exchange,
}

impl Grantor for TicketGrant {
    fn appid(&self) -> &str {
        &self.id
    }

    fn store_kind(&self) -> &str {
        self.exchange.store_kind
    }

    fn label(&self) -> &str {
        &self.name
    }

    fn grant<'a>(
        &'a self,
        client: &'a HttpClient,
        secret: &'a Secret,
    ) -> Pin<Box<dyn Future<Output = Result<Grant, FetchError>> + Send + 'a>> {
        Box::pin(async move {
            let exchange = self.exchange;
            let ticket = self
                .ticket
                .for_fetch(|| (exchange.waiting)(&self.name))
                .await?;
            let [id, secret_field, ticket_field] = exchange.fields;
            let body = json!({
                id: self.id,
                secret_field: secret.expose(),
                ticket_field: ticket.expose(),
            });
            let answer = wechat::post_json(client, &self.base_url, exchange.path, None, body)
                .await
                .map_err(|e| redact(e, &[secret.expose(), ticket.expose()]));
            if let Err(FetchError::Refused { errcode, .. }) = &answer {
                if exchange.ticket_refused.contains(errcode) {
                    self.ticket.refused_with(*errcode);
                }
            }
            grant_from(&answer?, exchange.token_field)
        })
    }
}
