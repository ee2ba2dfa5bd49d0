//! wechat-token-proxy: a sidecar that adds WeChat's access_token to every API
//! call, so applications never hold the AppSecret.
//!
//! The tree is the architecture: [`inbound`] is the listener side,
//! [`forward`] the request path to WeChat, [`token`], [`ticket`] and
//! [`platform`] hold the credentials, [`store`] keeps them across restarts
//! and replicas, [`wechat`] is what the proxy knows of WeChat itself.
//!
//! How a request flows:
//! - [`inbound::server`] accepts connections and holds each to the
//!   [`inbound::limits`] (its [`inbound::watchdog`] cuts off slow and idle
//!   clients; [`inbound::linger`] lets a client refused early read its
//!   answer). A loopback listener answers only loopback `Host` names
//!   ([`inbound::host`]).
//! - [`forward::proxy`] refuses what it must never forward
//!   ([`forward::guard`]: CONNECT, a web browser's request, other hosts,
//!   AppSecrets), checks the caller's key ([`inbound::auth`]), picks the app
//!   by the first path segment, and asks the route table once what the
//!   request comes to.
//! - The route table ([`forward::route`], one file of data) classifies the
//!   path in its normal form (escaped letters decoded, slashes merged, dot
//!   segments resolved; spellings servers read differently refused) into a
//!   local answer (the placeholder for SDKs' own token calls, JS-SDK tickets
//!   and `/jssdk/config` from [`jssdk`]), a forward naming the credential
//!   placed and where (the app's or an authorizer's `access_token`, a
//!   platform's `component_access_token`, the app's secret for a user
//!   login, or nothing), and how its answer is scrubbed; or a refusal.
//! - The app's path rules ([`forward::policy`]) are checked, the credential
//!   is read lock-free from its [`token`] slot, the query rewritten
//!   ([`forward::query`]) and the request forwarded through the pooled
//!   [`forward::upstream`] client, asking for an uncompressed answer; the
//!   client moves calls and token fetches alike to a fallback host
//!   ([`forward::failover`]) while the app's WeChat host cannot be reached.
//! - The answer's `errcode` is read by [`forward::inspect`] when the body is
//!   small JSON; a token error makes [`token`] fetch a new token once
//!   (single-flight, through [`wechat`]) and the request is retried once with
//!   the body kept by [`forward::body`]. Before any answer leaves,
//!   [`forward::scrub`] replaces the credentials the proxy placed, and on
//!   routes the table marks, every credential field, at any size.
//! - [`ticket`] holds JS-SDK tickets like tokens; [`platform`] holds a third-
//!   party platform's ticket, component token and authorizers, and answers
//!   the calls whose answers carry credentials itself (the route table sends
//!   them there), with placeholders; [`quota`] keeps the token API's quota
//!   in sight and resets it for the operator.
//! - A WeCom service provider's suite ([`suite`]) is served like a
//!   platform: the `suite_ticket` pushed to the admin listener, the suite
//!   and provider tokens, and each corp's token from its permanent code, all
//!   grants on the same token engine; the route table sends `/NAME/cgi-bin/…`
//!   out with the suite token and `/NAME/CORPID/…` with the corp's.
//! - Every credential held (app tokens, a platform's component and
//!   authorizer tokens, a suite's suite, provider and corp tokens, JS-SDK
//!   tickets) is one generic cell of the credential [`engine`]
//!   ([`engine::cell::Cell`]): a slot read lock-free, a fetch in a task of
//!   its own that a caller waits for at most `token_timeout_ms`, one set of
//!   admission rules ([`engine::admission`]), backoff after failures, and the
//!   store-and-lease protocol that makes a fleet fetch once. What differs
//!   per kind is its grant ([`engine::cell::Grant`]): [`token`]'s (where
//!   the token comes from is a [`token::Grantor`]: the app's endpoint, or a
//!   platform's or suite's call) and [`ticket`]'s (fetched with the token,
//!   its life counted from first sight, renewed only while asked for).
//! - [`admin`] serves health, readiness, status (JSON, and HTML for a
//!   browser: [`status_page`]), [`metrics`] and "refresh now".
//! - Before fetching, [`token`] asks the [`store`] for a token saved by an
//!   earlier run (file) or another replica (Redis), and saves what it fetches.
//! - [`logging`] keeps tokens and secrets out of every log line, whatever
//!   the dependency that wrote it.
//!
//! `demo` ([`demo`]) runs all of this in front of a simulated WeChat in the
//! same process, for a first try without an account.
//!
//! [`config`] turns config.toml into a validated [`config::Config`] before
//! any of this starts (its defaults all in `config/defaults.rs`), reading
//! AppSecrets and keys through [`secret`], whose type never prints them;
//! [`error`] maps what cannot be served to WeChat-shaped JSON answers.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// The tour above links modules private to the crate: read it with
// `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

// Only what the binary, the tests and the benchmarks use is public, so the
// compiler reports what nothing uses.
mod admin;
pub mod config;
pub mod demo;
mod engine;
mod error;
mod forward;
mod inbound;
mod jssdk;
pub mod logging;
mod metrics;
mod platform;
mod quota;
mod secret;
mod status_page;
mod store;
mod suite;
mod ticket;
mod token;
mod wechat;

pub use forward::{inspect, query};
pub use inbound::limits::{fds_needed, raise_fd_limit};
pub use inbound::server::termination;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::{Config, Environment};
use crate::forward::proxy::{App, Proxy};
use crate::metrics::Metrics;
use crate::token::TokenManager;

/// The two bound listeners; bound by the caller so tests can use port 0.
pub struct Listeners {
    /// Application traffic.
    pub proxy: TcpListener,
    /// Health, status, admin.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `listen` and `admin_listen`. `check` calls it too and drops
    /// them, so a port that is taken is found before a deploy, not after.
    pub async fn bind(config: &Config) -> Result<Listeners, BindError> {
        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| BindError {
                file: config.path.clone(),
                key,
                addr,
                source,
            })
        };
        Ok(Listeners {
            proxy: bind("proxy.listen", config.proxy.listen).await?,
            admin: bind("proxy.admin_listen", config.proxy.admin_listen).await?,
        })
    }
}

/// A listener could not be bound: the port is taken, or the address is not
/// this host's, or a port below 1024 without the privilege.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key} = \"{addr}\": cannot listen: {source}", file.display())]
pub struct BindError {
    /// The config file, so the message says where to change the address.
    file: PathBuf,
    /// The key that holds the address.
    key: &'static str,
    /// The address.
    addr: SocketAddr,
    /// What the OS said.
    source: std::io::Error,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The upstream client could not be built (bad `ca_file`).
    #[error(transparent)]
    Upstream(#[from] forward::upstream::UpstreamError),
    /// The token store could not be prepared.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Serves until `shutdown` resolves, then drains and returns.
///
/// `env` is where secrets are re-read from on rotation; `reload` yields once
/// per request to re-read secret files (SIGHUP).
pub async fn run(
    config: Config,
    listeners: Listeners,
    env: Arc<dyn Environment + Send + Sync>,
    mut reload: tokio::sync::mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let store = Arc::new(store::Store::open(&config.store)?);
    log_config(&config);

    let mut apps = Vec::with_capacity(config.apps.len());
    let mut quotas = Vec::with_capacity(config.apps.len());
    for app in &config.apps {
        // A pool per app: the connection cap is per app.
        let client =
            forward::upstream::client(&config.upstream, app, metrics.failovers(&app.name))?;
        let app = Arc::new(app.clone());
        // The quota watch hears of fetches first (for 45009), then tells the
        // metrics; it needs the token manager, which needs the observer.
        let observer = Arc::new(quota::Relay::default());
        let tokens = TokenManager::new(
            app.clone(),
            &config.upstream,
            client.clone(),
            Some(observer.clone() as Arc<dyn token::RefreshObserver>),
            env.clone(),
        );
        let tokens = Arc::new(tokens.with_store(store.clone()));
        let quota = quota::Quota::new(tokens.clone(), metrics.clone());
        observer.connect(metrics.clone(), quota.clone());
        if let Some(quota) = &quota {
            tokio::spawn(quota.clone().run_poller(stop_rx.clone()));
        }
        quotas.push(quota);
        tokio::spawn(tokens.clone().run_refresher(stop_rx.clone()));
        let tickets = ticket::Tickets::new(
            tokens.clone(),
            store.clone(),
            engine::Limits::of(&config.upstream),
            stop_rx.clone(),
        );
        apps.push(App {
            metrics: metrics.app(&app.name),
            config: app,
            tokens,
            client,
            tickets: Arc::new(tickets),
            platform: None,
            suite: None,
        });
    }
    let mut platforms = Vec::with_capacity(config.platforms.len());
    let mut suites = Vec::new();
    for platform in &config.platforms {
        // A pool per platform, as per app: the connection cap is per route
        // name (all of a platform's authorizers share it).
        let client = forward::upstream::client(
            &config.upstream,
            &platform.app,
            metrics.failovers(&platform.app.name),
        )?;
        if platform.suite.is_some() {
            let suite = Arc::new(suite::Suite::new(
                platform,
                &config.upstream,
                client.clone(),
                store.clone(),
                env.clone(),
                metrics.clone(),
                stop_rx.clone(),
            ));
            suite.clone().start(stop_rx.clone()).await;
            // Like a platform: an app whose credential depends on the path.
            apps.push(App {
                metrics: metrics.app(suite.name()),
                config: suite.app().clone(),
                tokens: suite.suite().clone(),
                client,
                tickets: Arc::new(ticket::Tickets::none()),
                platform: None,
                suite: Some(suite.clone()),
            });
            suites.push(suite);
            continue;
        }
        let platform = Arc::new(platform::Platform::new(
            platform,
            &config.upstream,
            client.clone(),
            store.clone(),
            env.clone(),
            metrics.clone(),
        ));
        platform.clone().start(stop_rx.clone()).await;
        // On the request path a platform is an app whose credential depends
        // on the path; metrics and access logs name the platform.
        apps.push(App {
            metrics: metrics.app(platform.name()),
            config: platform.app().clone(),
            tokens: platform.component().clone(),
            client,
            tickets: Arc::new(ticket::Tickets::none()),
            platform: Some(platform.clone()),
            suite: None,
        });
        platforms.push(platform);
    }
    let managers: Vec<Arc<TokenManager>> = apps.iter().map(|a| a.tokens.clone()).collect();
    let draining = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(
        Admin::new(
            managers.clone(),
            draining.clone(),
            metrics.clone(),
            // The same bound as the application listener's request bodies.
            config.proxy.limits.idle_timeout,
        )
        .with_key(config.proxy.admin_key.clone())
        .with_js_sdk(apps.iter().map(|a| a.tickets.clone()).collect(), quotas)
        .with_platforms(platforms.clone())
        .with_suites(suites.clone()),
    );
    let proxy = Arc::new(Proxy::new(&config, apps, metrics));
    let grace = config.proxy.shutdown_grace;
    let limits = config.proxy.limits;

    log_listening("proxy", &listeners.proxy);
    log_listening("admin", &listeners.admin);
    let admin_hosts = inbound::host::Hosts::of(config.proxy.admin_listen);
    let proxy_server = tokio::spawn(inbound::server::serve(
        "proxy",
        listeners.proxy,
        move |request| {
            let proxy = proxy.clone();
            async move { proxy.handle(request).await }
        },
        stop_rx.clone(),
        grace,
        limits,
    ));
    // The admin listener outlives the drain, so probes see /readyz turn 503
    // while in-flight requests finish.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_server = tokio::spawn(inbound::server::serve(
        "admin",
        listeners.admin,
        move |request| {
            let admin = admin.clone();
            async move {
                let (parts, body) = request.into_parts();
                if let Err(refused) = admin_hosts.check(&parts) {
                    return refused.into_response();
                }
                admin.handle(http::Request::from_parts(parts, body)).await
            }
        },
        admin_stop_rx,
        grace,
        limits,
    ));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reload.recv() => {
                let components = platforms.iter().map(|p| p.component());
                let providers = suites.iter().filter_map(|s| s.provider());
                for tokens in managers.iter().chain(components).chain(providers) {
                    if let Err(problem) = tokens.reload_secret() {
                        tracing::warn!(app = %tokens.label(), %problem, "cannot re-read the secret");
                    }
                }
            }
        }
    }
    draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = proxy_server.await;
    let _ = admin_stop_tx.send(true);
    let _ = admin_server.await;
    tracing::info!("stopped");
    Ok(())
}

/// What runs with which config: one line each for the version and file,
/// every app, the keys and the store, so a log shows what was deployed.
fn log_config(config: &Config) {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.path.display(),
        "starting"
    );
    for app in &config.apps {
        tracing::info!(
            app = %app.name,
            kind = app.kind.as_str(),
            appid = %app.appid,
            token_api = app.token_api.as_str(),
            base_url = %app.base_url,
            fallback_base_urls = %app.fallback_base_urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            max_upstream_connections = config.upstream.max_connections_per_app,
            "app"
        );
    }
    for platform in &config.platforms {
        if platform.suite.is_some() {
            tracing::info!(
                platform = %platform.app.name,
                kind = "wecom",
                suite_id = %platform.app.appid,
                base_url = %platform.app.base_url,
                raw_pushes = platform.aes_key.is_some(),
                provider = platform.suite.as_ref().is_some_and(|s| s.provider.is_some()),
                "platform"
            );
            continue;
        }
        tracing::info!(
            platform = %platform.app.name,
            component_appid = %platform.app.appid,
            base_url = %platform.app.base_url,
            raw_pushes = platform.aes_key.is_some(),
            "platform"
        );
    }
    tracing::info!(
        client_key = config.proxy.client_key.is_some(),
        admin_key = config.proxy.admin_key.is_some(),
        "keys enforced"
    );
    match &config.store {
        config::StoreSettings::Memory => tracing::info!(store = "memory", "token store"),
        config::StoreSettings::File { path } => {
            tracing::info!(store = "file", path = %path.display(), "token store")
        }
        config::StoreSettings::Redis(redis) => {
            tracing::info!(store = "redis", url = %redis.url, key_prefix = %redis.key_prefix, "token store")
        }
    }
}

fn log_listening(name: &'static str, listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = %name, addr = %addr, "listening");
    }
}
