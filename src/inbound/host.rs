//! Which `Host` a listener answers to. A listener on a loopback address is
//! meant for this machine's processes; a web page reaches it only by a name
//! of its own that resolves to 127.0.0.1 (DNS rebinding), and then sends
//! that name as `Host`. So a loopback listener serves loopback names only,
//! and answers any other with 421.

use http::header::HOST;
use http::request::Parts;

use crate::error::LocalError;

/// The check for one listener.
#[derive(Debug, Clone, Copy)]
pub struct Hosts {
    /// Whether the listener is on a loopback address.
    loopback: bool,
}

impl Hosts {
    /// The check for a listener bound to `addr`.
    pub fn of(addr: std::net::SocketAddr) -> Hosts {
        Hosts {
            loopback: addr.ip().is_loopback(),
        }
    }

    /// Refuses a request on a loopback listener whose `Host` is not a
    /// loopback name. An absolute-form target (an HTTP client behind
    /// `HTTPS_PROXY`) names WeChat's host instead; the route checks that one.
    pub fn check(&self, parts: &Parts) -> Result<(), LocalError> {
        if !self.loopback || parts.uri.authority().is_some() {
            return Ok(());
        }
        match parts.headers.get(HOST).map(|v| v.to_str()) {
            None => Ok(()),
            Some(Ok(host)) if is_loopback(host) => Ok(()),
            Some(_) => Err(LocalError::ForeignHost),
        }
    }
}

/// Whether `host` (a `Host` value: name or address, maybe a port) names
/// this machine: `localhost` and names under it, 127.0.0.0/8, `[::1]`.
fn is_loopback(host: &str) -> bool {
    // The spellings nearly every client sends, without parsing an address.
    let bare = host.rsplit_once(':').map_or(host, |(name, _)| name);
    if bare == "127.0.0.1" || bare == "localhost" {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, port)) if port.is_empty() || port.starts_with(':') => addr,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let lower = |n: &str| n.eq_ignore_ascii_case("localhost");
    lower(name)
        || name
            .len()
            .checked_sub(".localhost".len())
            .is_some_and(|at| {
                name.is_char_boundary(at) && name[at..].eq_ignore_ascii_case(".localhost")
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses_with_or_without_a_port() {
        for host in [
            "localhost",
            "LocalHost:8080",
            "localhost.",
            "app.localhost",
            "127.0.0.1",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:9090",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "10.0.0.1:80",
            "[::2]",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
