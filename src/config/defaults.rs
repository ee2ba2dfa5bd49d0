//! Every default value, in one place: what a key is when config.toml leaves
//! it out. config.toml shows the same values in its comments (a test keeps
//! them equal).

use super::LogFormat;

/// `[proxy] listen`: loopback, so nothing off the host can use the token.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `[proxy] admin_listen`: loopback, for the same reason.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `[proxy] max_replay_body_bytes`: most API bodies are small JSON.
pub const MAX_REPLAY_BODY_BYTES: u64 = 1024 * 1024;
/// `[proxy] shutdown_grace_s`: below Kubernetes' default 30 s termination
/// grace, so the proxy exits on its own before being killed.
pub const SHUTDOWN_GRACE_S: u64 = 20;
/// `[proxy] worker_threads`: a sidecar should not take every core of its
/// node, and on the benchmark's 2-core box one thread gives the better p99
/// (bench/run.sh).
pub const WORKER_THREADS: u64 = 1;

/// `[proxy] max_request_header_bytes`.
pub const MAX_REQUEST_HEADER_BYTES: u64 = 16 * 1024;
/// `[proxy] max_request_body_bytes`: WeChat's largest uploads (permanent
/// video material, WeCom files) are 20 MB.
pub const MAX_REQUEST_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// `[proxy] header_read_timeout_ms`: slowloris clients are cut off.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// `[proxy] idle_timeout_ms`.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// `[proxy] max_connections`: room for 10,000 idle keep-alive clients
/// (bench/idle.sh), each costing about 11 KiB; the Kubernetes manifest's
/// memory limit is sized for it.
pub const MAX_CONNECTIONS: u64 = 16384;

/// `[upstream] connect_timeout_ms`.
pub const CONNECT_TIMEOUT_MS: u64 = 3000;
/// `[upstream] request_timeout_ms`.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// `[upstream] token_timeout_ms`.
pub const TOKEN_TIMEOUT_MS: u64 = 10_000;
/// `[upstream] token_retry_min_ms`.
pub const TOKEN_RETRY_MIN_MS: u64 = 1000;
/// `[upstream] token_retry_max_ms`.
pub const TOKEN_RETRY_MAX_MS: u64 = 300_000;

/// `[apps.NAME] base_url` for `kind = "mp"`.
pub const MP_BASE_URL: &str = "https://api.weixin.qq.com";
/// `[apps.NAME] base_url` for `kind = "wecom"`.
pub const WECOM_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// `[apps.NAME] refresh_before_expiry_s`: tokens live 7200 s; five minutes
/// leaves room for a slow or retried fetch.
pub const REFRESH_BEFORE_EXPIRY_S: u64 = 300;
/// `[apps.NAME] min_refresh_interval_ms`: a flood of rejected tokens cannot
/// burn the daily quota.
pub const MIN_REFRESH_INTERVAL_MS: u64 = 5000;

/// `[log] access_log`.
pub const ACCESS_LOG: bool = true;
/// `[log] format`.
pub const LOG_FORMAT: LogFormat = LogFormat::Text;

/// `[store] key_prefix` for `kind = "redis"`.
pub const REDIS_KEY_PREFIX: &str = "wechat-token-proxy:";
