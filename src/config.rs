//! Configuration: the raw TOML shape, and the validated [`Config`] the rest of
//! the crate uses.
//!
//! Parse, then validate, then use: [`Config::load`] turns the file into
//! `RawConfig` (serde, unknown keys refused), then checks every value and
//! resolves every secret, so the serving code never sees an unchecked value.
//! Every error names the file and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use serde::Deserialize;

use crate::auth::InboundKey;
use crate::limits::Limits;
use crate::policy::PathPolicy;

/// Where configuration values that live outside the file come from.
///
/// A trait so tests can hand in variables without touching the process
/// environment.
pub trait Environment {
    /// The value of variable `name`, if it is set and valid Unicode.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

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
}

/// A fixed-IP forward proxy for upstream traffic (WeChat's IP whitelist):
/// every connection is an HTTP CONNECT tunnel through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// `http://host:port` of the proxy, without credentials.
    pub uri: http::Uri,
    /// `Proxy-Authorization: Basic …` from `user:password@` in the URL;
    /// marked sensitive so it is never printed.
    pub auth: Option<http::HeaderValue>,
}

impl fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials.
        write!(f, "{}", self.uri.authority().map_or("?", |a| a.as_str()))
    }
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

/// An AppSecret. Its `Debug` never shows the value, and it has no `Display`,
/// so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that sends it to WeChat.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where an app's secret is read from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable, read once at start.
    Env(String),
    /// A file (a mounted Kubernetes Secret), re-read when WeChat says the
    /// secret is wrong, so a rotation needs no restart.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret now. The error message names the variable or path and
    /// never the value.
    pub fn read(&self, env: &dyn Environment) -> Result<Secret, String> {
        let value = match self {
            SecretSource::Env(name) => env
                .var(name)
                .ok_or_else(|| format!("environment variable {name} is not set"))?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(match self {
                SecretSource::Env(name) => format!("environment variable {name} is empty"),
                SecretSource::File(path) => format!("{} is empty", path.display()),
            });
        }
        Ok(Secret(value.to_owned()))
    }
}

/// Where an app's API calls go: scheme and authority, plus an optional path
/// prefix for stand-ins mounted under a path.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port, also sent as `Host`.
    pub authority: Authority,
    /// Path prefix without a trailing slash; empty for WeChat itself.
    pub path: String,
    /// `authority` as a ready `Host` header value, so requests need not
    /// format one each.
    pub host: http::HeaderValue,
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
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
    /// Put in front of every key, so several deployments can share a Redis.
    pub key_prefix: String,
}

/// A `redis://` or `rediss://` URL. It may hold a password, so `Debug` and
/// `Display` show it with the password replaced by `***`.
#[derive(Clone)]
pub struct RedisUrl {
    /// The URL as configured, for the one place that connects.
    url: String,
    /// The URL without its password, for messages and logs.
    shown: String,
    /// The password as written in the URL, to scrub from error messages.
    password: Option<String>,
}

impl RedisUrl {
    /// Checks `value` and prepares its redacted form. The error never repeats
    /// `value`, which may hold a password.
    pub fn parse(value: &str) -> Result<RedisUrl, String> {
        if !(value.starts_with("redis://") || value.starts_with("rediss://")) {
            return Err("must start with redis:// (or rediss:// for TLS)".into());
        }
        let url = redis::parse_redis_url(value)
            .ok_or("is not a URL: write redis://[user:password@]host[:port][/db]")?;
        let password = url.password().map(str::to_owned);
        let userinfo = match (url.username(), &password) {
            ("", None) => String::new(),
            (user, None) => format!("{user}@"),
            (user, Some(_)) => format!("{user}:***@"),
        };
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let shown = format!(
            "{}://{userinfo}{}{port}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.path()
        );
        if url.fragment().is_some() {
            return Err(format!(
                "'{shown}': a #fragment (#insecure) is not supported: certificates are always verified"
            ));
        }
        if url.query().is_some() {
            return Err(format!("'{shown}' must not have a query"));
        }
        if let Err(e) = redis::Client::open(value) {
            return Err(format!("'{shown}' is not a usable Redis URL: {e}"));
        }
        Ok(RedisUrl {
            url: value.to_owned(),
            shown,
            password,
        })
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `text` with the URL's password, should it appear, replaced by `***`.
    pub fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() && text.contains(p.as_str()) => {
                text.replace(p.as_str(), "***")
            }
            _ => text,
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    store: RawStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    admin_listen: Option<String>,
    default_app: Option<String>,
    max_replay_body_bytes: Option<u64>,
    shutdown_grace_s: Option<u64>,
    worker_threads: Option<u64>,
    // Who may call, and limits (issue 6).
    client_key_env: Option<String>,
    client_key_file: Option<PathBuf>,
    admin_key_env: Option<String>,
    admin_key_file: Option<PathBuf>,
    allow_unauthenticated: Option<bool>,
    max_request_header_bytes: Option<u64>,
    max_request_body_bytes: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    ca_file: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    token_timeout_ms: Option<u64>,
    token_retry_min_ms: Option<u64>,
    token_retry_max_ms: Option<u64>,
    proxy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    kind: AppKind,
    appid: Option<String>,
    corpid: Option<String>,
    /// Accepted only to refuse it with a helpful message.
    secret: Option<toml::Value>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    token_api: Option<TokenApi>,
    base_url: Option<String>,
    refresh_before_expiry_s: Option<u64>,
    min_refresh_interval_ms: Option<u64>,
    proxy: Option<String>,
    allow_paths: Option<Vec<String>>,
    deny_paths: Option<Vec<String>>,
    agentid: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access_log: Option<bool>,
    format: Option<LogFormat>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<StoreKind>,
    path: Option<PathBuf>,
    url: Option<String>,
    url_env: Option<String>,
    key_prefix: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Memory,
    File,
    Redis,
}

/// Path segments WeChat's own APIs start with; an app of that name would
/// capture real API paths.
const RESERVED_APP_NAMES: &[&str] = &["cgi-bin", "wxa", "sns", "datacube", "card", "merchant"];

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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Validator { file: path, env }.config(raw)
    }
}

struct Validator<'a> {
    file: &'a Path,
    env: &'a dyn Environment,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn config(&self, mut raw: RawConfig) -> Result<Config, ConfigError> {
        let client_key = self.inbound_key(
            "proxy.client_key",
            raw.proxy.client_key_env.take(),
            raw.proxy.client_key_file.take(),
        )?;
        let admin_key = self.inbound_key(
            "proxy.admin_key",
            raw.proxy.admin_key_env.take(),
            raw.proxy.admin_key_file.take(),
        )?;
        let limits = self.limits(&raw.proxy)?;
        let proxy = ProxySettings {
            listen: self.addr("proxy.listen", raw.proxy.listen, "127.0.0.1:8080")?,
            admin_listen: self.addr(
                "proxy.admin_listen",
                raw.proxy.admin_listen,
                "127.0.0.1:9090",
            )?,
            max_replay_body_bytes: raw.proxy.max_replay_body_bytes.unwrap_or(1 << 20) as usize,
            shutdown_grace: Duration::from_secs(raw.proxy.shutdown_grace_s.unwrap_or(20)),
            worker_threads: match raw.proxy.worker_threads {
                None => Some(1),
                Some(0) => None,
                Some(n @ 1..=256) => Some(n as usize),
                Some(_) => {
                    return Err(self.err(
                        "proxy.worker_threads",
                        "must be between 0 (one per CPU) and 256",
                    ))
                }
            },
            client_key,
            admin_key,
            limits,
        };
        self.exposure(&proxy, raw.proxy.allow_unauthenticated.unwrap_or(false))?;
        let upstream = self.upstream(raw.upstream)?;
        let store = self.store(raw.store)?;

        if raw.apps.is_empty() {
            return Err(self.err(
                "apps",
                "no apps configured: add at least one [apps.NAME] table",
            ));
        }
        let apps = raw
            .apps
            .into_iter()
            .map(|(name, app)| self.app(name, app, upstream.proxy.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;

        let default_app = match raw.proxy.default_app {
            Some(name) => Some(apps.iter().position(|a| a.name == name).ok_or_else(|| {
                self.err(
                    "proxy.default_app",
                    format!("no app named '{name}' (apps: {})", app_names(&apps)),
                )
            })?),
            None if apps.len() == 1 => Some(0),
            None => None,
        };

        Ok(Config {
            path: self.file.to_owned(),
            proxy,
            upstream,
            apps,
            default_app,
            log: LogSettings {
                access_log: raw.log.access_log.unwrap_or(true),
                format: raw.log.format.unwrap_or(LogFormat::Text),
            },
            store,
        })
    }

    fn addr(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let value = value.as_deref().unwrap_or(default);
        value.parse().map_err(|_| {
            self.err(
                key,
                format!("'{value}' is not an address: write IP:PORT, e.g. 127.0.0.1:8080"),
            )
        })
    }

    fn millis(&self, key: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(self.err(key, "must be greater than 0")),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    fn upstream(&self, raw: RawUpstream) -> Result<UpstreamSettings, ConfigError> {
        if let Some(ca) = &raw.ca_file {
            std::fs::metadata(ca).map_err(|e| {
                self.err(
                    "upstream.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                )
            })?;
        }
        let token_retry_min =
            self.millis("upstream.token_retry_min_ms", raw.token_retry_min_ms, 1000)?;
        let token_retry_max = self.millis(
            "upstream.token_retry_max_ms",
            raw.token_retry_max_ms,
            300_000,
        )?;
        if token_retry_max < token_retry_min {
            return Err(self.err(
                "upstream.token_retry_max_ms",
                "must not be less than token_retry_min_ms",
            ));
        }
        Ok(UpstreamSettings {
            ca_file: raw.ca_file,
            connect_timeout: self.millis(
                "upstream.connect_timeout_ms",
                raw.connect_timeout_ms,
                3000,
            )?,
            request_timeout: self.millis(
                "upstream.request_timeout_ms",
                raw.request_timeout_ms,
                30_000,
            )?,
            token_timeout: self.millis(
                "upstream.token_timeout_ms",
                raw.token_timeout_ms,
                10_000,
            )?,
            token_retry_min,
            token_retry_max,
            proxy: raw
                .proxy
                .map(|url| self.egress("upstream.proxy", &url))
                .transpose()?,
        })
    }

    fn egress(&self, key: &str, url: &str) -> Result<EgressProxy, ConfigError> {
        // Messages show the URL without its credentials.
        let shown = match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
            (None, Some((_, host))) => format!("…@{host}"),
            _ => url.to_owned(),
        };
        let bad = |why: &str| self.err(key, format!("'{shown}' {why}"));
        let uri: http::Uri = url.parse().map_err(|_| {
            bad("is not a URL: write http://host:port or http://user:password@host:port")
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "must be an http:// proxy URL (the tunnel inside is TLS)",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.port_u16().is_none() {
            return Err(bad("needs a port, e.g. http://10.0.0.1:3128"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("must not have a path or query"));
        }
        let (userinfo, host) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority.as_str()),
        };
        let auth = userinfo
            .map(|userinfo| {
                let decoded =
                    percent_decode(userinfo).ok_or_else(|| bad("has badly escaped credentials"))?;
                let mut value = http::HeaderValue::try_from(format!("Basic {}", base64(&decoded)))
                    .map_err(|_| bad("has credentials that cannot be sent"))?;
                value.set_sensitive(true);
                Ok::<_, ConfigError>(value)
            })
            .transpose()?;
        let uri =
            http::Uri::try_from(format!("http://{host}")).map_err(|_| bad("has a bad host"))?;
        Ok(EgressProxy { uri, auth })
    }

    fn store(&self, raw: RawStore) -> Result<StoreSettings, ConfigError> {
        let kind = raw.kind.unwrap_or(StoreKind::Memory);
        let kind_name = match kind {
            StoreKind::Memory => "memory",
            StoreKind::File => "file",
            StoreKind::Redis => "redis",
        };
        // A key for another kind is a mistake worth naming, not ignoring.
        let foreign = [
            ("path", raw.path.is_some(), StoreKind::File),
            ("url", raw.url.is_some(), StoreKind::Redis),
            ("url_env", raw.url_env.is_some(), StoreKind::Redis),
            ("key_prefix", raw.key_prefix.is_some(), StoreKind::Redis),
        ];
        if let Some((key, _, owner)) = foreign
            .iter()
            .find(|(_, set, owner)| *set && *owner != kind)
        {
            let owner = if *owner == StoreKind::File {
                "file"
            } else {
                "redis"
            };
            return Err(self.err(
                format!("store.{key}"),
                format!("only for kind = \"{owner}\", not \"{kind_name}\""),
            ));
        }
        match kind {
            StoreKind::Memory => Ok(StoreSettings::Memory),
            StoreKind::File => {
                let path = raw.path.ok_or_else(|| {
                    self.err(
                        "store.path",
                        "missing: kind = \"file\" needs path = \"/var/lib/wechat-token-proxy/tokens.json\"",
                    )
                })?;
                if path.is_dir() {
                    return Err(self.err(
                        "store.path",
                        format!("{} is a directory: name a file in it", path.display()),
                    ));
                }
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                if !dir.is_dir() {
                    return Err(self.err(
                        "store.path",
                        format!("the directory {} does not exist", dir.display()),
                    ));
                }
                Ok(StoreSettings::File { path })
            }
            StoreKind::Redis => {
                let (key, value) = match (raw.url, raw.url_env) {
                    (Some(url), None) => ("store.url", url),
                    (None, Some(var)) => {
                        let url = self.env.var(&var).ok_or_else(|| {
                            self.err(
                                "store.url_env",
                                format!("environment variable {var} is not set"),
                            )
                        })?;
                        ("store.url_env", url.trim().to_owned())
                    }
                    (Some(_), Some(_)) => {
                        return Err(self.err("store.url", "give url or url_env, not both"))
                    }
                    (None, None) => {
                        return Err(self.err(
                            "store.url",
                            "missing: kind = \"redis\" needs url = \"redis://HOST:6379/0\" or url_env = \"VARIABLE\"",
                        ))
                    }
                };
                let url = RedisUrl::parse(&value).map_err(|problem| self.err(key, problem))?;
                let key_prefix = raw
                    .key_prefix
                    .unwrap_or_else(|| "wechat-token-proxy:".to_owned());
                if key_prefix.chars().any(char::is_whitespace) {
                    return Err(self.err("store.key_prefix", "must not contain spaces"));
                }
                Ok(StoreSettings::Redis(RedisSettings { url, key_prefix }))
            }
        }
    }

    fn app(
        &self,
        name: String,
        raw: RawApp,
        global_proxy: Option<&EgressProxy>,
    ) -> Result<AppConfig, ConfigError> {
        let key = |field: &str| format!("apps.{name}.{field}");
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(self.err(
                format!("apps.{name}"),
                "an app name is a path prefix: use letters, digits, '-' and '_' only",
            ));
        }
        if RESERVED_APP_NAMES.contains(&name.as_str()) {
            return Err(self.err(
                format!("apps.{name}"),
                "this name is a WeChat API path segment; an app of that name would capture API calls",
            ));
        }

        let appid = match (raw.kind, raw.appid, raw.corpid) {
            (AppKind::Mp, Some(id), None) => id,
            (AppKind::Mp, _, Some(_)) => {
                return Err(self.err(
                    key("corpid"),
                    "corpid is for kind = \"wecom\"; an mp app has an appid",
                ))
            }
            (AppKind::Mp, None, None) => {
                return Err(self.err(key("appid"), "missing: the app's appid (wx…) is required"))
            }
            (AppKind::Wecom, None, Some(id)) | (AppKind::Wecom, Some(id), None) => id,
            (AppKind::Wecom, Some(_), Some(_)) => {
                return Err(self.err(key("appid"), "give corpid or appid, not both"))
            }
            (AppKind::Wecom, None, None) => {
                return Err(self.err(key("corpid"), "missing: the WeCom corpid (ww…) is required"))
            }
        };
        if appid.trim().is_empty() || appid.trim() != appid {
            return Err(self.err(
                key("appid"),
                "must be non-empty, without surrounding spaces",
            ));
        }

        if raw.secret.is_some() {
            return Err(self.err(
                key("secret"),
                "secrets are never written in the config file: use secret_env = \"VARIABLE\" or secret_file = \"PATH\"",
            ));
        }
        let (secret_key, secret_source) = match (raw.secret_env, raw.secret_file) {
            (Some(var), None) => (key("secret_env"), SecretSource::Env(var)),
            (None, Some(path)) => (key("secret_file"), SecretSource::File(path)),
            (Some(_), Some(_)) => {
                return Err(self.err(
                    key("secret_env"),
                    "give secret_env or secret_file, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    key("secret_env"),
                    "missing: set secret_env = \"VARIABLE\" or secret_file = \"PATH\"",
                ))
            }
        };
        let secret = secret_source
            .read(self.env)
            .map_err(|problem| self.err(secret_key, problem))?;

        let token_api = match (raw.kind, raw.token_api) {
            (AppKind::Mp, api) => api.unwrap_or(TokenApi::Stable),
            (AppKind::Wecom, None) => TokenApi::Wecom,
            (AppKind::Wecom, Some(_)) => {
                return Err(self.err(key("token_api"), "WeCom has one token API; remove this key"))
            }
        };
        if raw.kind == AppKind::Mp && token_api == TokenApi::Wecom {
            return Err(self.err(
                key("token_api"),
                "must be \"stable\" or \"classic\" for an mp app",
            ));
        }

        let default_base = match raw.kind {
            AppKind::Mp => "https://api.weixin.qq.com",
            AppKind::Wecom => "https://qyapi.weixin.qq.com",
        };
        let base_url = self.base_url(
            &key("base_url"),
            raw.base_url.as_deref().unwrap_or(default_base),
        )?;
        let policy = PathPolicy::new(
            self.path_rules(&key("allow_paths"), raw.allow_paths)?,
            self.path_rules(&key("deny_paths"), raw.deny_paths)?,
        );

        let egress = match &raw.proxy {
            Some(url) => Some(self.egress(&key("proxy"), url)?),
            None => global_proxy.cloned(),
        };
        let agentid = match (raw.kind, raw.agentid) {
            (_, None) => None,
            (AppKind::Mp, Some(_)) => {
                return Err(self.err(key("agentid"), "agentid is for kind = \"wecom\" apps"))
            }
            (AppKind::Wecom, Some(id)) => Some(u64::try_from(id).ok().filter(|&id| id > 0).ok_or_else(|| {
                self.err(key("agentid"), format!("{id} is not an agentid: use the positive integer WeCom shows for the app (e.g. 1000002)"))
            })?),
        };

        Ok(AppConfig {
            egress,
            kind: raw.kind,
            appid,
            secret_source,
            secret,
            token_api,
            base_url,
            refresh_before_expiry: Duration::from_secs(raw.refresh_before_expiry_s.unwrap_or(300)),
            min_refresh_interval: Duration::from_millis(
                raw.min_refresh_interval_ms.unwrap_or(5000),
            ),
            policy,
            agentid,
            name,
        })
    }

    fn base_url(&self, key: &str, value: &str) -> Result<BaseUrl, ConfigError> {
        let bad = |why: &str| self.err(key, format!("'{value}' {why}"));
        let uri: http::Uri = value
            .parse()
            .map_err(|_| bad("is not a URL: write e.g. https://api.weixin.qq.com"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(bad(
                    "is not an http(s) URL: write e.g. https://api.weixin.qq.com",
                ))
            }
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        let host =
            http::HeaderValue::from_str(authority.as_str()).map_err(|_| bad("has no host"))?;
        Ok(BaseUrl {
            host,
            scheme,
            authority,
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// Decodes `%XX` escapes (credentials in a URL's userinfo).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding, for `Proxy-Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Who may call, limits and path rules (issue 6).
impl Validator<'_> {
    /// Reads `<prefix>_env` or `<prefix>_file`, checking the key's form.
    fn inbound_key(
        &self,
        prefix: &str,
        env: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<InboundKey>, ConfigError> {
        let (key, source) = match (env, file) {
            (None, None) => return Ok(None),
            (Some(var), None) => (format!("{prefix}_env"), SecretSource::Env(var)),
            (None, Some(path)) => (format!("{prefix}_file"), SecretSource::File(path)),
            (Some(_), Some(_)) => {
                return Err(self.err(
                    format!("{prefix}_env"),
                    format!("give {prefix}_env or {prefix}_file, not both"),
                ))
            }
        };
        let secret = source
            .read(self.env)
            .map_err(|problem| self.err(&key, problem))?;
        if let Some(problem) = crate::auth::key_problem(&secret) {
            return Err(self.err(key, problem));
        }
        Ok(Some(InboundKey::new(secret)))
    }

    /// Refuses a listener reachable from other hosts without a key, unless
    /// `allow_unauthenticated` says that is meant.
    fn exposure(&self, proxy: &ProxySettings, allow: bool) -> Result<(), ConfigError> {
        if allow {
            return Ok(());
        }
        let open =
            |addr: SocketAddr, key: &Option<InboundKey>| !addr.ip().is_loopback() && key.is_none();
        for (listen, addr, key, name) in [
            (
                "proxy.listen",
                proxy.listen,
                &proxy.client_key,
                "client_key",
            ),
            (
                "proxy.admin_listen",
                proxy.admin_listen,
                &proxy.admin_key,
                "admin_key",
            ),
        ] {
            if open(addr, key) {
                return Err(self.err(
                    listen,
                    format!(
                        "{addr} is reachable from other hosts and no key is set: set proxy.{name}_env or proxy.{name}_file, \
                         or allow_unauthenticated = true if anyone who can reach the port may use it"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn limits(&self, raw: &RawProxy) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let header_bytes = raw
            .max_request_header_bytes
            .unwrap_or(default.max_header_bytes as u64);
        if !(1024..=256 * 1024).contains(&header_bytes) {
            return Err(self.err(
                "proxy.max_request_header_bytes",
                "must be between 1024 and 262144",
            ));
        }
        let body_bytes = raw.max_request_body_bytes.unwrap_or(default.max_body_bytes);
        if body_bytes == 0 {
            return Err(self.err("proxy.max_request_body_bytes", "must be greater than 0"));
        }
        let max_connections = raw
            .max_connections
            .unwrap_or(default.max_connections as u64);
        if max_connections == 0 || max_connections > 1 << 20 {
            return Err(self.err("proxy.max_connections", "must be between 1 and 1048576"));
        }
        Ok(Limits {
            max_header_bytes: header_bytes as usize,
            max_body_bytes: body_bytes,
            header_read_timeout: self.millis(
                "proxy.header_read_timeout_ms",
                raw.header_read_timeout_ms,
                default.header_read_timeout.as_millis() as u64,
            )?,
            idle_timeout: self.millis(
                "proxy.idle_timeout_ms",
                raw.idle_timeout_ms,
                default.idle_timeout.as_millis() as u64,
            )?,
            max_connections: max_connections as usize,
        })
    }

    fn path_rules(
        &self,
        key: &str,
        rules: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        let rules = rules.unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(problem) = crate::policy::rule_problem(rule) {
                return Err(self.err(format!("{key}[{i}]"), format!("\"{rule}\" {problem}")));
            }
        }
        Ok(rules)
    }
}

fn app_names(apps: &[AppConfig]) -> String {
    apps.iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
