//! Answers the proxy makes itself when it cannot forward: WeChat-shaped JSON
//! (`{"errcode":…,"errmsg":…}`) so SDKs report them like WeChat's own, with a
//! fitting HTTP status, and marked by a header so nobody mistakes them for
//! WeChat's.

use http::{header, HeaderValue, Response, StatusCode};

use crate::forward::body::ProxyBody;

/// Header on every answer the proxy makes itself; the value says which kind.
pub const LOCAL_ANSWER: &str = "x-wechat-token-proxy";

/// A request the proxy could not serve.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The first path segment names no app and there is no default app.
    #[error("no app for path prefix '{prefix}': use one of {apps}")]
    UnknownApp {
        /// The first path segment as sent.
        prefix: String,
        /// The configured apps, comma-separated.
        apps: String,
    },
    /// A platform path names an authorizer that is not registered.
    #[error("{platform}: no authorizer '{appid}': register it with PUT /platforms/{platform}/authorizers/APPID on the admin listener; platform paths are /{platform}/APPID/cgi-bin/… and /{platform}/cgi-bin/component/…")]
    UnknownAuthorizer {
        /// The platform's name.
        platform: String,
        /// The path segment as sent.
        appid: String,
    },
    /// No valid token could be had.
    #[error("{app}: no valid access_token: {reason}")]
    TokenUnavailable {
        /// The app's name.
        app: String,
        /// WeChat's errcode, or -1.
        errcode: i64,
        /// What went wrong, with WeChat's errmsg.
        reason: String,
    },
    /// The client's request body broke off, or its path cannot be forwarded.
    #[error("bad request: {0}")]
    ClientBody(String),
    /// The upstream could not be reached.
    #[error("{app}: cannot reach WeChat: {reason}")]
    UpstreamUnreachable {
        /// The app's name.
        app: String,
        /// The connect or protocol error.
        reason: String,
    },
    /// The upstream did not answer in time.
    #[error("{app}: WeChat did not answer within {ms} ms")]
    UpstreamTimeout {
        /// The app's name.
        app: String,
        /// The configured request timeout.
        ms: u128,
    },
    /// The caller did not present the proxy's key.
    #[error("missing or wrong key: send Authorization: Bearer <key> or X-Wechat-Proxy-Key: <key>")]
    Unauthorized,
    /// The app's path policy refuses the path.
    #[error("{app}: {refusal}")]
    Forbidden {
        /// The app's name.
        app: String,
        /// Which rule refused, and the path.
        refusal: crate::forward::policy::Refusal,
    },
    /// The request body is over `max_request_body_bytes`.
    #[error(transparent)]
    BodyTooLarge(#[from] crate::inbound::limits::BodyTooLarge),
    /// A body kept for replay did not arrive within `idle_timeout_ms`.
    #[error("the request body did not arrive within {ms} ms")]
    ClientTimeout {
        /// The configured limit.
        ms: u128,
    },
    /// No connection to the upstream within `connect_timeout_ms`.
    #[error("{app}: cannot connect to WeChat within {ms} ms")]
    UpstreamConnectTimeout {
        /// The app's name.
        app: String,
        /// The configured connect timeout.
        ms: u128,
    },
    /// `CONNECT`: the application treats the proxy as a forward proxy.
    #[error("CONNECT is not supported: this proxy is not a forward proxy; unset HTTPS_PROXY for it and use http://<proxy>/ as the API base URL instead of https://api.weixin.qq.com")]
    Connect,
    /// An absolute-form target naming a host that is not the app's.
    #[error("{app}: refused a request for host {host}: this proxy only serves {own}; send other hosts' requests directly")]
    OtherHost {
        /// The app's name.
        app: String,
        /// The host the target named.
        host: String,
        /// The app's WeChat host.
        own: String,
    },
    /// The request carries an AppSecret.
    #[error("{app}: refused a request carrying an AppSecret ({param}=): the proxy holds the app's secret and never forwards one; remove it")]
    Secret {
        /// The app's name.
        app: String,
        /// The parameter's name.
        param: &'static str,
    },
    /// A token request the app's kind does not use.
    #[error("{app}: {path} is not a token endpoint of a {kind} app: request {own} (answered by the proxy), or use the right app prefix")]
    TokenPath {
        /// The app's name.
        app: String,
        /// The app's kind.
        kind: &'static str,
        /// The path after the app prefix.
        path: String,
        /// The app's own token paths.
        own: &'static str,
    },
    /// The path has no normal form every server agrees on.
    #[error("the path cannot be served as sent: it holds {0}; send the plain path")]
    BadPath(#[from] crate::forward::route::BadPath),
    /// A web browser sent the request.
    #[error("refused a request sent by a web browser (Origin or Sec-Fetch-Site): the proxy serves application servers; call it from your backend, never from a page")]
    Browser,
    /// A loopback listener was reached under a name that is not loopback.
    #[error("refused Host: this listener is on a loopback address and serves only localhost, 127.0.0.1 and [::1]; another name is how a web page reaches it (DNS rebinding)")]
    ForeignHost,
    /// A login that needs an account's own AppSecret, under a platform.
    #[error("{platform}: {path} needs the account's own AppSecret; a platform logs users in with /{platform}/sns/component/jscode2session and /{platform}/sns/oauth2/component/access_token")]
    AuthorizerLogin {
        /// The platform's name.
        platform: String,
        /// The path after the authorizer's appid.
        path: String,
    },
    /// An answer that can hold credentials could not be scrubbed.
    #[error("{app}: WeChat's answer was withheld: {reason}")]
    Unscrubbable {
        /// The app's name.
        app: String,
        /// Why it could not be scrubbed.
        reason: &'static str,
    },
    /// WeChat's answer stopped arriving mid-body.
    #[error("{app}: WeChat's answer stopped arriving for {ms} ms")]
    UpstreamStalled {
        /// The app's name.
        app: String,
        /// The allowed gap.
        ms: u128,
    },
}

impl LocalError {
    /// HTTP status and errcode: the one place errors map to both.
    fn status_and_errcode(&self) -> (StatusCode, i64) {
        match self {
            LocalError::UnknownApp { .. } => (StatusCode::NOT_FOUND, -1),
            LocalError::UnknownAuthorizer { .. } => (StatusCode::NOT_FOUND, -1),
            LocalError::TokenUnavailable { errcode, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, *errcode)
            }
            LocalError::ClientBody(_) => (StatusCode::BAD_REQUEST, -1),
            LocalError::UpstreamUnreachable { .. } => (StatusCode::BAD_GATEWAY, -1),
            LocalError::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, -1),
            LocalError::Unauthorized => (StatusCode::UNAUTHORIZED, -1),
            LocalError::Forbidden { .. } => (StatusCode::FORBIDDEN, -1),
            LocalError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, -1),
            LocalError::ClientTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, -1),
            LocalError::UpstreamConnectTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, -1),
            LocalError::Connect => (StatusCode::METHOD_NOT_ALLOWED, -1),
            LocalError::OtherHost { .. } => (StatusCode::MISDIRECTED_REQUEST, -1),
            LocalError::Secret { .. } => (StatusCode::FORBIDDEN, -1),
            LocalError::TokenPath { .. } => (StatusCode::NOT_FOUND, -1),
            LocalError::UpstreamStalled { .. } => (StatusCode::GATEWAY_TIMEOUT, -1),
            LocalError::BadPath(_) => (StatusCode::BAD_REQUEST, -1),
            LocalError::Browser => (StatusCode::FORBIDDEN, -1),
            LocalError::ForeignHost => (StatusCode::MISDIRECTED_REQUEST, -1),
            LocalError::AuthorizerLogin { .. } => (StatusCode::NOT_FOUND, -1),
            LocalError::Unscrubbable { .. } => (StatusCode::BAD_GATEWAY, -1),
        }
    }

    /// The response to send.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (status, errcode) = self.status_and_errcode();
        let mut response = json_response(
            status,
            "error",
            &serde_json::json!({
                "errcode": errcode,
                "errmsg": self.to_string(),
            }),
        );
        match self {
            LocalError::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wechat-token-proxy\""),
                );
            }
            LocalError::Connect => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON answer made by the proxy itself, marked with [`LOCAL_ANSWER`].
pub fn json_response(
    status: StatusCode,
    kind: &'static str,
    body: &serde_json::Value,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(LOCAL_ANSWER, HeaderValue::from_static(kind));
    response
}

/// An error and its causes, joined by ": ". hyper's own messages
/// ("client error (Connect)", "connection error") say little without them;
/// none of hyper's or rustls's causes holds a URL, so no token or secret.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// `error`, then its source, its source's source, and so on: the one walk
/// over an error chain, for finding a cause by type or printing them all.
pub fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}
