//! Requests the proxy answers itself and never forwards, because forwarding
//! them would spend the app's token on something it was not given for, or
//! carry a credential to WeChat on a caller's behalf:
//!
//! - `CONNECT`: an application that set `HTTPS_PROXY` to the proxy. A tunnel
//!   would bypass the token entirely; the proxy is a base URL, not a
//!   forward proxy.
//! - An absolute-form target (`GET http://host/path`) naming a host other
//!   than the app's WeChat hosts: the token must not go to, or be used for,
//!   another service. Old HTTP clients behind `HTTPS_PROXY` send the app's
//!   own host this way, and that is served wherever `base_url` points (an
//!   egress relay, a stand-in) and whichever fallback host serves now.
//! - Anything carrying an AppSecret: a `secret`-like query parameter on any
//!   path (on a login route, the client's `secret` is dropped and the app's
//!   placed). The proxy holds the secret; callers never need to send one,
//!   and one sent by mistake must not reach WeChat's logs. (Token requests
//!   of another kind are refused by the route table.)
//! - A request a web browser sent: a page on any site could otherwise make
//!   the user's browser call the proxy with the app's token.

use http::request::Parts;
use http::{header, Method};

use crate::config::AppConfig;
use crate::error::LocalError;
use crate::forward::query;
use crate::forward::route::Place;

/// Query parameters that carry an AppSecret in WeChat's APIs.
const SECRET_PARAMS: [&str; 4] = ["secret", "corpsecret", "appsecret", "component_appsecret"];

/// Named once: a name given as a string is parsed on every lookup, and
/// every request is looked at for it.
const SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// Refuses a `CONNECT`, before anything else looks at the request.
pub fn method(parts: &Parts) -> Result<(), LocalError> {
    if parts.method == Method::CONNECT {
        return Err(LocalError::Connect);
    }
    Ok(())
}

/// Refuses an absolute-form target whose host is none of `app`'s WeChat
/// hosts (its kind's own, `base_url`'s, a fallback's).
/// Port and scheme may differ: such clients say `http://` and mean the
/// HTTPS base URL.
pub fn target(app: &AppConfig, parts: &Parts) -> Result<(), LocalError> {
    let Some(host) = parts.uri.host() else {
        return Ok(());
    };
    if app.is_own_host(host) {
        return Ok(());
    }
    Err(LocalError::OtherHost {
        app: app.name.clone(),
        host: host.to_owned(),
        own: app.kind.wechat_host().to_owned(),
    })
}

/// Refuses a request that carries an AppSecret. On a login route the proxy
/// places the app's `secret` itself, so a client's `secret` there is
/// dropped rather than refused (`place` says which).
pub fn secrets(app: &AppConfig, place: Place, parts: &Parts) -> Result<(), LocalError> {
    let dropped = match place {
        Place::AppSecret => Some("secret"),
        _ => None,
    };
    if let Some(name) = parts.uri.query().and_then(|q| secret_param(q, dropped)) {
        return Err(LocalError::Secret {
            app: app.name.clone(),
            param: name,
        });
    }
    Ok(())
}

/// Refuses a request a web browser sent: it carries `Origin`, or a
/// `Sec-Fetch-Site` other than `none` (a URL typed in). SDKs and servers send
/// neither, and a page on any site must not spend the app's token.
pub fn browser(parts: &Parts) -> Result<(), LocalError> {
    // One pass over the few headers a request has, rather than two hashed
    // lookups: every request is looked at.
    let from_browser = parts.headers.iter().any(|(name, value)| {
        *name == header::ORIGIN || (*name == SEC_FETCH_SITE && value != "none")
    });
    if from_browser {
        return Err(LocalError::Browser);
    }
    Ok(())
}

/// The first `secret`-like parameter name in `query`, however encoded,
/// but for `dropped` spelled as the query rewrite drops it (exactly, or
/// percent-encoded): any other spelling of it would go upstream.
fn secret_param(query: &str, dropped: Option<&str>) -> Option<&'static str> {
    query.split('&').find_map(|part| {
        let name = part.split_once('=').map_or(part, |(n, _)| n);
        let escaped = name.contains('%');
        // Unescaped, only a name as long as a secret's can be one: most
        // names end here.
        if !escaped && !SECRET_PARAMS.iter().any(|want| want.len() == name.len()) {
            return None;
        }
        let decoded = |want: &str| escaped && query::decoded_eq(name, want.as_bytes());
        SECRET_PARAMS.into_iter().find(|want| {
            let spelled = name.eq_ignore_ascii_case(want) || decoded(want);
            let rewritten = Some(*want) == dropped && (name == *want || decoded(want));
            spelled && !rewritten
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parameters_are_found_however_spelled() {
        assert_eq!(secret_param("appid=x&secret=y", None), Some("secret"));
        assert_eq!(secret_param("corpsecret", None), Some("corpsecret"));
        assert_eq!(secret_param("a=1&secr%65t=y", None), Some("secret"));
        assert_eq!(secret_param("SECRET=y", None), Some("secret"));
        assert_eq!(
            secret_param("component_appsecret=z", None),
            Some("component_appsecret")
        );
        assert_eq!(secret_param("secret_key=1&secrets=2&x=secret", None), None);
        assert_eq!(secret_param("secret=y&secr%65t=z", Some("secret")), None);
        assert_eq!(
            secret_param("secret=y&SECRET=z", Some("secret")),
            Some("secret")
        );
        assert_eq!(
            secret_param("secret=y&appsecret=z", Some("secret")),
            Some("appsecret")
        );
    }
}
