//! The HTTP client that talks to WeChat: TLS with rustls, a keep-alive pool
//! capped per app, connect timeouts, and optionally an HTTP CONNECT tunnel
//! through a fixed-IP egress proxy. Each app has a client of its own; it
//! serves the app's API calls and token fetches.
//!
//! The pool is this file's own, not hyper-util's: that one cannot cap
//! connections (it races a checkout against a new connect and keeps the
//! loser), and a sidecar in front of 5,000 clients must not open 2,700
//! connections to WeChat. Here every open connection holds one of `cap`
//! permits; a request that finds no idle connection and no permit waits,
//! first come first served, for whichever comes first: a connection coming
//! back, or a permit freed by one that closed. Idle connections close after
//! an idle timeout, on a timer, not only when the next request comes.
//!
//! A pooled connection can be found dead just as a request goes out on it
//! (the server's keep-alive timeout fired: closed, reset, or hyper gave up
//! on it before writing). A request hyper hands back unwritten goes again at
//! once on a fresh connection, whatever its method or body; one that was
//! written on a connection that then closed unanswered is the proxy's to
//! send again ([`Error::reused`] tells it the connection had served a
//! request before).
//!
//! With fallback hosts, [`failover::Hosts`] picks the host of each request
//! and a request whose connection could not be made tries the next one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::config::{AppConfig, BaseUrl, UpstreamSettings};
use crate::forward::body::ProxyBody;
use crate::forward::failover::{self, Hosts};

/// The client every upstream request of one app goes through.
#[derive(Clone)]
pub struct HttpClient {
    /// The connections, idle and open, and who waits for one.
    pool: Arc<Pool>,
    /// The app's WeChat hosts, when it has fallbacks.
    hosts: Option<Arc<Hosts>>,
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection: TCP, the egress tunnel or TLS failed.
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed while the request went out or the answer's
    /// head came in.
    #[error("the request failed")]
    Send {
        /// hyper's account (closed, reset, a body that failed).
        #[source]
        source: hyper::Error,
        /// Whether the connection had carried a request before this one.
        reused: bool,
    },
    /// The URI names no scheme or host.
    #[error("the request URI has no scheme or host")]
    NoHost,
}

impl Error {
    /// Whether no connection could be opened.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }

    /// Whether the request went out on a connection that had served one
    /// before (so the server may have closed it as it was sent).
    pub fn reused(&self) -> bool {
        matches!(self, Error::Send { reused: true, .. })
    }
}

/// A request to WeChat as this proxy sends it (its own User-Agent): token
/// and ticket fetches, and the probe of a primary host.
pub fn request() -> http::request::Builder {
    Request::builder().header(
        header::USER_AGENT,
        concat!("wechat-token-proxy/", env!("CARGO_PKG_VERSION")),
    )
}

/// Marks a request (by its extensions) that waits at the head of the queue
/// at the connection cap, not at its end: a token or ticket fetch, which
/// every queued call that met a dead token is waiting for. Behind them it
/// would outlast `token_timeout_ms` under load.
#[derive(Clone, Copy, Debug)]
pub struct FirstInLine;

impl HttpClient {
    /// Sends `request` on a pooled connection, or a new one while fewer than
    /// the cap are open; else waits for one. The URI must be absolute.
    /// Not an `async fn`: it hands back `send`'s future rather than one
    /// around it, a level less to copy on every request.
    pub fn request(
        &self,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, Error>> + '_ {
        self.send(request, false)
    }

    /// Sends `request` on a new connection that is closed afterwards (still
    /// counted against the cap).
    pub fn request_fresh(
        &self,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, Error>> + '_ {
        self.send(request, true)
    }

    /// The base URL calls go to now: `base_url`, or the fallback serving
    /// while it cannot be reached.
    pub fn upstream(&self) -> Option<&BaseUrl> {
        self.hosts.as_deref().map(Hosts::active)
    }

    async fn send(
        &self,
        mut request: Request<ProxyBody>,
        fresh: bool,
    ) -> Result<Response<Incoming>, Error> {
        let Some(hosts) = self
            .hosts
            .as_ref()
            .filter(|h| h.aims_at_primary(request.uri()))
        else {
            return self.pool.send(request, fresh).await.into_result();
        };
        let mut order = hosts.order();
        let first = order.next().expect("at least the primary");
        // The request was built on the primary.
        let mut aimed = 0;
        let mut at = first;
        loop {
            hosts.aim(&mut request, aimed, at);
            aimed = at;
            // A streamed upload keeps the host quiet while it goes out: its
            // wait says nothing about the host.
            let watched = matches!(request.body(), ProxyBody::Full(_));
            let flight = watched.then(|| hosts.sent(at));
            let unsent = match self.pool.send(request, fresh).await {
                Attempt::Answered(response) => {
                    match flight {
                        Some(flight) => flight.answered(),
                        None => hosts.spoke(at),
                    }
                    if at != first {
                        hosts.switch(first, at, "it cannot be connected to");
                    }
                    self.probe_if_needed(hosts);
                    return Ok(response);
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::NotSent(e, back) => {
                    if let Some(flight) = flight {
                        flight.not_sent();
                    }
                    (e, back)
                }
            };
            let (error, back) = unsent;
            match order.next() {
                Some(next) => {
                    tracing::debug!(
                        from = %hosts.active(),
                        error = %crate::error::with_causes(&error),
                        "no connection to a WeChat host; trying the next"
                    );
                    request = back;
                    at = next;
                }
                None => return Err(error),
            }
        }
    }

    /// Starts probing the primary once a fallback serves.
    fn probe_if_needed(&self, hosts: &Arc<Hosts>) {
        if hosts.start_probing() {
            tokio::spawn(probe(Arc::downgrade(&self.pool), hosts.clone()));
        }
    }
}

/// Tries the primary every [`failover::PROBE_EVERY`] while a fallback
/// serves, with a request that carries nothing of the app's, on a connection
/// of its own; any HTTP answer within the bound brings traffic back.
async fn probe(pool: Weak<Pool>, hosts: Arc<Hosts>) {
    loop {
        tokio::time::sleep(failover::PROBE_EVERY).await;
        if !hosts.keep_probing() {
            return;
        }
        let Some(pool) = pool.upgrade() else { return };
        let primary = hosts.primary();
        let request = request()
            .uri(format!("{primary}/"))
            .body(ProxyBody::empty());
        let Ok(request) = request else { return };
        // Twice the bound: one for the connection, one for the answer.
        let answer =
            tokio::time::timeout(hosts.probe_timeout() * 2, pool.send(request, true)).await;
        match answer {
            Ok(Attempt::Answered(_)) => {
                hosts.healed();
                if !hosts.keep_probing() {
                    return;
                }
            }
            Ok(Attempt::NotSent(e, _) | Attempt::Failed(e)) => {
                tracing::debug!(primary = %primary, error = %crate::error::with_causes(&e), "the primary WeChat host still fails");
            }
            Err(_) => {
                tracing::debug!(primary = %primary, "the primary WeChat host still does not answer")
            }
        }
    }
}

/// What became of one request on the pool.
enum Attempt {
    /// A response head came.
    Answered(Response<Incoming>),
    /// It was never written (no connection, or one that died first): the
    /// request as given, free to go elsewhere.
    NotSent(Error, Request<ProxyBody>),
    /// It failed after (maybe) being written.
    Failed(Error),
}

impl Attempt {
    fn into_result(self) -> Result<Response<Incoming>, Error> {
        match self {
            Attempt::Answered(response) => Ok(response),
            Attempt::NotSent(e, _) | Attempt::Failed(e) => Err(e),
        }
    }
}

/// Where a connection goes: requests are pooled by scheme and host.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    /// http or https.
    scheme: Scheme,
    /// host:port.
    authority: Authority,
}

/// The connections of one client.
struct Pool {
    /// Opens connections: TCP (or a tunnel), then TLS for https.
    connector: HttpsConnector<Egress>,
    /// One permit per open connection, held by its connection task.
    open: Arc<Semaphore>,
    /// Idle connections older than this are closed.
    idle_timeout: Duration,
    /// A connection not ready within this (TCP, tunnel, TLS, handshake)
    /// fails.
    connect_timeout: Duration,
    /// Idle connections and waiting requests.
    state: Mutex<State>,
    /// Whether the task that closes idle connections runs.
    reaping: AtomicBool,
}

/// What the pool's lock guards.
#[derive(Default)]
struct State {
    /// Ready connections, the most recently used last.
    idle: Vec<Idle>,
    /// Requests waiting for a connection to come back, oldest first.
    waiters: VecDeque<(Key, oneshot::Sender<SendRequest<ProxyBody>>)>,
}

/// How a request gets its connection.
enum Reserved {
    /// An idle one, ready now.
    Idle(SendRequest<ProxyBody>),
    /// None idle, but room for a new one.
    Permit(OwnedSemaphorePermit),
    /// A new one that is not kept: wait for a permit.
    Fresh,
    /// At the cap: wait in line.
    Wait(oneshot::Receiver<SendRequest<ProxyBody>>),
}

/// A ready connection nobody uses.
struct Idle {
    /// Where it goes.
    key: Key,
    /// Its request side; dropping it closes the connection.
    sender: SendRequest<ProxyBody>,
    /// When it came back: it closes `idle_timeout` later.
    since: Instant,
}

impl Pool {
    /// Sends `request`; hands it back unwritten when no connection could be
    /// made or the one used died before writing it. A pooled connection
    /// that died so is replaced, once, by a fresh one: a loop here rather
    /// than a second call, since every level of future on this path is
    /// copied on every request.
    async fn send(self: &Arc<Self>, mut request: Request<ProxyBody>, mut fresh: bool) -> Attempt {
        let uri = request.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Attempt::Failed(Error::NoHost);
        };
        let key = Key {
            scheme: scheme.clone(),
            authority: authority.clone(),
        };
        if !request.headers().contains_key(header::HOST) {
            let Ok(host) = HeaderValue::from_str(key.authority.as_str()) else {
                return Attempt::Failed(Error::NoHost);
            };
            request.headers_mut().insert(header::HOST, host);
        }
        // HTTP/1.1 to an origin server: the request line holds the path only.
        let origin = match request.uri().path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        let dst = std::mem::replace(request.uri_mut(), origin);
        let first = request.extensions().get::<FirstInLine>().is_some();
        loop {
            // The common case, an idle connection, needs no await; the
            // others are boxed so that every request's future (and so every
            // busy client connection) does not carry the size of a connect.
            let connected = match self.reserve(&key, fresh, first) {
                Reserved::Idle(sender) => Ok((sender, true)),
                Reserved::Permit(permit) => Box::pin(self.connect(dst.clone(), permit))
                    .await
                    .map(|s| (s, false)),
                Reserved::Fresh => {
                    let connect = async {
                        let permit = self
                            .open
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("never closed");
                        self.connect(dst.clone(), permit).await
                    };
                    Box::pin(connect).await.map(|s| (s, false))
                }
                Reserved::Wait(waiting) => Box::pin(self.wait(&key, dst.clone(), waiting)).await,
            };
            let (mut sender, reused) = match connected {
                Ok(connected) => connected,
                Err(e) => {
                    *request.uri_mut() = dst;
                    return Attempt::NotSent(e, request);
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    if !fresh {
                        // Back to the pool once the answer's body has been
                        // read; a connection the server closes (or whose
                        // body is abandoned) never comes back.
                        let pool = self.clone();
                        tokio::spawn(async move {
                            if sender.ready().await.is_ok() {
                                pool.put(key, sender);
                            }
                        });
                    }
                    return Attempt::Answered(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        let e = e.into_error();
                        tracing::debug!(error = %crate::error::with_causes(&e), "a pooled connection died before the request was written; sending it on a new one");
                        request = back;
                        fresh = true;
                    }
                    Some(mut back) => {
                        *back.uri_mut() = dst;
                        let source = e.into_error();
                        return Attempt::NotSent(Error::Send { source, reused }, back);
                    }
                    None => {
                        return Attempt::Failed(Error::Send {
                            source: e.into_error(),
                            reused,
                        })
                    }
                },
            }
        }
    }

    /// An idle connection to `key`, else a permit to open one while under
    /// the cap, else a place in the queue for one coming back.
    fn reserve(&self, key: &Key, fresh: bool, first: bool) -> Reserved {
        if fresh {
            return Reserved::Fresh;
        }
        let mut state = self.state.lock().expect("pool lock");
        if let Some(sender) = state.take_idle(key, self.idle_timeout) {
            tracing::trace!(host = %key.authority, "reusing an idle upstream connection");
            return Reserved::Idle(sender);
        }
        match self.open.clone().try_acquire_owned() {
            Ok(permit) => Reserved::Permit(permit),
            Err(_) => {
                tracing::debug!(host = %key.authority, "upstream connection cap reached; the request waits for one");
                let (tx, rx) = oneshot::channel();
                if first {
                    state.waiters.push_front((key.clone(), tx));
                } else {
                    state.waiters.push_back((key.clone(), tx));
                }
                Reserved::Wait(rx)
            }
        }
    }

    /// Waits at the cap for whichever comes first: a connection handed over
    /// by a request that is done with it, or a permit freed by one that
    /// closed. Says whether the connection was reused.
    async fn wait(
        self: &Arc<Self>,
        key: &Key,
        dst: Uri,
        mut waiting: oneshot::Receiver<SendRequest<ProxyBody>>,
    ) -> Result<(SendRequest<ProxyBody>, bool), Error> {
        tokio::select! {
            biased;
            back = &mut waiting => match back {
                Ok(sender) => Ok((sender, true)),
                // The pool never drops a waiter unanswered while it lives;
                // should it, a new connection under a permit is still right.
                Err(_) => {
                    let permit = self.open.clone().acquire_owned().await.expect("never closed");
                    Ok((self.connect(dst, permit).await?, false))
                }
            },
            permit = self.open.clone().acquire_owned() => {
                let permit = permit.expect("never closed");
                // A connection handed over meanwhile goes to the next waiter.
                waiting.close();
                if let Ok(sender) = waiting.try_recv() {
                    self.put(key.clone(), sender);
                }
                Ok((self.connect(dst, permit).await?, false))
            }
        }
    }

    /// Opens a connection under `permit`, which it holds until it closes.
    /// The whole of it (TCP, the egress tunnel, TLS) must be done within
    /// `connect_timeout`: a host that accepts TCP and then stalls is as
    /// unreachable as one that does not answer at all.
    async fn connect(
        self: &Arc<Self>,
        dst: Uri,
        permit: OwnedSemaphorePermit,
    ) -> Result<SendRequest<ProxyBody>, Error> {
        tracing::debug!(host = ?dst.authority().map(Authority::as_str), "opening an upstream connection");
        let limit = self.connect_timeout;
        let connecting = async {
            let mut connector = self.connector.clone();
            std::future::poll_fn(|cx| connector.poll_ready(cx))
                .await
                .map_err(Error::Connect)?;
            let io = connector.call(dst).await.map_err(Error::Connect)?;
            http1::handshake(io)
                .await
                .map_err(|e| Error::Connect(e.into()))
        };
        let (mut sender, connection) = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| Error::Connect(Box::new(ConnectTimeout(limit).into_io())))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::error::with_causes(&e), "upstream connection ended with an error");
            }
            drop(permit);
        });
        self.start_reaper();
        sender.ready().await.map_err(|e| Error::Connect(e.into()))?;
        Ok(sender)
    }

    /// Hands a ready connection to the oldest request waiting for its host,
    /// else keeps it idle.
    fn put(&self, key: Key, mut sender: SendRequest<ProxyBody>) {
        let mut state = self.state.lock().expect("pool lock");
        let mut i = 0;
        while i < state.waiters.len() {
            if state.waiters[i].0 != key {
                i += 1;
                continue;
            }
            let (_, tx) = state.waiters.remove(i).expect("in range");
            match tx.send(sender) {
                Ok(()) => {
                    tracing::trace!(host = %key.authority, "upstream connection handed to a waiting request");
                    return;
                }
                // That request gave up waiting; try the next.
                Err(back) => sender = back,
            }
        }
        tracing::trace!(host = %key.authority, "upstream connection back in the pool");
        state.idle.push(Idle {
            key,
            sender,
            since: Instant::now(),
        });
    }

    /// Starts, once, the task that closes connections idle too long. It
    /// holds the pool weakly: it ends when the last client is dropped.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 4).max(Duration::from_millis(100));
        tokio::spawn(reap(pool, every));
    }
}

/// Closes idle connections older than the pool's idle timeout, every `every`.
async fn reap(pool: Weak<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let expired: Vec<Idle> = {
            let mut state = pool.state.lock().expect("pool lock");
            let timeout = pool.idle_timeout;
            let (keep, expired) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
            state.idle = keep;
            // Waiters that gave up: their senders are closed.
            state.waiters.retain(|(_, tx)| !tx.is_closed());
            expired
        };
        if !expired.is_empty() {
            tracing::debug!(closed = expired.len(), "closing idle upstream connections");
        }
        // Dropped outside the lock: each ends its connection.
        drop(expired);
    }
}

impl State {
    /// The most recently used idle connection to `key` that is still open.
    fn take_idle(&mut self, key: &Key, timeout: Duration) -> Option<SendRequest<ProxyBody>> {
        while let Some(at) = self.idle.iter().rposition(|i| i.key == *key) {
            let idle = self.idle.remove(at);
            if idle.sender.is_ready() && idle.since.elapsed() < timeout {
                return Some(idle.sender);
            }
        }
        None
    }
}

/// How a connection reaches WeChat: straight, or through a CONNECT tunnel.
#[derive(Clone)]
pub enum Egress {
    /// TCP to the upstream itself.
    Direct(HttpConnector),
    /// TCP to the egress proxy, then `CONNECT upstream:port`; TLS to WeChat
    /// runs end to end inside.
    Tunnel {
        /// The tunnel connector.
        tunnel: Tunnel<HttpConnector>,
        /// `host:port` of the proxy, for error messages.
        shown: Arc<str>,
    },
}

/// No connection within `connect_timeout_ms`, counting the TLS handshake.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(Duration);

impl ConnectTimeout {
    /// As an I/O timeout, so callers that look for one find it.
    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, self)
    }
}

/// A failure to open a tunnel, naming the egress proxy.
#[derive(Debug, thiserror::Error)]
#[error("through egress proxy {proxy}: {source}")]
pub struct EgressError {
    proxy: Arc<str>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Egress::Direct(http) => http.poll_ready(cx).map_err(Into::into),
            Egress::Tunnel { tunnel, .. } => tunnel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Egress::Direct(http) => {
                let connecting = http.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Egress::Tunnel { tunnel, shown } => {
                let connecting = tunnel.call(dst);
                let proxy = shown.clone();
                Box::pin(async move {
                    connecting.await.map_err(|e| {
                        Box::new(EgressError {
                            proxy,
                            source: Box::new(e),
                        }) as BoxError
                    })
                })
            }
        }
    }
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `ca_file` is unreadable or holds no usable certificate.
    #[error("upstream.ca_file: {0}")]
    CaFile(String),
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds `app`'s client: WebPKI roots plus `ca_file`, HTTP/1.1,
/// keep-alive, at most `max_connections_per_app` connections open at once,
/// through the app's egress proxy when it has one, failing over to its
/// fallback hosts (each switch counted in `failovers`).
pub fn client(
    settings: &UpstreamSettings,
    app: &AppConfig,
    failovers: Counter,
) -> Result<HttpClient, UpstreamError> {
    let egress = app.egress.as_ref();
    let cap = settings.max_connections_per_app;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let shown = path.display();
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| UpstreamError::CaFile(format!("cannot read {shown}: {e}")))?
        {
            let cert = cert.map_err(|e| UpstreamError::CaFile(format!("{shown}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| UpstreamError::CaFile(format!("{shown}: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(UpstreamError::CaFile(format!(
                "{shown} holds no PEM certificate"
            )));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout));
    // Disable Nagle: requests and answers are small and latency-bound.
    http.set_nodelay(true);
    let route = match egress {
        None => Egress::Direct(http),
        Some(proxy) => {
            let mut tunnel = Tunnel::new(proxy.uri.clone(), http);
            if let Some(auth) = &proxy.auth {
                tunnel = tunnel.with_auth(auth.clone());
            }
            Egress::Tunnel {
                tunnel,
                shown: proxy.to_string().into(),
            }
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(route);

    let cap = cap.max(1);
    Ok(HttpClient {
        pool: Arc::new(Pool {
            connector: https,
            open: Arc::new(Semaphore::new(cap)),
            idle_timeout: settings.idle_timeout,
            connect_timeout: settings.connect_timeout,
            state: Mutex::new(State::default()),
            reaping: AtomicBool::new(false),
        }),
        hosts: Hosts::new(
            &app.name,
            &app.base_url,
            &app.fallback_base_urls,
            settings.connect_timeout,
            failovers,
        ),
    })
}
