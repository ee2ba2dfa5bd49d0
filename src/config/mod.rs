//! Configuration: the validated [`Config`] the rest of the crate uses, and
//! how a file becomes one.
//!
//! Parse, then validate, then use: [`Config::load`] reads the file into the
//! raw serde shape (`raw.rs`: unknown keys refused), then `validate.rs`
//! checks every value, fills in the defaults (`defaults.rs`, the one place
//! they live) and resolves every secret, so the serving code never sees an
//! unchecked value. Every error names the file and the key.

mod defaults;
mod raw;
mod url;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::InboundKey;
use crate::limits::Limits;
use crate::policy::PathPolicy;

// Secrets have their own module; these paths stay for the code that
// imported them from here.
pub use crate::secret::{Environment, ProcessEnv, Secret, SecretSource};
pub use url::{BaseUrl, EgressProxy, RedisTarget, RedisUrl};

/// Why a configuration was refused. Always names the file, and the key when
/// one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type; the
    /// message from `toml` carries the line and the key.
    #[error("{file}: {message}")]
    Parse {
        /// The config file.
        file: PathBuf,
        /// `toml`'s message, with line, column and key.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{file}: {key}: {problem}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The dotted key at fault, e.g. `apps.mp.secret_env`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// The product of validation: every value checked, every secret resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages and for re-reading secrets.
    pub path: PathBuf,
    /// Listener settings.
    pub proxy: ProxySettings,
    /// How to reach WeChat.
    pub upstream: UpstreamSettings,
    /// The apps, in the order of their names.
    pub apps: Vec<AppConfig>,
    /// Index into `apps` of the app that serves paths without an app prefix.
    pub default_app: Option<usize>,
    /// Logging.
    pub log: LogSettings,
    /// Where tokens are kept besides memory: a file, or Redis shared by replicas.
    pub store: StoreSettings,
    /// The third-party platforms, in the order of their names.
    pub platforms: Vec<PlatformConfig>,
}

/// One `[platforms.NAME]` table, validated.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// The platform as the request path and the token engine see it: the
    /// table name (the path prefix), the component_appid and
    /// component_appsecret, base URL, path rules, egress and timings.
    pub app: AppConfig,
    /// The push token, to check the signature of WeChat's raw pushes.
    pub push_token: Option<Secret>,
    /// The AES-256 key decoded from the EncodingAESKey, to decrypt them.
    pub aes_key: Option<AesKey>,
}

/// The 32-byte key of WeChat's message encryption; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey(pub [u8; 32]);

impl AesKey {
    /// The key of a 43-character EncodingAESKey as the console shows it.
    pub fn from_console(text: &str) -> Option<AesKey> {
        validate::aes_key(text).map(AesKey)
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

/// `[proxy]`: the listeners and request handling.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where applications send their WeChat calls.
    pub listen: SocketAddr,
    /// Health, status and admin endpoints.
    pub admin_listen: SocketAddr,
    /// Request bodies up to this size are kept so a token error can be retried.
    pub max_replay_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM.
    pub shutdown_grace: Duration,
    /// Runtime threads serving requests; `None`: one per CPU. One (the
    /// default) runs everything on a single-threaded runtime with no
    /// cross-thread hand-offs: a sidecar should not take every core of its
    /// node, and on the benchmark's 2-core box one thread gives the better
    /// p99 (bench/run.sh).
    pub worker_threads: Option<usize>,
    /// The key callers of `listen` must present; `None`: anyone may call.
    pub client_key: Option<InboundKey>,
    /// The key callers of `admin_listen` must present (but for `/healthz`
    /// and `/readyz`); `None`: anyone may call.
    pub admin_key: Option<InboundKey>,
    /// Sizes, timeouts and connections clients may use.
    pub limits: Limits,
}

/// `[upstream]`: connections to WeChat and token fetching.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Extra PEM roots trusted besides the built-in ones (a test CA, a
    /// corporate TLS-inspecting proxy).
    pub ca_file: Option<PathBuf>,
    /// TCP connect (and TLS handshake) limit for every upstream connection.
    pub connect_timeout: Duration,
    /// Limit from sending a request until WeChat's response headers arrive.
    pub request_timeout: Duration,
    /// Limit for one whole token fetch, so requests waiting on it are answered
    /// in bounded time.
    pub token_timeout: Duration,
    /// First delay after a failed token fetch; doubled per failure.
    pub token_retry_min: Duration,
    /// Longest delay between token fetch attempts (errcodes that demand a
    /// longer wait, such as 89506, still get theirs).
    pub token_retry_max: Duration,
    /// Forward proxy every upstream connection goes through, unless an app
    /// names its own.
    pub proxy: Option<EgressProxy>,
    /// Connections to WeChat one app may hold open at once; requests beyond
    /// them wait for one to come free.
    pub max_connections_per_app: usize,
    /// A pooled connection idle this long is closed, before WeChat closes
    /// it under a request, and so an idle sidecar holds no sockets.
    pub idle_timeout: Duration,
}

/// Which WeChat product an app belongs to: decides the token endpoint and
/// which errcodes mean "token rejected".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Official Account or Mini Program (api.weixin.qq.com).
    Mp,
    /// WeCom (qyapi.weixin.qq.com).
    Wecom,
}

impl AppKind {
    /// The host WeChat serves this kind from, whatever `base_url` says.
    pub fn wechat_host(self) -> &'static str {
        let base = match self {
            AppKind::Mp => defaults::MP_BASE_URL,
            AppKind::Wecom => defaults::WECOM_BASE_URL,
        };
        base.trim_start_matches("https://")
    }

    /// The name used in config, logs and the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Mp => "mp",
            AppKind::Wecom => "wecom",
        }
    }
}

/// The token endpoint an app fetches from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenApi {
    /// `POST /cgi-bin/stable_token`: the same token for every caller; safe
    /// for several replicas.
    Stable,
    /// `GET /cgi-bin/token`: every call issues a new token and kills the
    /// previous one five minutes later.
    Classic,
    /// `GET /cgi-bin/gettoken` on WeCom.
    Wecom,
}

impl TokenApi {
    /// The name used in logs and the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenApi::Stable => "stable",
            TokenApi::Classic => "classic",
            TokenApi::Wecom => "wecom",
        }
    }
}

/// One `[apps.NAME]` table, validated.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The table name; also the path prefix that routes to this app.
    pub name: String,
    /// Official Account / Mini Program, or WeCom.
    pub kind: AppKind,
    /// The appid (mp) or corpid (WeCom).
    pub appid: String,
    /// Where the secret came from, for re-reading on rotation.
    pub secret_source: SecretSource,
    /// The secret as read at start.
    pub secret: Secret,
    /// Which token endpoint to use.
    pub token_api: TokenApi,
    /// Where API calls and token fetches go.
    pub base_url: BaseUrl,
    /// Where they go, in this order, while `base_url` cannot be reached.
    pub fallback_base_urls: Vec<BaseUrl>,
    /// Renew the token this long before it expires.
    pub refresh_before_expiry: Duration,
    /// Token errors trigger at most one fetch per this interval, so a flood
    /// of rejected tokens cannot burn the daily quota.
    pub min_refresh_interval: Duration,
    /// The forward proxy this app's traffic goes through: its own `proxy`,
    /// else `[upstream] proxy`.
    pub egress: Option<EgressProxy>,
    /// Which paths callers may reach through this app.
    pub policy: PathPolicy,
    /// WeCom only: the app's agentid, to sign `wx.agentConfig`.
    pub agentid: Option<u64>,
}

impl AppConfig {
    /// Whether `host` is one of this app's WeChat hosts: its kind's own,
    /// `base_url`'s, or a fallback's. An absolute-form request naming one
    /// is the app's own call, whichever host serves it now.
    pub fn is_own_host(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(self.kind.wechat_host())
            || std::iter::once(&self.base_url)
                .chain(&self.fallback_base_urls)
                .any(|base| host.eq_ignore_ascii_case(base.authority.host()))
    }
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// One line per request at info level.
    pub access_log: bool,
    /// Human-readable text or one JSON object per line.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `tracing`'s default text format.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// `[store]`: where tokens are kept besides this process's memory.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// Memory only: a restart fetches anew.
    Memory,
    /// A JSON file, read at start and rewritten after every refresh, so a
    /// restart within the token's life needs no fetch.
    File {
        /// The file; its directory exists (checked at start).
        path: PathBuf,
    },
    /// A Redis server shared by every replica of the proxy.
    Redis(RedisSettings),
}

/// `[store]` with `kind = "redis"`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Where Redis is; may carry a password.
    pub url: RedisUrl,
    /// The sentinels' own password, when a `redis-sentinel://` URL's
    /// sentinels require one (the URL's password is the data nodes').
    pub sentinel_password: Option<Secret>,
    /// Put in front of every key, so several deployments can share a Redis.
    pub key_prefix: String,
}

impl Config {
    /// Reads, parses and validates the file at `path`, resolving secrets from
    /// `env` and secret files.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text, env)
    }

    /// Parses and validates `text`; `path` is used for messages.
    pub fn parse(path: &Path, text: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate::Validator::new(path, env).config(raw)
    }
}
