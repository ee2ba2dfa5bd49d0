//! The binary: command line, logging, config, then [`wechat_token_proxy::run`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use wechat_token_proxy::config::{Config, LogFormat, ProcessEnv};
use wechat_token_proxy::Listeners;

// jemalloc leaves the untouched pages of each idle connection's 8 KiB read
// buffer unbacked, where glibc's heap reuses already-resident memory: 136 →
// 106 MiB with 10,000 idle keep-alive connections (bench/idle.sh).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Adds WeChat's access_token to every API call so applications never hold
/// the AppSecret.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate the config (secrets resolved too), then exit.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config, &ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
        println!(
            "{}: OK ({} app{}: {})",
            config.path.display(),
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
        return ExitCode::SUCCESS;
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
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let bind = |key: &'static str, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{}: {key} = \"{addr}\": cannot listen: {e}", "config"))
    };
    let listeners = match (
        bind("proxy.listen", config.proxy.listen).await,
        bind("proxy.admin_listen", config.proxy.admin_listen).await,
    ) {
        (Ok(proxy), Ok(admin)) => Listeners { proxy, admin },
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(
                "{}",
                e.replacen("config", &config.path.display().to_string(), 1)
            );
            return ExitCode::FAILURE;
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

    let shutdown = wechat_token_proxy::server::termination();
    match wechat_token_proxy::run(config, listeners, Arc::new(ProcessEnv), reload_rx, shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Lifts the open-files limit to the hard limit so `max_connections` is
/// reachable, and says so when even that is too low.
fn raise_fd_limit(config: &Config) {
    use wechat_token_proxy::limits;
    match limits::raise_fd_limit() {
        Ok(limit) if limit < limits::fds_needed(&config.proxy.limits) => tracing::warn!(
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
