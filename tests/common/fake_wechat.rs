//! A fake WeChat API server for black-box tests of the proxy.
//!
//! It issues and checks access tokens by the rules of `WECHAT.md` (classic, stable and WeCom
//! endpoints), answers every other path as an API call, records what it saw, and fails on
//! demand. It speaks HTTPS with a throwaway CA (see [`super::tls`]) or plain HTTP.
//!
//! The server runs on its own thread and runtime, so a test may block its own thread (for
//! example in `Proxy::start`, which waits for the proxy's log) while the proxy talks to the
//! fake. Layout: `tokens` holds the rules, `handler` turns requests into answers, `body`
//! makes the answer bodies, `net` accepts connections.

mod body;
mod component;
mod handler;
mod login;
mod net;
mod service;
mod tickets;
mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::tls::{self, TestCa};
pub use body::pattern_byte;

/// The OAuth token the fake's logins hand a user: a user's, not an app's.
pub const USER_TOKEN: &str = "user-oauth-token-0001";
use tokens::Tokens;

/// Which WeChat product an app belongs to: decides its token endpoint and error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppKind {
    /// Official account / mini program: `/cgi-bin/token` and `/cgi-bin/stable_token`.
    Mp,
    /// WeCom (企业微信): `/cgi-bin/gettoken` with corpid and corpsecret.
    WeCom,
}

/// How the fake behaves; the defaults are WeChat's rules with the minutes shrunk to
/// seconds so tests can cross every boundary quickly.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// HTTPS with the test CA (true) or plain HTTP.
    pub tls: bool,
    /// Seconds reported as `expires_in` for a new token.
    pub expires_in: u64,
    /// How long a token really works (42001 after). `Duration::ZERO`, the default, means
    /// `expires_in` seconds; set it shorter to model WeChat ending tokens early.
    pub token_lifetime: Duration,
    /// Classic API: how long the previous token keeps working after a refetch (WeChat: 5 min).
    pub classic_grace: Duration,
    /// Stable API normal mode: a call gets a new token only when the current one has less
    /// than this left (WeChat: 5 min).
    pub stable_window: Duration,
    /// Stable `force_refresh` calls closer together than this get 45011.
    pub force_min_interval: Duration,
    /// How long a JS-SDK ticket lives (every answer reports it in full as
    /// `expires_in`, as WeChat does).
    pub ticket_lifetime: Duration,
    /// A ticket asked for with less than this left is replaced by a new one
    /// (the old one works until its end): WeChat handing out the old ticket
    /// until its last moments. Zero, the default: only once it has ended.
    pub ticket_renew_within: Duration,
    /// Appended to every token issued: bytes a query must carry
    /// percent-encoded (WeChat's own tokens are `[A-Za-z0-9_-]`).
    pub token_suffix: &'static str,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            tls: true,
            expires_in: 7200,
            token_lifetime: Duration::ZERO,
            classic_grace: Duration::from_secs(2),
            stable_window: Duration::from_secs(2),
            force_min_interval: Duration::ZERO,
            ticket_lifetime: Duration::from_secs(7200),
            ticket_renew_within: Duration::ZERO,
            token_suffix: "",
        }
    }
}

/// A failure injected into every token endpoint, to test how the proxy copes.
#[derive(Clone, Debug)]
pub enum FetchFailure {
    /// HTTP 200 with `{"errcode":N,"errmsg":"…"}`, e.g. 40164 for a missing IP whitelist entry.
    Errcode(i64, String),
    /// HTTP 500 with body `internal error`.
    Http500,
    /// HTTP 200, `text/html` body `<html>gateway</html>` (a captive gateway or CDN page).
    NotJson,
    /// Never answers; the connection stays open.
    Hang,
    /// Resets the TCP connection (RST) without answering.
    Reset,
    /// HTTP 200, `application/json`, this body exactly (an odd answer).
    Body(String),
}

/// One API (non-token) request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// The raw query exactly as sent, to check the proxy's rewriting byte for byte.
    pub query: Option<String>,
    /// All request headers, `Host` included.
    pub headers: HeaderMap,
    /// The full request body.
    pub body: Bytes,
    /// Whether the fake accepted its `access_token`.
    pub token_ok: bool,
}

impl Recorded {
    /// Every `access_token` value in the query (the proxy must send exactly one).
    pub fn access_tokens(&self) -> Vec<String> {
        handler::query_values(self.query.as_deref(), "access_token")
    }
}

/// Everything the fake knows, behind one mutex: never held across an await.
struct State {
    /// Apps, tokens and the issuing rules.
    tokens: Tokens,
    /// Calls to any token endpoint, failed ones included.
    token_fetches: usize,
    /// The same, by appid / corpid as sent.
    fetches_by_appid: HashMap<String, usize>,
    /// Stable calls with `force_refresh:true`, refused ones included.
    force_refreshes: usize,
    /// JS-SDK tickets and their rules.
    tickets: tickets::Tickets,
    /// Third-party platforms, their authorizers and counts.
    component: component::Component,
    /// WeCom suites, providers, their corps and counts.
    service: service::Service,
    /// Calls to a ticket endpoint, by kind (`jsapi`, `wx_card`, `corp`,
    /// `agent`), refused ones included.
    ticket_fetches: HashMap<&'static str, usize>,
    /// `clear_quota/v2` calls, refused ones included.
    clear_quota_calls: usize,
    /// `openapi/quota/get` calls.
    quota_gets: usize,
    /// TCP connections accepted.
    connections: usize,
    /// TCP connections open now.
    open_connections: usize,
    /// The most TCP connections open at once.
    max_open_connections: usize,
    /// Every API request, in arrival order.
    requests: Vec<Recorded>,
    /// The failure every token endpoint answers with, if any.
    failure: Option<FetchFailure>,
    /// Wait before every API answer.
    api_delay: Duration,
    /// Wait between issuing a token and answering with it: a client of the
    /// token endpoint that gives up meanwhile leaves WeChat with a token
    /// issued (and, on the classic API, the previous one doomed).
    token_delay: Duration,
    /// Close every reused connection when its next request arrives, unanswered.
    close_reused: bool,
    /// Requests dropped that way.
    dropped_reused: usize,
    /// Connections accepted from now on close after this long without a
    /// request, as servers' keep-alive timeouts do.
    idle_close: Option<Duration>,
}

/// Locks the state; a panicking test thread must not make every later call panic too.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake WeChat server. Dropping it stops the server and removes the CA file.
pub struct FakeWeChat {
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    /// `https://localhost:PORT` (TLS) or `http://127.0.0.1:PORT`: the proxy's upstream base.
    pub base_url: String,
    /// PEM of the test CA, for the proxy's `ca_file` (written in plain mode too).
    pub ca_file: PathBuf,
    /// The CA in DER, for in-process TLS clients ([`FakeWeChat::tls_client_config`]).
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    /// Shared with the server thread.
    state: Arc<Mutex<State>>,
    /// Tells the server thread to stop; taken on drop.
    stop: Option<oneshot::Sender<()>>,
    /// The server thread, joined on drop so the port is closed when drop returns.
    thread: Option<JoinHandle<()>>,
}

impl FakeWeChat {
    /// HTTPS with default options.
    pub async fn start() -> FakeWeChat {
        FakeWeChat::start_with(FakeOptions::default()).await
    }

    /// Starts a server with `opts` on 127.0.0.1 and an ephemeral port.
    pub async fn start_with(opts: FakeOptions) -> FakeWeChat {
        let ca = TestCa::generate();
        let ca_file = unique_ca_path();
        std::fs::write(&ca_file, &ca.ca_pem).expect("write the test CA file");
        let acceptor = opts
            .tls
            .then(|| TlsAcceptor::from(ca.server_config.clone()));
        let scheme_host = if opts.tls {
            "https://localhost"
        } else {
            "http://127.0.0.1"
        };
        let state = Arc::new(Mutex::new(State {
            tickets: tickets::Tickets::new(opts.ticket_lifetime, opts.ticket_renew_within),
            component: component::Component::default(),
            service: service::Service::default(),
            ticket_fetches: HashMap::new(),
            clear_quota_calls: 0,
            quota_gets: 0,
            tokens: Tokens::new(opts),
            token_fetches: 0,
            fetches_by_appid: HashMap::new(),
            force_refreshes: 0,
            connections: 0,
            open_connections: 0,
            max_open_connections: 0,
            requests: Vec::new(),
            failure: None,
            api_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            close_reused: false,
            dropped_reused: 0,
            idle_close: None,
        }));

        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-wechat".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the fake's runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind the fake WeChat server");
                    let _ = ready_tx.send(listener.local_addr().expect("local addr"));
                    tokio::select! {
                        () = net::accept_loop(listener, acceptor, server_state) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here cancels every connection task, hung ones too.
            })
            .expect("spawn the fake's thread");
        let addr = ready_rx
            .await
            .expect("the fake's thread reports its address");

        FakeWeChat {
            addr,
            base_url: format!("{scheme_host}:{}", addr.port()),
            ca_file,
            ca_der: ca.ca_der,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `base_url` + `path_and_query`, for direct requests in tests.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url)
    }

    /// A rustls client config that trusts this fake's CA (for tests that bypass the proxy).
    pub fn tls_client_config(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(&self.ca_der)
    }

    /// Registers an app and the secret its fetches must present (re-adding starts it over).
    pub fn add_app(&self, kind: AppKind, appid: &str, secret: &str) {
        lock(&self.state).tokens.add_app(kind, appid, secret);
    }

    /// Rotates an app's secret: fetches with the old one fail from now on.
    pub fn set_secret(&self, appid: &str, secret: &str) {
        lock(&self.state).tokens.set_secret(appid, secret);
    }

    /// Registers a third-party platform and its component_appsecret.
    pub fn add_platform(&self, component_appid: &str, secret: &str) {
        let mut st = lock(&self.state);
        let entry = (secret.to_owned(), None);
        st.component
            .platforms
            .insert(component_appid.to_owned(), entry);
    }

    /// The ticket WeChat pushed last (the one `api_component_token` accepts).
    pub fn push_ticket(&self, component_appid: &str, ticket: &str) {
        let mut st = lock(&self.state);
        let platform = st
            .component
            .platforms
            .get_mut(component_appid)
            .expect("add_platform first");
        platform.1 = Some(ticket.to_owned());
    }

    /// An account authorizes the platform, with this refresh token.
    pub fn add_authorizer(&self, appid: &str, refresh_token: &str) {
        let mut st = lock(&self.state);
        st.component
            .authorizers
            .insert(appid.to_owned(), refresh_token.to_owned());
    }

    /// An authorization code `api_query_auth` exchanges for `appid`.
    pub fn add_auth_code(&self, code: &str, appid: &str) {
        lock(&self.state)
            .component
            .codes
            .insert(code.to_owned(), appid.to_owned());
    }

    /// The authorizer's refresh token, as WeChat holds it now.
    pub fn refresh_token(&self, appid: &str) -> Option<String> {
        lock(&self.state).component.authorizers.get(appid).cloned()
    }

    /// The account revokes the platform: its refresh token is refused (61023).
    pub fn revoke_authorizer(&self, appid: &str) {
        lock(&self.state).component.revoked.push(appid.to_owned());
    }

    /// The account authorizes the platform again: a new refresh token, the
    /// old revocation forgotten.
    pub fn reauthorize(&self, appid: &str, refresh_token: &str) {
        let mut st = lock(&self.state);
        st.component.revoked.retain(|a| a != appid);
        st.component
            .authorizers
            .insert(appid.to_owned(), refresh_token.to_owned());
    }

    /// Rotate refresh tokens with every authorizer token from now on.
    pub fn set_rotate_refresh_tokens(&self, on: bool) {
        lock(&self.state).component.rotate = on;
    }

    /// Registers a WeCom suite and its suite_secret.
    pub fn add_suite(&self, suite_id: &str, secret: &str) {
        let entry = (secret.to_owned(), None);
        lock(&self.state)
            .service
            .suites
            .insert(suite_id.to_owned(), entry);
    }

    /// The suite_ticket WeCom pushed last (the one `get_suite_token` accepts).
    pub fn push_suite_ticket(&self, suite_id: &str, ticket: &str) {
        let mut st = lock(&self.state);
        let suite = st
            .service
            .suites
            .get_mut(suite_id)
            .expect("add_suite first");
        suite.1 = Some(ticket.to_owned());
    }

    /// Registers a provider's corpid and provider_secret.
    pub fn add_provider(&self, corpid: &str, secret: &str) {
        lock(&self.state)
            .service
            .providers
            .insert(corpid.to_owned(), secret.to_owned());
    }

    /// A corp installs the suite: `auth_code` (usable once) exchanges for
    /// `permanent_code`, which `get_corp_token` takes from then on.
    pub fn install_corp(&self, corpid: &str, auth_code: &str, permanent_code: &str) {
        let mut st = lock(&self.state);
        st.service
            .corps
            .insert(corpid.to_owned(), permanent_code.to_owned());
        st.service
            .codes
            .insert(auth_code.to_owned(), corpid.to_owned());
    }

    /// `get_suite_token` calls so far.
    pub fn suite_fetches(&self) -> usize {
        lock(&self.state).service.suite_fetches
    }

    /// `get_provider_token` calls so far.
    pub fn provider_fetches(&self) -> usize {
        lock(&self.state).service.provider_fetches
    }

    /// `get_corp_token` calls for `corpid` so far.
    pub fn corp_fetches(&self, corpid: &str) -> usize {
        let st = lock(&self.state);
        st.service.corp_fetches.get(corpid).copied().unwrap_or(0)
    }

    /// `get_permanent_code` calls (both versions) so far.
    pub fn permanent_code_exchanges(&self) -> usize {
        lock(&self.state).service.exchanges
    }

    /// `api_component_token` calls so far.
    pub fn component_fetches(&self) -> usize {
        lock(&self.state).component.component_fetches
    }

    /// `api_authorizer_token` calls for `appid` so far.
    pub fn authorizer_fetches(&self, appid: &str) -> usize {
        let st = lock(&self.state);
        st.component
            .authorizer_fetches
            .get(appid)
            .copied()
            .unwrap_or(0)
    }

    /// `api_authorizer_token` calls so far, all authorizers.
    pub fn all_authorizer_fetches(&self) -> usize {
        lock(&self.state)
            .component
            .authorizer_fetches
            .values()
            .sum()
    }

    /// `api_start_push_ticket` calls so far.
    pub fn start_push_calls(&self) -> usize {
        lock(&self.state).component.start_push
    }

    /// `api_get_authorizer_list` calls so far.
    pub fn authorizer_list_calls(&self) -> usize {
        lock(&self.state).component.list_calls
    }

    /// `api_authorizer_token` calls received so far, counted as they arrive
    /// (before the token delay).
    pub fn authorizer_token_arrivals(&self) -> usize {
        lock(&self.state).component.authorizer_token_arrivals
    }

    /// `api_query_auth` calls so far, refused ones included.
    pub fn query_auth_calls(&self) -> usize {
        lock(&self.state).component.query_auth_calls
    }

    /// Every `api_get_authorizer_list` answer waits this long first.
    pub fn set_list_delay(&self, delay: Duration) {
        lock(&self.state).component.list_delay = delay;
    }

    /// Calls to any token endpoint so far, failed ones included.
    pub fn token_fetches(&self) -> usize {
        lock(&self.state).token_fetches
    }

    /// Token endpoint calls naming `appid` (or corpid), failed ones included.
    pub fn token_fetches_for(&self, appid: &str) -> usize {
        let st = lock(&self.state);
        st.fetches_by_appid.get(appid).copied().unwrap_or(0)
    }

    /// Stable calls with `force_refresh:true`, refused ones included.
    pub fn force_refreshes(&self) -> usize {
        lock(&self.state).force_refreshes
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// TCP connections open now (closed ones are counted out once their
    /// task sees the close).
    pub fn open_connections(&self) -> usize {
        lock(&self.state).open_connections
    }

    /// The most TCP connections that were open at once.
    pub fn max_open_connections(&self) -> usize {
        lock(&self.state).max_open_connections
    }

    /// Every API (non-token) request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Every token ever issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state).tokens.issued()
    }

    /// The app's most recently issued token (any endpoint); `None` before the first fetch
    /// and after `revoke`. After `invalidate_in_place` it is the dead token stable still hands out.
    pub fn current_token(&self, appid: &str) -> Option<String> {
        lock(&self.state).tokens.current(appid)
    }

    /// Every token of `appid` stops working now (40001 mp, 40014 WeCom), as if someone
    /// force-refreshed elsewhere; the next fetch of any kind issues a new one.
    pub fn revoke(&self, appid: &str) {
        lock(&self.state).tokens.revoke(appid, Instant::now());
    }

    /// The current stable token stops working for API calls, but normal-mode
    /// `stable_token` keeps returning it; only `force_refresh:true` issues a new one.
    /// Panics if the app has no stable token yet.
    pub fn invalidate_in_place(&self, appid: &str) {
        lock(&self.state)
            .tokens
            .invalidate_in_place(appid, Instant::now());
    }

    /// Makes every token endpoint fail this way until called with `None`.
    pub fn set_fetch_failure(&self, failure: Option<FetchFailure>) {
        lock(&self.state).failure = failure;
    }

    /// Calls to the ticket endpoint of `kind` (`jsapi`, `wx_card`, `corp`,
    /// `agent`), refused ones included.
    pub fn ticket_fetches(&self, kind: &str) -> usize {
        lock(&self.state)
            .ticket_fetches
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Every ticket of `kind` issued so far, oldest first.
    pub fn issued_tickets(&self, kind: &str) -> Vec<String> {
        lock(&self.state).tickets.issued(kind)
    }

    /// Whether WeChat would accept `ticket` in a signature now.
    pub fn ticket_is_live(&self, ticket: &str) -> bool {
        lock(&self.state).tickets.is_live(ticket, Instant::now())
    }

    /// How long WeChat accepts `ticket` from now; zero once it has ended.
    pub fn ticket_life_left(&self, ticket: &str) -> Duration {
        lock(&self.state).tickets.life_left(ticket, Instant::now())
    }

    /// `clear_quota/v2` calls so far, refused ones included.
    pub fn clear_quota_calls(&self) -> usize {
        lock(&self.state).clear_quota_calls
    }

    /// `openapi/quota/get` calls so far.
    pub fn quota_gets(&self) -> usize {
        lock(&self.state).quota_gets
    }

    /// Every token answer waits this long after the token is issued
    /// (`api_authorizer_token`, `api_query_auth` and `get_corp_token`: before).
    pub fn set_token_delay(&self, delay: Duration) {
        lock(&self.state).token_delay = delay;
    }

    /// Every API (non-token) answer waits this long first.
    pub fn set_api_delay(&self, delay: Duration) {
        lock(&self.state).api_delay = delay;
    }
}

impl FakeWeChat {
    /// From now on, a connection that already served a request is closed, unanswered, when
    /// the next request arrives on it: the race of a server's keep-alive timeout firing just
    /// as a pooled connection is reused.
    pub fn set_close_reused(&self, on: bool) {
        lock(&self.state).close_reused = on;
    }

    /// From now on, new connections close after `idle` without a request: a
    /// server's keep-alive timeout, which a pooled connection reused just then
    /// races.
    pub fn set_idle_close(&self, idle: Option<Duration>) {
        lock(&self.state).idle_close = idle;
    }

    /// Requests closed unanswered by [`FakeWeChat::set_close_reused`].
    pub fn dropped_reused(&self) -> usize {
        lock(&self.state).dropped_reused
    }
}

impl Drop for FakeWeChat {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// A CA file name no other fake (in this or another test process) uses.
fn unique_ca_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("fake-wechat-ca-{}-{n}.pem", std::process::id()))
}
