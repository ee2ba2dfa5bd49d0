//! The file's shape, as serde reads it: every key optional where it has a
//! default, unknown keys refused. Nothing here is checked or defaulted; see
//! `validate.rs` and `defaults.rs`. Each field is the key of the same name,
//! documented in config.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{AppKind, LogFormat, TokenApi};

/// The whole file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `[proxy]`: listeners, keys and limits.
    #[serde(default)]
    pub proxy: RawProxy,
    /// `[upstream]`: connections to WeChat.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// `[apps.NAME]`, sorted by name.
    #[serde(default)]
    pub apps: BTreeMap<String, RawApp>,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[store]`.
    #[serde(default)]
    pub store: RawStore,
    /// `[platforms.NAME]`, sorted by name.
    #[serde(default)]
    pub platforms: BTreeMap<String, RawPlatform>,
}

/// `[proxy]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    /// Where applications connect.
    pub listen: Option<String>,
    /// Where probes and operators connect.
    pub admin_listen: Option<String>,
    /// The app for paths without an app prefix.
    pub default_app: Option<String>,
    /// Bodies kept for a retry.
    pub max_replay_body_bytes: Option<u64>,
    /// Drain time after SIGTERM.
    pub shutdown_grace_s: Option<u64>,
    /// Runtime threads; 0: one per CPU.
    pub worker_threads: Option<u64>,
    /// Variable holding the client key.
    pub client_key_env: Option<String>,
    /// File holding the client key.
    pub client_key_file: Option<PathBuf>,
    /// Variable holding the admin key.
    pub admin_key_env: Option<String>,
    /// File holding the admin key.
    pub admin_key_file: Option<PathBuf>,
    /// Serve a non-loopback listener without a key.
    pub allow_unauthenticated: Option<bool>,
    /// Longest request head.
    pub max_request_header_bytes: Option<u64>,
    /// Largest request body.
    pub max_request_body_bytes: Option<u64>,
    /// Time for a whole request head.
    pub header_read_timeout_ms: Option<u64>,
    /// Keep-alive and slow-reader limit.
    pub idle_timeout_ms: Option<u64>,
    /// Connections per listener.
    pub max_connections: Option<u64>,
}

/// `[upstream]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// Extra PEM roots.
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect limit.
    pub connect_timeout_ms: Option<u64>,
    /// Limit until response headers.
    pub request_timeout_ms: Option<u64>,
    /// Limit for one token fetch.
    pub token_timeout_ms: Option<u64>,
    /// Open connections per app.
    pub max_connections_per_app: Option<u64>,
    /// Idle connections close after this.
    pub idle_timeout_ms: Option<u64>,
    /// First backoff after a failed fetch.
    pub token_retry_min_ms: Option<u64>,
    /// Longest backoff.
    pub token_retry_max_ms: Option<u64>,
    /// Egress proxy URL for every app.
    pub proxy: Option<String>,
}

/// `[apps.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    /// mp or wecom.
    pub kind: AppKind,
    /// mp appid (or WeCom corpid, tolerated).
    pub appid: Option<String>,
    /// Variable holding the appid.
    pub appid_env: Option<String>,
    /// WeCom corpid.
    pub corpid: Option<String>,
    /// Variable holding the WeCom corpid.
    pub corpid_env: Option<String>,
    /// Accepted only to refuse it with a helpful message.
    pub secret: Option<toml::Value>,
    /// Variable holding the AppSecret.
    pub secret_env: Option<String>,
    /// File holding the AppSecret.
    pub secret_file: Option<PathBuf>,
    /// stable or classic (mp only).
    pub token_api: Option<TokenApi>,
    /// Where calls go instead of WeChat.
    pub base_url: Option<String>,
    /// Hosts tried in turn when `base_url` cannot be reached.
    pub fallback_base_urls: Option<Vec<String>>,
    /// Renew this long before expiry.
    pub refresh_before_expiry_s: Option<u64>,
    /// At most one token-error fetch per this interval.
    pub min_refresh_interval_ms: Option<u64>,
    /// This app's egress proxy.
    pub proxy: Option<String>,
    /// Paths callers may reach.
    pub allow_paths: Option<Vec<String>>,
    /// Paths callers may not reach.
    pub deny_paths: Option<Vec<String>>,
    /// WeCom only: the agentid `wx.agentConfig` signatures name.
    pub agentid: Option<i64>,
}

/// `[platforms.NAME]`: a third-party platform (开放平台).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlatform {
    /// The platform's component_appid.
    pub component_appid: Option<String>,
    /// Variable holding the component_appid.
    pub component_appid_env: Option<String>,
    /// Accepted only to refuse it with a helpful message.
    pub secret: Option<toml::Value>,
    /// Variable holding the component_appsecret.
    pub secret_env: Option<String>,
    /// File holding the component_appsecret.
    pub secret_file: Option<PathBuf>,
    /// Variable holding the push token (message verification).
    pub push_token_env: Option<String>,
    /// Variable holding the 43-character EncodingAESKey.
    pub encoding_aes_key_env: Option<String>,
    /// Where calls go instead of WeChat.
    pub base_url: Option<String>,
    /// Hosts tried in turn when `base_url` cannot be reached.
    pub fallback_base_urls: Option<Vec<String>>,
    /// Renew this long before expiry.
    pub refresh_before_expiry_s: Option<u64>,
    /// At most one token-error fetch per this interval.
    pub min_refresh_interval_ms: Option<u64>,
    /// This platform's egress proxy.
    pub proxy: Option<String>,
    /// Paths callers may reach.
    pub allow_paths: Option<Vec<String>>,
    /// Paths callers may not reach.
    pub deny_paths: Option<Vec<String>>,
}

/// `[log]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// One line per request.
    pub access_log: Option<bool>,
    /// text or json.
    pub format: Option<LogFormat>,
}

/// `[store]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    /// memory, file or redis.
    pub kind: Option<StoreKind>,
    /// The file store's file.
    pub path: Option<PathBuf>,
    /// Redis URL.
    pub url: Option<String>,
    /// Variable holding the Redis URL.
    pub url_env: Option<String>,
    /// Prefix of every Redis key.
    pub key_prefix: Option<String>,
    /// Variable holding the sentinels' password (`redis-sentinel://` only).
    pub sentinel_password_env: Option<String>,
}

/// `[store] kind`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum StoreKind {
    /// Memory only.
    Memory,
    /// A JSON file.
    File,
    /// A shared Redis.
    Redis,
}

impl StoreKind {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::File => "file",
            StoreKind::Redis => "redis",
        }
    }
}
