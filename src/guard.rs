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
//! - Anything carrying an AppSecret: a token request of the other app kind,
//!   the third-party platform's component token, or a `secret`-like query
//!   parameter on any path. The proxy holds the secret; callers never need
//!   to send one, and one sent by mistake must not reach WeChat's logs.

use http::request::Parts;
use http::Method;

use crate::config::{AppConfig, AppKind};
use crate::error::LocalError;
use crate::query;

/// Query parameters that carry an AppSecret in WeChat's APIs.
const SECRET_PARAMS: [&str; 4] = ["secret", "corpsecret", "appsecret", "component_appsecret"];

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

/// Refuses a request that carries an AppSecret or asks for a token the app
/// does not use. `path` is after the app prefix; the app's own token paths
/// were answered with the placeholder before this.
pub fn secrets(app: &AppConfig, path: &str, parts: &Parts) -> Result<(), LocalError> {
    let own = match app.kind {
        AppKind::Mp => "/cgi-bin/token or /cgi-bin/stable_token",
        AppKind::Wecom => "/cgi-bin/gettoken",
    };
    let token_path = matches!(
        path,
        "/cgi-bin/token"
            | "/cgi-bin/stable_token"
            | "/cgi-bin/gettoken"
            | "/cgi-bin/component/api_component_token"
    );
    if token_path {
        return Err(LocalError::TokenPath {
            app: app.name.clone(),
            kind: app.kind.as_str(),
            path: path.to_owned(),
            own,
        });
    }
    if let Some(name) = parts.uri.query().and_then(secret_param) {
        return Err(LocalError::Secret {
            app: app.name.clone(),
            param: name,
        });
    }
    Ok(())
}

/// The first `secret`-like parameter name in `query`, however encoded.
fn secret_param(query: &str) -> Option<&'static str> {
    query.split('&').find_map(|part| {
        let name = part.split_once('=').map_or(part, |(n, _)| n);
        SECRET_PARAMS.into_iter().find(|want| {
            name.eq_ignore_ascii_case(want)
                || (name.contains('%') && query::decoded_eq(name, want.as_bytes()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parameters_are_found_however_spelled() {
        assert_eq!(secret_param("appid=x&secret=y"), Some("secret"));
        assert_eq!(secret_param("corpsecret"), Some("corpsecret"));
        assert_eq!(secret_param("a=1&secr%65t=y"), Some("secret"));
        assert_eq!(secret_param("SECRET=y"), Some("secret"));
        assert_eq!(
            secret_param("component_appsecret=z"),
            Some("component_appsecret")
        );
        assert_eq!(secret_param("secret_key=1&secrets=2&x=secret"), None);
    }
}
