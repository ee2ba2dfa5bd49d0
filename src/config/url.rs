//! The URLs a config holds: where an app's calls go, the egress proxy, the
//! Redis store; and the one way any of them is shown in a message.
//!
//! Two of them may carry a password (`http://user:password@proxy:3128`,
//! `redis://:password@host`), so every message shows a URL through
//! [`redact`], never as written.

use std::fmt;

use base64::Engine as _;
use http::uri::{Authority, Scheme};

/// `url` for messages and logs: the userinfo's password replaced by `***`
/// (a userinfo without `:` may be a bare token, so it is hidden whole).
/// Works on text that does not parse, since that is when it is shown.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    // The last '@' ends the userinfo: a password may hold an unescaped '@'.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => format!("{scheme}***@{host}"),
        },
        None => url.to_owned(),
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

/// Why a `base_url` is not acceptable.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum BaseUrlError {
    /// Not a URL at all.
    #[error("is not a URL: write e.g. https://api.weixin.qq.com")]
    NotAUrl,
    /// Another scheme than http(s).
    #[error("is not an http(s) URL: write e.g. https://api.weixin.qq.com")]
    Scheme,
    /// No host, or an empty one.
    #[error("has no host")]
    NoHost,
    /// `user:password@`: the proxy authenticates with the token, nothing else.
    #[error("must not carry credentials")]
    Credentials,
    /// A query would be sent with every call.
    #[error("must not have a query")]
    Query,
}

impl BaseUrl {
    /// Checks an `http(s)://host[:port][/prefix]` URL.
    pub fn parse(value: &str) -> Result<BaseUrl, BaseUrlError> {
        let uri: http::Uri = value.parse().map_err(|_| BaseUrlError::NotAUrl)?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(BaseUrlError::Scheme),
        };
        let authority = uri.authority().cloned().ok_or(BaseUrlError::NoHost)?;
        if authority.as_str().contains('@') {
            return Err(BaseUrlError::Credentials);
        }
        if authority.host().is_empty() {
            return Err(BaseUrlError::NoHost);
        }
        if uri.query().is_some() {
            return Err(BaseUrlError::Query);
        }
        let host =
            http::HeaderValue::from_str(authority.as_str()).map_err(|_| BaseUrlError::NoHost)?;
        Ok(BaseUrl {
            host,
            scheme,
            authority,
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
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
        // Never the credentials: `uri` holds none.
        write!(f, "{}", self.uri.authority().map_or("?", |a| a.as_str()))
    }
}

/// Why an egress proxy URL is not acceptable.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum EgressError {
    /// Not a URL at all.
    #[error("is not a URL: write http://host:port or http://user:password@host:port")]
    NotAUrl,
    /// Another scheme than http.
    #[error("must be an http:// proxy URL (the tunnel inside is TLS)")]
    Scheme,
    /// No host, or an empty one (`http://:3128`).
    #[error("has no host: write http://host:port")]
    NoHost,
    /// No port: proxies listen on all sorts of ports, so none is guessed.
    #[error("needs a port, e.g. http://10.0.0.1:3128")]
    NoPort,
    /// A path or a query would be ignored.
    #[error("must not have a path or query")]
    PathOrQuery,
    /// A `%` not followed by two hex digits in the credentials.
    #[error("has badly escaped credentials")]
    BadEscape,
    /// Credentials that make no valid header.
    #[error("has credentials that cannot be sent")]
    BadCredentials,
}

impl EgressProxy {
    /// Checks an `http://[user:password@]host:port` URL and prepares its
    /// `Proxy-Authorization`.
    pub fn parse(url: &str) -> Result<EgressProxy, EgressError> {
        let uri: http::Uri = url.parse().map_err(|_| EgressError::NotAUrl)?;
        if uri.scheme_str() != Some("http") {
            return Err(EgressError::Scheme);
        }
        let authority = uri.authority().ok_or(EgressError::NoHost)?;
        if authority.host().is_empty() {
            return Err(EgressError::NoHost);
        }
        if authority.port_u16().is_none() {
            return Err(EgressError::NoPort);
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(EgressError::PathOrQuery);
        }
        let (userinfo, host) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority.as_str()),
        };
        let auth = userinfo.map(basic_auth).transpose()?;
        let uri = http::Uri::try_from(format!("http://{host}")).map_err(|_| EgressError::NoHost)?;
        Ok(EgressProxy { uri, auth })
    }
}

/// `Basic base64(user:password)` from a URL's percent-escaped userinfo.
fn basic_auth(userinfo: &str) -> Result<http::HeaderValue, EgressError> {
    // `percent_decode_str` passes a bad escape through as text; refuse it
    // instead, since it is most likely a password typed unescaped.
    let escapes_ok = userinfo.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Err(EgressError::BadEscape);
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(userinfo).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(decoded);
    let mut value = http::HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| EgressError::BadCredentials)?;
    value.set_sensitive(true);
    Ok(value)
}

/// A `redis://`, `rediss://` or `redis-sentinel://` URL. It may hold a
/// password, so `Debug` and `Display` show it through [`redact`].
#[derive(Clone)]
pub struct RedisUrl {
    /// The URL as configured, for the one place that connects.
    url: String,
    /// The URL without its password, for messages and logs.
    shown: String,
    /// The password as written in the URL, to scrub from error messages.
    password: Option<String>,
    /// Where the server is: named, or found through Sentinel.
    pub target: RedisTarget,
}

/// How the store finds its Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, the URL's (redis-rs reads the URL itself).
    Server,
    /// `redis-sentinel://[:password@]host:port[,host:port…][/db]#MASTER`:
    /// the sentinels are asked which server is the primary of `master`,
    /// again after every failover.
    Sentinel {
        /// The sentinels' addresses, asked in turn.
        sentinels: Vec<(String, u16)>,
        /// The name the sentinels monitor the primary under.
        master: String,
        /// The database on the data nodes.
        db: i64,
        /// The data nodes' password (percent-decoded), not the sentinels'.
        password: Option<String>,
    },
}

/// The port sentinels listen on when a `redis-sentinel://` host names none.
const SENTINEL_PORT: u16 = 26379;

/// Why a Redis URL is not acceptable. Shows the URL only redacted.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    /// Another scheme.
    #[error("must start with redis:// (rediss:// for TLS, redis-sentinel:// for Sentinel)")]
    Scheme,
    /// A `redis-sentinel://` URL that does not follow the form.
    #[error("'{shown}': {problem}: write redis-sentinel://[:password@]host:port[,host:port…][/db]#MASTER")]
    Sentinel {
        /// The URL, redacted.
        shown: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Not a URL at all.
    #[error("is not a URL: write redis://[user:password@]host[:port][/db]")]
    NotAUrl,
    /// `#insecure` would turn off certificate checks.
    #[error("'{0}': a #fragment (#insecure) is not supported: certificates are always verified")]
    Fragment(String),
    /// redis-rs options in the query are not supported.
    #[error("'{0}' must not have a query")]
    Query(String),
    /// redis-rs refused it.
    #[error("'{shown}' is not a usable Redis URL: {reason}")]
    Unusable {
        /// The URL, redacted.
        shown: String,
        /// redis-rs's message, its password scrubbed.
        reason: String,
    },
}

impl RedisUrl {
    /// Checks `value` and prepares its redacted form. The error never repeats
    /// `value`'s password.
    pub fn parse(value: &str) -> Result<RedisUrl, RedisUrlError> {
        if let Some(rest) = value.strip_prefix("redis-sentinel://") {
            return RedisUrl::sentinel(value, rest);
        }
        if !(value.starts_with("redis://") || value.starts_with("rediss://")) {
            return Err(RedisUrlError::Scheme);
        }
        let url = redis::parse_redis_url(value).ok_or(RedisUrlError::NotAUrl)?;
        let shown = redact(value);
        if url.fragment().is_some() {
            return Err(RedisUrlError::Fragment(shown));
        }
        if url.query().is_some() {
            return Err(RedisUrlError::Query(shown));
        }
        let redis_url = RedisUrl {
            url: value.to_owned(),
            shown,
            password: url.password().map(str::to_owned),
            target: RedisTarget::Server,
        };
        if let Err(e) = redis::Client::open(value) {
            return Err(RedisUrlError::Unusable {
                reason: redis_url.scrub(e.to_string()),
                shown: redis_url.shown,
            });
        }
        Ok(redis_url)
    }

    /// `redis-sentinel://[[user]:password@]host[:port][,host[:port]…][/db]#MASTER`,
    /// `rest` being what follows the scheme (the Lettuce and Spring form).
    fn sentinel(value: &str, rest: &str) -> Result<RedisUrl, RedisUrlError> {
        let shown = redact(value);
        let bad = |problem| RedisUrlError::Sentinel {
            shown: shown.clone(),
            problem,
        };
        let (rest, master) = rest
            .split_once('#')
            .ok_or_else(|| bad("no #MASTER (the name the sentinels monitor)"))?;
        if master.is_empty() || master.contains(char::is_whitespace) {
            return Err(bad("the #MASTER name is empty or has spaces"));
        }
        if rest.contains('?') {
            return Err(bad("a query is not supported"));
        }
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let password = match userinfo.map(|u| u.split_once(':').map_or(u, |(_, p)| p)) {
            Some(p) if !p.is_empty() => Some(
                percent_encoding::percent_decode_str(p)
                    .decode_utf8()
                    .map_err(|_| bad("the password is not UTF-8 once unescaped"))?
                    .into_owned(),
            ),
            _ => None,
        };
        let (hosts, db) = match rest.split_once('/') {
            Some((hosts, "")) => (hosts, 0),
            Some((hosts, db)) => (
                hosts,
                db.parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or_else(|| bad("the /db is not a database number"))?,
            ),
            None => (rest, 0),
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad("a sentinel's port is not a port number"))?,
                ),
                None => (host, SENTINEL_PORT),
            };
            if name.is_empty() || name.contains(['/', '[', ']']) {
                return Err(bad("a sentinel's host is empty or not a host name"));
            }
            sentinels.push((name.to_owned(), port));
        }
        Ok(RedisUrl {
            url: value.to_owned(),
            shown,
            password: userinfo
                .and_then(|u| u.split_once(':').map(|(_, p)| p.to_owned()))
                .filter(|p| !p.is_empty()),
            target: RedisTarget::Sentinel {
                sentinels,
                master: master.to_owned(),
                db,
                password,
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_and_keeps_the_rest() {
        for (url, shown) in [
            (
                "redis://app:pw@127.0.0.1:6379/0",
                "redis://app:***@127.0.0.1:6379/0",
            ),
            (
                "rediss://:pw@redis.internal/0",
                "rediss://:***@redis.internal/0",
            ),
            ("http://user:p@ss@proxy:3128", "http://user:***@proxy:3128"),
            ("http://bare-token@proxy:3128", "http://***@proxy:3128"),
            ("user:pw@proxy:3128", "user:***@proxy:3128"),
            ("https://api.weixin.qq.com/x", "https://api.weixin.qq.com/x"),
        ] {
            assert_eq!(redact(url), shown);
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_db_master_and_the_data_nodes_password() {
        let url = RedisUrl::parse("redis-sentinel://:p%40ss@10.0.0.1:26380,sentinel-2/3#mymaster")
            .unwrap();
        assert_eq!(
            url.target,
            RedisTarget::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26380), ("sentinel-2".into(), 26379)],
                master: "mymaster".into(),
                db: 3,
                password: Some("p@ss".into()),
            }
        );
        assert_eq!(
            url.to_string(),
            "redis-sentinel://:***@10.0.0.1:26380,sentinel-2/3#mymaster"
        );
        assert_eq!(url.scrub("auth p%40ss failed".into()), "auth *** failed");
        let plain = RedisUrl::parse("redis-sentinel://a:1#m").unwrap();
        assert!(matches!(
            plain.target,
            RedisTarget::Sentinel {
                db: 0,
                password: None,
                ..
            }
        ));
        for bad in [
            "redis-sentinel://a:1",
            "redis-sentinel://a:1#",
            "redis-sentinel://a:x#m",
            "redis-sentinel://a:1/x#m",
            "redis-sentinel://,a:1#m",
            "redis-sentinel://a:1?x=1#m",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("#MASTER"), "{bad}: {err}");
        }
    }

    #[test]
    fn egress_credentials_become_basic_auth() {
        let proxy = EgressProxy::parse("http://us%3Aer:p%40ss@10.0.0.1:3128").unwrap();
        // base64("us:er:p@ss")
        assert_eq!(proxy.auth.unwrap(), "Basic dXM6ZXI6cEBzcw==");
        assert_eq!(proxy.uri, "http://10.0.0.1:3128/");
        assert!(matches!(
            EgressProxy::parse("http://u:100%@10.0.0.1:3128"),
            Err(EgressError::BadEscape)
        ));
    }
}
