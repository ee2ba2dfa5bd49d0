//! JS-SDK tickets (`jsapi`, `wx_card`, WeCom's corp and agent tickets), held
//! like the access_token so a fleet makes one fetch per ticket lifetime.
//!
//! Each app has one [`Holder`] per ticket kind its product offers: a
//! [credential cell](crate::engine::cell) whose grant ([`TicketGrant`])
//! fetches with the app's token, so a ticket has every guarantee a token
//! has (lock-free reads, single flight, a fetch that outlives its caller,
//! backoff, the store and fleet lease under the key (appid,
//! `ticket_<kind>`)).
//!
//! What differs: no fetch at start, only on first demand; renewal ahead of
//! expiry only while the ticket is asked for; and a ticket's life counts
//! from when its value was first seen, since WeChat repeats `expires_in`
//! 7200 for a ticket it issued earlier. A fetch needs the token: [`fetch`]
//! takes it from the app's [`TokenManager`], which also replaces it on a
//! token error. A new token leaves the ticket as it is.

mod fetch;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::AppKind;
use crate::engine::cell::{Fresh, Issued, Noun, Outcome, Stamp};
use crate::engine::{self, Ask, Cell, CellError, Grant, Limits, Reason};
use crate::store::{Key, Store, StoreError};
use crate::token::TokenManager;

/// The JS-SDK tickets WeChat issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// mp `jsapi`: signs `wx.config`.
    Jsapi,
    /// mp `wx_card`: signs card pages.
    WxCard,
    /// WeCom's corp ticket: signs `wx.config` for a corp.
    Corp,
    /// WeCom's agent ticket: signs `wx.agentConfig`.
    Agent,
}

impl Kind {
    /// The kinds an app of `kind` has.
    pub fn of(kind: AppKind) -> &'static [Kind] {
        match kind {
            AppKind::Mp => &[Kind::Jsapi, Kind::WxCard],
            AppKind::Wecom => &[Kind::Corp, Kind::Agent],
        }
    }

    /// The name on the status page and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jsapi => "jsapi",
            Kind::WxCard => "wx_card",
            Kind::Corp => "corp",
            Kind::Agent => "agent",
        }
    }

    /// Its kind in the token store.
    fn store_kind(self) -> &'static str {
        match self {
            Kind::Jsapi => "ticket_jsapi",
            Kind::WxCard => "ticket_wx_card",
            Kind::Corp => "ticket_corp",
            Kind::Agent => "ticket_agent",
        }
    }

    /// WeChat's path, and the query before `access_token`.
    fn endpoint(self) -> (&'static str, &'static str) {
        match self {
            Kind::Jsapi => ("/cgi-bin/ticket/getticket", "type=jsapi&"),
            Kind::WxCard => ("/cgi-bin/ticket/getticket", "type=wx_card&"),
            Kind::Corp => ("/cgi-bin/get_jsapi_ticket", ""),
            Kind::Agent => ("/cgi-bin/ticket/get", "type=agent_config&"),
        }
    }
}

/// One ticket as the proxy holds it: its value and its expiry, counted
/// from when this value was first seen.
pub type Ticket = Stamp;

/// Why no ticket could be had: the cell's error.
pub type TicketError = CellError;

/// What the status page shows of a ticket.
#[derive(Debug, Clone)]
pub struct Status {
    /// Which ticket.
    pub kind: Kind,
    /// Life left on the held ticket, if it is valid.
    pub expires_in: Option<Duration>,
    /// The error of the last fetch, if it failed.
    pub last_error: Option<TicketError>,
    /// Successful fetches since start.
    pub fetches: u64,
}

/// A ticket's own bookkeeping, kept in its cell's book.
#[derive(Default)]
pub struct Use {
    /// A request asked for the ticket since the renewal task last brought a
    /// new value or failed: only then is the ticket renewed ahead. So a
    /// ticket asked for during its life gets a successor, one nobody asked
    /// for gets none, and failures are retried in the background only while
    /// requests keep asking.
    asked: bool,
    /// A request ever asked for it: the status page lists it.
    ever_asked: bool,
    /// Whether the renewal task runs (it ends when the ticket is unused).
    renewing: bool,
}

/// A ticket kind's grant: fetched with the app's token.
pub struct TicketGrant {
    /// Which ticket.
    kind: Kind,
    /// The app's token: fetches need it.
    tokens: Arc<TokenManager>,
    /// Flips at shutdown; the renewal task ends then.
    shutdown: watch::Receiver<bool>,
}

/// One ticket kind of one app: a credential cell with the ticket's grant.
pub type Holder = Cell<TicketGrant>;

/// Every ticket of one app.
pub struct Tickets {
    /// One holder per kind the app's product offers.
    holders: Vec<Arc<Holder>>,
}

impl Tickets {
    /// Holders for every ticket kind of `tokens`' app; nothing is fetched
    /// until asked for.
    pub fn new(
        tokens: Arc<TokenManager>,
        store: Arc<Store>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Tickets {
        let kinds = Kind::of(tokens.app().kind);
        Tickets::of_kinds(kinds, tokens, store, limits, shutdown)
    }

    /// Holders for `kinds`, fetched with `tokens` (an app's, an authorizer's,
    /// a corp's) and kept under the appid that token is for; nothing is
    /// fetched until asked for.
    pub fn of_kinds(
        kinds: &[Kind],
        tokens: Arc<TokenManager>,
        store: Arc<Store>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Tickets {
        let holders = kinds
            .iter()
            .map(|&kind| {
                let grant = TicketGrant {
                    kind,
                    tokens: tokens.clone(),
                    shutdown: shutdown.clone(),
                };
                Arc::new(Cell::of(grant, limits, tokens.app()).with_store(store.clone()))
            })
            .collect();
        Tickets { holders }
    }

    /// No tickets: a third-party platform's (its authorizers' tickets are
    /// fetched through the proxy like any call).
    pub fn none() -> Tickets {
        Tickets {
            holders: Vec::new(),
        }
    }

    /// The holder of `kind`, if the app's product has that ticket.
    pub fn get(&self, kind: Kind) -> Option<&Arc<Holder>> {
        self.holders.iter().find(|h| h.grant.kind == kind)
    }

    /// The status of every ticket asked for since start.
    pub fn status(&self) -> Vec<Status> {
        self.holders
            .iter()
            .filter(|h| h.book().extra.ever_asked)
            .map(|h| h.status())
            .collect()
    }
}

impl Holder {
    /// A valid ticket: the held one, or one fetched now. Marks the ticket in
    /// use, so it is renewed ahead of expiry from now on.
    pub async fn ticket(self: &Arc<Self>) -> Result<Arc<Ticket>, TicketError> {
        self.asked();
        match self.current() {
            Some(ticket) => Ok(ticket),
            None => self.refresh_detached(Ask::because(Reason::OnDemand)).await,
        }
    }

    /// What the status page shows.
    pub fn status(&self) -> Status {
        Status {
            kind: self.grant.kind,
            expires_in: self.current().map(|t| t.expires_in()),
            last_error: self.last_error(),
            fetches: self.book().fetches,
        }
    }

    /// Records the demand and starts the renewal task if it is not running.
    fn asked(self: &Arc<Self>) {
        let mut book = self.book();
        let used = &mut book.extra;
        used.asked = true;
        used.ever_asked = true;
        if !used.renewing {
            used.renewing = true;
            let this = self.clone();
            tokio::spawn(async move { this.renew().await });
        }
    }

    /// Renews ahead of expiry and retries after failures while the ticket is
    /// in use; ends when it is not (the next demand starts it again) or at
    /// shutdown.
    async fn renew(&self) {
        self.renew_while(self.grant.shutdown.clone(), |book, _| {
            if !book.extra.asked {
                book.extra.renewing = false;
                return engine::Next::Stop;
            }
            match book.failures.retry_at().or(book.renew_at) {
                Some(at) => engine::Next::At(at, Reason::Ahead),
                // Nothing scheduled yet: the first fetch is under way.
                None => engine::Next::Idle,
            }
        })
        .await
    }
}

impl Grant for TicketGrant {
    type Credential = Ticket;
    type Extra = Use;
    const NOUN: Noun = Noun::Ticket;
    const FIRST_SIGHT: bool = true;
    // The fetch may first wait for a token, then try twice.
    const FETCHES_PER_ATTEMPT: u32 = 3;

    /// Under the appid the token is for: an authorizer's ticket is its own,
    /// not its platform's.
    fn key(&self) -> Key<'_> {
        Key {
            appid: self.tokens.appid(),
            kind: self.kind.store_kind(),
        }
    }

    fn label(&self) -> &str {
        self.tokens.label()
    }

    async fn fetch(&self, cell: &Holder, _ask: &Ask<Ticket>) -> Result<Issued, CellError> {
        fetch::fetch(&self.tokens, self.kind, cell.limits.timeout).await
    }

    fn hold(&self, fresh: Fresh<'_, Ticket>, _: &mut Use) -> Ticket {
        fresh.stamp
    }

    fn settle(&self, ask: &Ask<Ticket>, ok: Option<bool>, used: &mut Use) {
        match ok {
            // A successor: renewed again only if asked for during its life.
            Some(repeated) if ask.reason == Reason::Ahead && !repeated => used.asked = false,
            Some(_) => {}
            // A failure is retried in the background only if asked again.
            None => used.asked = false,
        }
    }

    fn report(&self, _: &Holder, ask: &Ask<Ticket>, outcome: Outcome<'_, Ticket>) {
        let app = self.label();
        let (ticket, reason) = (self.kind.as_str(), ask.reason.as_str());
        match outcome {
            Outcome::Fetched(held, repeated) => tracing::info!(
                app,
                ticket,
                reason,
                repeated,
                expires_in_s = held.expires_in().as_secs(),
                "ticket fetched"
            ),
            Outcome::Failed(e, Some(delay)) => tracing::warn!(
                app, ticket, reason, error = %e, retry_in_ms = delay.as_millis() as u64,
                "ticket fetch failed"
            ),
            Outcome::Failed(e, None) => {
                tracing::warn!(app, ticket, reason, error = %e, "ticket fetch failed")
            }
        }
    }

    fn unshared(&self, _: &Ask<Ticket>, e: &StoreError) {
        tracing::warn!(app = %self.label(), ticket = self.kind.as_str(), error = %e,
            "token store unreachable; fetching the ticket without the fleet lock");
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;
    use crate::config::{Config, Environment, Secret};
    use crate::forward::upstream::HttpClient;
    use crate::token::Grantor;
    use crate::wechat::FetchError;

    struct Env;

    impl Environment for Env {
        fn var(&self, _: &str) -> Option<String> {
            Some("0123456789abcdef0123456789abcdef".into())
        }
    }

    /// An Open Platform authorizer's token source, as the platform has one.
    struct Authorizer;

    impl Grantor for Authorizer {
        fn appid(&self) -> &str {
            "wxauthorizer00001"
        }

        fn store_kind(&self) -> &str {
            "authorizer_token@wx0123456789abcdef"
        }

        fn label(&self) -> &str {
            "saas/wxauthorizer00001"
        }

        fn grant<'a>(
            &'a self,
            _: &'a HttpClient,
            _: &'a Secret,
        ) -> Pin<Box<dyn Future<Output = Result<crate::wechat::Grant, FetchError>> + Send + 'a>>
        {
            Box::pin(async { Err(FetchError::NotReady("not fetched here".into())) })
        }
    }

    #[tokio::test]
    async fn a_ticket_fetched_with_an_authorizers_token_is_kept_under_the_authorizers_appid() {
        let toml = "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                    [apps.saas]\nkind = \"mp\"\nappid = \"wx0123456789abcdef\"\nsecret_env = \"S\"\n";
        let config = Config::parse(std::path::Path::new("test"), toml, &Env).unwrap();
        let app = Arc::new(config.apps[0].clone());
        let client =
            crate::forward::upstream::client(&config.upstream, &app, Default::default()).unwrap();
        let tokens = TokenManager::new(app, &config.upstream, client, None, Arc::new(Env))
            .with_grantor(Arc::new(Authorizer));
        let limits = Limits::of(&config.upstream);
        let (_, shutdown) = watch::channel(false);
        let tickets = Tickets::new(Arc::new(tokens), Arc::new(Store::Memory), limits, shutdown);
        let jsapi = tickets.get(Kind::Jsapi).unwrap();
        let key = jsapi.grant.key();
        assert_eq!((key.appid, key.kind), ("wxauthorizer00001", "ticket_jsapi"));
        assert_eq!(jsapi.grant.label(), "saas/wxauthorizer00001");
    }
}
