//! Every default value, in one place: what a key is when config.toml leaves
//! it out. config.toml shows the same values in its comments (a test keeps
//! them equal).

use super::LogFormat;

/// `[proxy] listen`: loopback, so nothing off the host can use the token.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `[proxy] admin_listen`: loopback, for the same reason.
pub const ADMIN_LISTEN: &str = "127.0.0.1:8079";
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
/// `[upstream] max_connections_per_app`: enough for ~1,000 calls a second
/// per app at WeChat's usual 50–100 ms, and a bound a pod's memory (each
/// TLS connection costs ~50 KiB) and WeChat's patience can both live with.
/// nginx's bench peer keeps 64 idle; beyond the cap requests wait their turn.
pub const MAX_CONNECTIONS_PER_APP: u64 = 128;
/// `[upstream] idle_timeout_ms`: WeChat's servers close idle keep-alive
/// connections; a pooled one must be dropped before that, or requests race
/// the server's close. Well under the usual server timeouts (nginx 75 s, many
/// load balancers 60 s, some 15–30 s): a new TLS connection per 10 s idle gap
/// costs little.
pub const UPSTREAM_IDLE_TIMEOUT_MS: u64 = 10_000;
/// `[upstream] token_timeout_ms`.
pub const TOKEN_TIMEOUT_MS: u64 = 10_000;
/// `[upstream] token_retry_min_ms`.
pub const TOKEN_RETRY_MIN_MS: u64 = 1000;
/// `[upstream] token_retry_max_ms`.
pub const TOKEN_RETRY_MAX_MS: u64 = 300_000;

/// `[apps.NAME] base_url` for `kind = "mp"`.
pub const MP_BASE_URL: &str = "https://api.weixin.qq.com";
/// `[apps.NAME] fallback_base_urls` for `kind = "mp"` (and platforms) that
/// leave `base_url` at its default: WeChat's remote disaster-recovery entry.
/// A `base_url` set elsewhere (an egress relay, a stand-in) gets none, since
/// going round it to WeChat would skip whatever it is there for.
pub const MP_FALLBACK_BASE_URLS: &[&str] = &["https://api2.weixin.qq.com"];
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config.toml as committed, whose comments show every
    /// default: the README's steps may edit the working copy.
    fn shipped() -> String {
        let out = std::process::Command::new("git")
            .args(["show", "HEAD:config.toml"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git show HEAD:config.toml failed (the test reads the committed config): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("config.toml is UTF-8")
    }

    /// The value `shipped` shows for `key` in `[section]`, commented out or
    /// not.
    fn shown(shipped: &str, section: &str, key: &str) -> Option<String> {
        let mut current = "";
        let mut found = None;
        for line in shipped.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                current = header.split(']').next().unwrap_or("");
            } else if let Some(value) = line
                .strip_prefix(key)
                .and_then(|rest| rest.trim_start().strip_prefix('='))
            {
                if current == section {
                    assert!(found.is_none(), "[{section}] {key} is shown twice");
                    let value = value.split(" #").next().unwrap_or("").trim();
                    found = Some(value.to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn config_toml_shows_these_defaults() {
        let shipped = shipped();
        let quoted = |s: &str| format!("\"{s}\"");
        let format = match LOG_FORMAT {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let cases = [
            ("proxy", "listen", quoted(LISTEN)),
            ("proxy", "admin_listen", quoted(ADMIN_LISTEN)),
            (
                "proxy",
                "max_replay_body_bytes",
                MAX_REPLAY_BODY_BYTES.to_string(),
            ),
            ("proxy", "shutdown_grace_s", SHUTDOWN_GRACE_S.to_string()),
            ("proxy", "worker_threads", WORKER_THREADS.to_string()),
            (
                "proxy",
                "max_request_header_bytes",
                MAX_REQUEST_HEADER_BYTES.to_string(),
            ),
            (
                "proxy",
                "max_request_body_bytes",
                MAX_REQUEST_BODY_BYTES.to_string(),
            ),
            (
                "proxy",
                "header_read_timeout_ms",
                HEADER_READ_TIMEOUT_MS.to_string(),
            ),
            ("proxy", "idle_timeout_ms", IDLE_TIMEOUT_MS.to_string()),
            ("proxy", "max_connections", MAX_CONNECTIONS.to_string()),
            (
                "upstream",
                "connect_timeout_ms",
                CONNECT_TIMEOUT_MS.to_string(),
            ),
            (
                "upstream",
                "request_timeout_ms",
                REQUEST_TIMEOUT_MS.to_string(),
            ),
            ("upstream", "token_timeout_ms", TOKEN_TIMEOUT_MS.to_string()),
            (
                "upstream",
                "idle_timeout_ms",
                UPSTREAM_IDLE_TIMEOUT_MS.to_string(),
            ),
            (
                "upstream",
                "max_connections_per_app",
                MAX_CONNECTIONS_PER_APP.to_string(),
            ),
            (
                "upstream",
                "token_retry_min_ms",
                TOKEN_RETRY_MIN_MS.to_string(),
            ),
            (
                "upstream",
                "token_retry_max_ms",
                TOKEN_RETRY_MAX_MS.to_string(),
            ),
            ("apps.mp", "base_url", quoted(MP_BASE_URL)),
            (
                "apps.mp",
                "fallback_base_urls",
                format!(
                    "[{}]",
                    MP_FALLBACK_BASE_URLS
                        .iter()
                        .map(|u| quoted(u))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (
                "apps.mp",
                "refresh_before_expiry_s",
                REFRESH_BEFORE_EXPIRY_S.to_string(),
            ),
            (
                "apps.mp",
                "min_refresh_interval_ms",
                MIN_REFRESH_INTERVAL_MS.to_string(),
            ),
            ("log", "access_log", ACCESS_LOG.to_string()),
            ("log", "format", quoted(format)),
            ("store", "key_prefix", quoted(REDIS_KEY_PREFIX)),
        ];
        for (section, key, default) in cases {
            assert_eq!(
                shown(&shipped, section, key).as_deref(),
                Some(default.as_str()),
                "[{section}] {key} in config.toml"
            );
        }
        assert!(
            shipped.contains(WECOM_BASE_URL),
            "the WeCom default is not shown"
        );
    }
}
