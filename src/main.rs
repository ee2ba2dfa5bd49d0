//! The binary: command line, logging, config, then [`wechat_token_proxy::run`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wechat_token_proxy::config::{Config, LogFormat, ProcessEnv};
use wechat_token_proxy::{demo, Listeners};

// jemalloc leaves the untouched pages of each idle connection's 8 KiB read
// buffer unbacked, where glibc's heap reuses already-resident memory: 136 →
// 106 MiB with 10,000 idle keep-alive connections (bench/idle.sh).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Memory freed after a burst goes back to the system within seconds. Without
// a background thread jemalloc purges only while allocating, so an idle
// sidecar kept its peak: 144 MiB held 10 s after 5,000 busy connections,
// 12 MiB with this (bench/run.sh, memory run).
//
// Slabs of 64 KiB for the classes from 2.5 to 14 KiB: every request takes
// two 8 KiB read buffers (hyper's, one a side) and its ~3.3 KiB future, and
// jemalloc's default slabs hold one or two of those, so when a burst of
// requests emptied or filled the thread cache, each buffer cost a whole
// slab made or unmade. At 64 connections that was 8 % of all instructions
// (callgrind: 48,020 -> 44,220 a request), with RSS unchanged in the
// memory run and bench/idle.sh.
//
// `_RJEM_MALLOC_CONF` in the environment still overrides all of it.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: &[u8; 85] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:2049-14336:16\0";

/// Exit code for a config the proxy refuses: restarting will not help
/// (systemd: `RestartPreventExitStatus=2`).
const EXIT_CONFIG: u8 = 2;
/// Exit code for a listener that cannot be bound, or another failure at run
/// time: a restart may help once the port is free.
const EXIT_RUNTIME: u8 = 1;

const AFTER_HELP: &str = "\
Without a subcommand, serves: applications call [proxy] listen (default 127.0.0.1:8080).
On [proxy] admin_listen (default 127.0.0.1:8079):
  GET  /                           the status page (HTML)
  GET  /healthz                    200 while the process runs
  GET  /servingz                   200 while the proxy takes calls (503 while draining)
  GET  /readyz                     200 when every app holds a valid token
  GET  /apps                       every app's token, tickets and quota (JSON)
  GET  /metrics                    Prometheus metrics
  POST /apps/NAME/refresh          fetch a new token now
  POST /apps/NAME/clear-quota      reset the token API's daily quota (mp apps)
  /platforms/...                   third-party platforms: ticket, authorizers
SIGTERM or SIGINT drains and exits 0; SIGHUP re-reads secret files.

Logs go to stderr; RUST_LOG sets the level (default info), e.g. RUST_LOG=debug.

Exit codes:
  0  served and stopped cleanly; for check: the config is valid and both ports can be bound
  1  a listener cannot be bound (port taken, address not on this host), or a failure at run time
  2  the config is refused (the message names the file and the key)";

/// Adds WeChat's access_token to every API call so applications never hold
/// the AppSecret.
#[derive(Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config (secrets read too), try to bind and release both
    /// listeners, then exit.
    Check,
    /// Try it without a WeChat account: the proxy in front of a simulated
    /// WeChat on loopback (one mp app; no config file, no secret, no
    /// network). Prints what to try; serves until Ctrl-C.
    Demo {
        /// Where the proxy listens (loopback only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin endpoints and status page listen (loopback only).
        #[arg(long, default_value = "127.0.0.1:8079")]
        admin_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo {
        listen,
        admin_listen,
    }) = cli.command
    {
        return demo(listen, admin_listen);
    }
    let config = match Config::load(&cli.config, &ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Check) = cli.command {
        return check(&config);
    }
    init_logging(config.log.format);
    raise_fd_limit(&config);

    let mut runtime = match config.proxy.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(serve(config))
}

/// `check`: the config is already valid; now prove both ports can be bound,
/// then release them.
fn check(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if let Err(e) = runtime.block_on(Listeners::bind(config)) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    println!(
        "{}: OK ({} app{}: {})",
        config.path.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    );
    ExitCode::SUCCESS
}

/// `demo`: the proxy's real `run` in front of the simulated WeChat, every
/// log line marked as the demo's.
fn demo(listen: SocketAddr, admin_listen: SocketAddr) -> ExitCode {
    init_demo_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(async {
        let demo = match demo::bind(listen, admin_listen).await {
            Ok(demo) => demo,
            Err(e) => {
                eprintln!("error: {e}");
                let code = if e.is_refusal() {
                    EXIT_CONFIG
                } else {
                    EXIT_RUNTIME
                };
                return ExitCode::from(code);
            }
        };
        println!("{}", demo.instructions());
        match demo.run(wechat_token_proxy::termination()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}

async fn serve(config: Config) -> ExitCode {
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };

    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: re-reading secret files");
            let _ = reload_tx.try_send(());
        }
    });

    let shutdown = wechat_token_proxy::termination();
    match wechat_token_proxy::run(config, listeners, Arc::new(ProcessEnv), reload_rx, shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Lifts the open-files limit to the hard limit so `max_connections` is
/// reachable, and says so when even that is too low.
fn raise_fd_limit(config: &Config) {
    match wechat_token_proxy::raise_fd_limit() {
        Ok(limit) if limit < wechat_token_proxy::fds_needed(&config.proxy.limits) => tracing::warn!(
            open_files = limit,
            max_connections = config.proxy.limits.max_connections,
            "the open-files limit is low for max_connections: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower max_connections"
        ),
        Ok(limit) => tracing::debug!(open_files = limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(wechat_token_proxy::logging::redacting_stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The demo's logging: every line starts by saying its WeChat is simulated.
fn init_demo_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| {
            wechat_token_proxy::logging::Prefixed::new(
                wechat_token_proxy::logging::redacting_stderr(),
                "[demo: simulated WeChat] ",
            )
        })
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
