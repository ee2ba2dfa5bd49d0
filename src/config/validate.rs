//! Validation: the raw serde shape in, a [`Config`] out. Every value is
//! checked here, every default filled in from `defaults.rs`, every secret
//! read; each error names the key and says how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults;
use super::raw::{RawApp, RawConfig, RawPlatform, RawProxy, RawStore, RawUpstream, StoreKind};
use super::url::{redact, BaseUrl, EgressProxy, RedisTarget, RedisUrl};
use super::{
    AesKey, AppConfig, AppKind, Config, ConfigError, LogSettings, PlatformConfig, ProxySettings,
    RedisSettings, StoreSettings, TokenApi, UpstreamSettings,
};
use crate::auth::InboundKey;
use crate::limits::Limits;
use crate::policy::PathPolicy;
use crate::secret::{Environment, SecretSource};

/// Path segments WeChat's own APIs start with; an app of that name would
/// capture real API paths.
const RESERVED_APP_NAMES: &[&str] = &["cgi-bin", "wxa", "sns", "datacube", "card", "merchant"];

/// Checks a raw config against the file it came from and the environment
/// its secrets are read from.
pub(super) struct Validator<'a> {
    file: &'a Path,
    env: &'a dyn Environment,
}

impl<'a> Validator<'a> {
    /// A validator for the file at `file`, reading secrets from `env`.
    pub(super) fn new(file: &'a Path, env: &'a dyn Environment) -> Validator<'a> {
        Validator { file, env }
    }
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    pub(super) fn config(&self, mut raw: RawConfig) -> Result<Config, ConfigError> {
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
        let listen = self.addr("proxy.listen", raw.proxy.listen, defaults::LISTEN)?;
        let admin_listen = self.addr(
            "proxy.admin_listen",
            raw.proxy.admin_listen,
            defaults::ADMIN_LISTEN,
        )?;
        if overlap(listen, admin_listen) {
            return Err(self.err(
                "proxy.admin_listen",
                format!("{admin_listen} takes the port of listen = \"{listen}\": give the admin listener a port of its own"),
            ));
        }
        let proxy = ProxySettings {
            listen,
            admin_listen,
            max_replay_body_bytes: raw
                .proxy
                .max_replay_body_bytes
                .unwrap_or(defaults::MAX_REPLAY_BODY_BYTES)
                as usize,
            // 0 would cut every in-flight request at SIGTERM; an hour is
            // longer than any orchestrator waits.
            shutdown_grace: Duration::from_secs(self.within(
                "proxy.shutdown_grace_s",
                raw.proxy.shutdown_grace_s,
                defaults::SHUTDOWN_GRACE_S,
                1..=3600,
            )?),
            worker_threads: match raw.proxy.worker_threads.unwrap_or(defaults::WORKER_THREADS) {
                0 => None,
                n @ 1..=256 => Some(n as usize),
                _ => {
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

        if raw.apps.is_empty() && raw.platforms.is_empty() {
            return Err(self.err(
                "apps",
                "no apps configured: add at least one [apps.NAME] (or [platforms.NAME]) table",
            ));
        }
        let apps = raw
            .apps
            .into_iter()
            .map(|(name, app)| self.app(name, app, upstream.proxy.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;

        let platforms = raw
            .platforms
            .into_iter()
            .map(|(name, platform)| self.platform(name, platform, upstream.proxy.as_ref(), &apps))
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
                access_log: raw.log.access_log.unwrap_or(defaults::ACCESS_LOG),
                format: raw.log.format.unwrap_or(defaults::LOG_FORMAT),
            },
            store,
            platforms,
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
                format!(
                    "'{value}' is not an address: write IP:PORT, e.g. 127.0.0.1:8080 or [::]:8080"
                ),
            )
        })
    }

    /// `value` or its default, refused outside `range`.
    fn within(
        &self,
        key: &str,
        value: Option<u64>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let value = value.unwrap_or(default);
        if range.contains(&value) {
            return Ok(value);
        }
        Err(self.err(
            key,
            format!(
                "{value} is out of range: must be between {} and {}",
                range.start(),
                range.end()
            ),
        ))
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
        let token_retry_min = self.millis(
            "upstream.token_retry_min_ms",
            raw.token_retry_min_ms,
            defaults::TOKEN_RETRY_MIN_MS,
        )?;
        let token_retry_max = self.millis(
            "upstream.token_retry_max_ms",
            raw.token_retry_max_ms,
            defaults::TOKEN_RETRY_MAX_MS,
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
                defaults::CONNECT_TIMEOUT_MS,
            )?,
            request_timeout: self.millis(
                "upstream.request_timeout_ms",
                raw.request_timeout_ms,
                defaults::REQUEST_TIMEOUT_MS,
            )?,
            token_timeout: self.millis(
                "upstream.token_timeout_ms",
                raw.token_timeout_ms,
                defaults::TOKEN_TIMEOUT_MS,
            )?,
            token_retry_min,
            token_retry_max,
            max_connections_per_app: self.within(
                "upstream.max_connections_per_app",
                raw.max_connections_per_app,
                defaults::MAX_CONNECTIONS_PER_APP,
                1..=65_536,
            )? as usize,
            idle_timeout: self.millis(
                "upstream.idle_timeout_ms",
                raw.idle_timeout_ms,
                defaults::UPSTREAM_IDLE_TIMEOUT_MS,
            )?,
            proxy: raw
                .proxy
                .map(|url| self.egress("upstream.proxy", &url))
                .transpose()?,
        })
    }

    fn egress(&self, key: &str, url: &str) -> Result<EgressProxy, ConfigError> {
        EgressProxy::parse(url)
            .map_err(|problem| self.err(key, format!("'{}' {problem}", redact(url))))
    }

    fn store(&self, raw: RawStore) -> Result<StoreSettings, ConfigError> {
        let kind = raw.kind.unwrap_or(StoreKind::Memory);
        // A key for another kind is a mistake worth naming, not ignoring.
        let foreign = [
            ("path", raw.path.is_some(), StoreKind::File),
            ("url", raw.url.is_some(), StoreKind::Redis),
            ("url_env", raw.url_env.is_some(), StoreKind::Redis),
            ("key_prefix", raw.key_prefix.is_some(), StoreKind::Redis),
            (
                "sentinel_password_env",
                raw.sentinel_password_env.is_some(),
                StoreKind::Redis,
            ),
        ];
        if let Some((key, _, owner)) = foreign
            .iter()
            .find(|(_, set, owner)| *set && *owner != kind)
        {
            return Err(self.err(
                format!("store.{key}"),
                format!(
                    "only for kind = \"{}\", not \"{}\"",
                    owner.as_str(),
                    kind.as_str()
                ),
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
                let url = RedisUrl::parse(&value)
                    .map_err(|problem| self.err(key, problem.to_string()))?;
                let key_prefix = raw
                    .key_prefix
                    .unwrap_or_else(|| defaults::REDIS_KEY_PREFIX.to_owned());
                if key_prefix.chars().any(char::is_whitespace) {
                    return Err(self.err("store.key_prefix", "must not contain spaces"));
                }
                let sentinel_password = match (&url.target, raw.sentinel_password_env) {
                    (_, None) => None,
                    (RedisTarget::Server, Some(_)) => {
                        return Err(self.err(
                            "store.sentinel_password_env",
                            "only for a redis-sentinel:// url",
                        ))
                    }
                    (RedisTarget::Sentinel { .. }, Some(var)) => {
                        Some(SecretSource::Env(var).read(self.env).map_err(|problem| {
                            self.err("store.sentinel_password_env", problem.to_string())
                        })?)
                    }
                };
                Ok(StoreSettings::Redis(RedisSettings {
                    url,
                    key_prefix,
                    sentinel_password,
                }))
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

        let appid = self.appid(&name, &raw)?;

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
            .map_err(|problem| self.err(&secret_key, problem.to_string()))?;
        // WeChat's secrets are letters and digits: spaces mean a placeholder
        // was left in (a Secret applied from an example), which WeChat would
        // refuse at every fetch.
        if secret.expose().contains(char::is_whitespace) {
            return Err(self.err(
                secret_key,
                "the secret holds spaces, so it is a placeholder, not an AppSecret: put the real one in",
            ));
        }

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
            AppKind::Mp => defaults::MP_BASE_URL,
            AppKind::Wecom => defaults::WECOM_BASE_URL,
        };
        let base_url = raw.base_url.as_deref().unwrap_or(default_base);
        let base_url = BaseUrl::parse(base_url).map_err(|problem| {
            self.err(key("base_url"), format!("'{}' {problem}", redact(base_url)))
        })?;
        let fallback_base_urls = self.fallbacks(
            &key("fallback_base_urls"),
            raw.kind,
            raw.base_url.is_none(),
            raw.fallback_base_urls.as_deref(),
            &base_url,
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
            (AppKind::Wecom, Some(id)) => Some(
                u64::try_from(id)
                    .ok()
                    .filter(|&id| id > 0)
                    .ok_or_else(|| {
                        self.err(
                            key("agentid"),
                            format!("{id} is not an agentid: use the positive integer WeCom shows for the app (e.g. 1000002)"),
                        )
                    })?,
            ),
        };

        Ok(AppConfig {
            egress,
            kind: raw.kind,
            appid,
            secret_source,
            secret,
            token_api,
            base_url,
            fallback_base_urls,
            // 0 would renew only once the token is dead, leaving requests
            // without one while the fetch runs; a token lives 7200 s.
            refresh_before_expiry: Duration::from_secs(self.within(
                &key("refresh_before_expiry_s"),
                raw.refresh_before_expiry_s,
                defaults::REFRESH_BEFORE_EXPIRY_S,
                1..=7200,
            )?),
            // 0 turns the guard off (tests do); above an hour, a revoked
            // token would go unrenewed too long.
            min_refresh_interval: Duration::from_millis(self.within(
                &key("min_refresh_interval_ms"),
                raw.min_refresh_interval_ms,
                defaults::MIN_REFRESH_INTERVAL_MS,
                0..=3_600_000,
            )?),
            policy,
            agentid,
            name,
        })
    }
}

impl Validator<'_> {
    /// `fallback_base_urls`: each an http(s) URL like `base_url`, none of
    /// them `base_url` itself. Left out, an mp app on WeChat's own host
    /// falls back to WeChat's disaster-recovery host.
    fn fallbacks(
        &self,
        key: &str,
        kind: AppKind,
        default_base: bool,
        given: Option<&[String]>,
        base_url: &BaseUrl,
    ) -> Result<Vec<BaseUrl>, ConfigError> {
        let default: Vec<String> = match (kind, default_base) {
            (AppKind::Mp, true) => defaults::MP_FALLBACK_BASE_URLS
                .iter()
                .map(|u| (*u).to_owned())
                .collect(),
            _ => Vec::new(),
        };
        let urls = given.unwrap_or(&default);
        let mut parsed: Vec<BaseUrl> = Vec::with_capacity(urls.len());
        for url in urls {
            let fallback = BaseUrl::parse(url)
                .map_err(|problem| self.err(key, format!("'{}' {problem}", redact(url))))?;
            let same = |a: &BaseUrl| {
                a.scheme == fallback.scheme
                    && a.authority == fallback.authority
                    && a.path == fallback.path
            };
            if same(base_url) || parsed.iter().any(same) {
                return Err(self.err(
                    key,
                    format!(
                        "'{}' is listed twice (base_url counts): list each other host once",
                        redact(url)
                    ),
                ));
            }
            parsed.push(fallback);
        }
        Ok(parsed)
    }
}

/// An app's id: written in the file or read from the environment.
impl Validator<'_> {
    /// The appid (mp) or corpid (WeCom) from whichever one of `appid`,
    /// `appid_env`, `corpid`, `corpid_env` is set, checked for its shape.
    /// Errors name the key that holds it, and the variable it came from.
    fn appid(&self, name: &str, raw: &RawApp) -> Result<String, ConfigError> {
        let key = |field: &str| format!("apps.{name}.{field}");
        let given = [
            ("appid", raw.appid.as_ref(), false),
            ("appid_env", raw.appid_env.as_ref(), true),
            ("corpid", raw.corpid.as_ref(), false),
            ("corpid_env", raw.corpid_env.as_ref(), true),
        ];
        let set: Vec<(&str, &String, bool)> = given
            .iter()
            .filter_map(|&(field, value, from_env)| value.map(|v| (field, v, from_env)))
            .collect();
        let corpid = set.iter().find(|(field, ..)| field.starts_with("corpid"));
        let (field, value, from_env) = match (raw.kind, set.as_slice()) {
            (AppKind::Mp, _) if corpid.is_some() => {
                return Err(self.err(
                    key(corpid.map_or("corpid", |c| c.0)),
                    "corpid is for kind = \"wecom\"; an mp app has an appid (or appid_env)",
                ))
            }
            (_, [(first, ..), (second, ..), ..]) => {
                return Err(self.err(
                    key(second),
                    format!("give one of {first} and {second}, not both"),
                ))
            }
            (AppKind::Mp, []) => {
                return Err(self.err(
                    key("appid"),
                    "missing: the app's appid (wx…) is required, or appid_env = \"VARIABLE\" to read it from the environment",
                ))
            }
            (AppKind::Wecom, []) => {
                return Err(self.err(
                    key("corpid"),
                    "missing: the WeCom corpid (ww…) is required, or corpid_env = \"VARIABLE\" to read it from the environment",
                ))
            }
            (_, [one]) => *one,
        };
        let (id, shown) = if from_env {
            let id = self
                .env
                .var(value)
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| {
                    self.err(
                        key(field),
                        format!("environment variable {value} is not set: export {value}=<the app's id>"),
                    )
                })?;
            let shown = format!("'{id}' (from {value})");
            (id, shown)
        } else {
            (value.to_owned(), format!("'{value}'"))
        };
        if let Some(problem) = appid_problem(raw.kind, &id) {
            return Err(self.err(key(field), format!("{shown} {problem}")));
        }
        Ok(id)
    }
}

/// Third-party platforms: validated by the app rules (name, appid, secret,
/// base URL, timings, path rules, egress), plus the push keys.
impl Validator<'_> {
    fn platform(
        &self,
        name: String,
        raw: RawPlatform,
        global_proxy: Option<&EgressProxy>,
        apps: &[AppConfig],
    ) -> Result<PlatformConfig, ConfigError> {
        let key = |field: &str| format!("platforms.{name}.{field}");
        if apps.iter().any(|a| a.name == name) {
            return Err(self.err(
                format!("platforms.{name}"),
                "an app has this name too; both route by the first path segment: rename one",
            ));
        }
        if raw.component_appid.is_none() && raw.component_appid_env.is_none() {
            return Err(self.err(
                key("component_appid"),
                "missing: the platform's component_appid (wx…) is required, or component_appid_env = \"VARIABLE\" to read it from the environment",
            ));
        }
        let as_app = RawApp {
            kind: AppKind::Mp,
            appid: raw.component_appid,
            appid_env: raw.component_appid_env,
            corpid: None,
            corpid_env: None,
            secret: raw.secret,
            secret_env: raw.secret_env,
            secret_file: raw.secret_file,
            // Component tokens, like classic ones: each fetch issues a new one.
            token_api: Some(TokenApi::Classic),
            base_url: raw.base_url,
            fallback_base_urls: raw.fallback_base_urls,
            refresh_before_expiry_s: raw.refresh_before_expiry_s,
            min_refresh_interval_ms: raw.min_refresh_interval_ms,
            proxy: raw.proxy,
            allow_paths: raw.allow_paths,
            deny_paths: raw.deny_paths,
            agentid: None,
        };
        // The app rules name keys `apps.NAME.…`: say `platforms.NAME.…`.
        let app = self
            .app(name.clone(), as_app, global_proxy)
            .map_err(|e| match e {
                ConfigError::Invalid { file, key, problem } => ConfigError::Invalid {
                    file,
                    key: key.replacen("apps.", "platforms.", 1).replace(
                        &format!("platforms.{name}.appid"),
                        &format!("platforms.{name}.component_appid"),
                    ),
                    problem: problem.replace("an mp appid", "a component_appid"),
                },
                e => e,
            })?;
        let read = |field: &str, var: Option<String>| -> Result<Option<String>, ConfigError> {
            let Some(var) = var else { return Ok(None) };
            SecretSource::Env(var)
                .read(self.env)
                .map(|s| Some(s.expose().to_owned()))
                .map_err(|problem| self.err(key(field), problem.to_string()))
        };
        let push_token = read("push_token_env", raw.push_token_env)?;
        let aes_key = match read("encoding_aes_key_env", raw.encoding_aes_key_env)? {
            None => None,
            Some(text) => Some(AesKey(aes_key(&text).ok_or_else(|| {
                self.err(
                    key("encoding_aes_key_env"),
                    "not an EncodingAESKey: 43 characters of base64, as the Open Platform console shows it",
                )
            })?)),
        };
        if push_token.is_some() != aes_key.is_some() {
            return Err(self.err(
                key("push_token_env"),
                "raw pushes need both push_token_env and encoding_aes_key_env (or neither, to accept decrypted tickets only)",
            ));
        }
        Ok(PlatformConfig {
            app,
            push_token: push_token.map(crate::secret::Secret::new),
            aes_key,
        })
    }
}

/// WeChat's EncodingAESKey: 43 base64 characters, the key being
/// base64(key + "=").
pub(super) fn aes_key(text: &str) -> Option<[u8; 32]> {
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    // The console's keys are random characters: the last one's two spare
    // bits are often set, which a strict decoder refuses.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    if text.len() != 43 {
        return None;
    }
    let bytes = LENIENT.decode(format!("{text}=")).ok()?;
    bytes.try_into().ok()
}

/// Who may call, limits and path rules.
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
            .map_err(|problem| self.err(&key, problem.to_string()))?;
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
        let header_bytes = self.within(
            "proxy.max_request_header_bytes",
            raw.max_request_header_bytes,
            defaults::MAX_REQUEST_HEADER_BYTES,
            1024..=256 * 1024,
        )?;
        let body_bytes = self.within(
            "proxy.max_request_body_bytes",
            raw.max_request_body_bytes,
            defaults::MAX_REQUEST_BODY_BYTES,
            1..=u64::MAX,
        )?;
        let max_connections = self.within(
            "proxy.max_connections",
            raw.max_connections,
            defaults::MAX_CONNECTIONS,
            1..=1 << 20,
        )?;
        Ok(Limits {
            max_header_bytes: header_bytes as usize,
            max_body_bytes: body_bytes,
            header_read_timeout: self.millis(
                "proxy.header_read_timeout_ms",
                raw.header_read_timeout_ms,
                defaults::HEADER_READ_TIMEOUT_MS,
            )?,
            idle_timeout: self.millis(
                "proxy.idle_timeout_ms",
                raw.idle_timeout_ms,
                defaults::IDLE_TIMEOUT_MS,
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

/// Whether `listen` and `admin_listen` would claim the same port: the same
/// address, or one of them on all addresses. Port 0 (any free port) never
/// clashes.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Why `id` cannot be an appid of `kind`: WeChat's ids are `wx` (WeCom
/// corpids `ww`, or `wx` for older ones) and 16 hex digits, so a placeholder
/// or a pasted secret is caught here rather than by WeChat's 40013.
fn appid_problem(kind: AppKind, id: &str) -> Option<&'static str> {
    let (prefixes, problem): (&[&str], _) = match kind {
        AppKind::Mp => (
            &["wx"],
            "is not an appid: an mp appid is wx and 16 hex digits (mp.weixin.qq.com: Settings and Development > Basic Configuration)",
        ),
        AppKind::Wecom => (
            &["ww", "wx"],
            "is not a corpid: a WeCom corpid is ww (or wx) and 16 hex digits (work.weixin.qq.com: My Company > Company Information)",
        ),
    };
    let shaped = id.len() == 18
        && prefixes.iter().any(|p| id.starts_with(p))
        && id.bytes().skip(2).all(|b| b.is_ascii_hexdigit());
    (!shaped).then_some(problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appids_have_their_platform_shape() {
        assert!(appid_problem(AppKind::Mp, "wx1234567890abcdef").is_none());
        assert!(appid_problem(AppKind::Wecom, "ww1234567890abcdef").is_none());
        assert!(appid_problem(AppKind::Wecom, "wx1234567890ABCDEF").is_none());
        for id in [
            "",
            "wx",
            "ww1234567890abcdef",
            "wx1234567890abcde",
            "wx1234567890abcdefa",
            "wx1234567890abcdeg",
            " wx1234567890abcdef",
            "REPLACE_WITH_YOUR_APPID",
        ] {
            assert!(appid_problem(AppKind::Mp, id).is_some(), "{id:?}");
        }
        assert!(appid_problem(AppKind::Wecom, "wa1234567890abcdef").is_some());
    }

    #[test]
    fn listeners_clash_on_the_same_port_unless_it_is_any() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlap(addr("127.0.0.1:8080"), addr("127.0.0.1:8080")));
        assert!(overlap(addr("0.0.0.0:8080"), addr("127.0.0.1:8080")));
        assert!(overlap(addr("127.0.0.1:8080"), addr("[::]:8080")));
        assert!(!overlap(addr("127.0.0.1:8080"), addr("127.0.0.2:8080")));
        assert!(!overlap(addr("127.0.0.1:8080"), addr("127.0.0.1:8079")));
        assert!(!overlap(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
    }
}
