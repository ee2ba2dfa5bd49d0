//! The fake's user-login endpoints (`/sns/…`): an app's logins take its appid
//! and AppSecret, a platform's take its component_appid and component token,
//! the rest take the user's own OAuth token. Each call is recorded like an API
//! call, `token_ok` saying whether WeChat would have accepted its credentials.

use std::sync::Mutex;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::body::Payload;
use super::handler::{collect, query_values, respond};
use super::tokens::Verdict;
use super::{lock, Recorded, State, USER_TOKEN};

/// The login paths it answers; other `/sns/…` paths are ordinary API calls.
pub(super) const PATHS: [&str; 8] = [
    "/sns/jscode2session",
    "/sns/oauth2/access_token",
    "/sns/oauth2/refresh_token",
    "/sns/auth",
    "/sns/userinfo",
    "/sns/oauth2/component/access_token",
    "/sns/oauth2/component/refresh_token",
    "/sns/component/jscode2session",
];

/// Answers the login paths.
pub(super) async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Payload> {
    let query = req.uri().query().map(str::to_owned);
    let path = req.uri().path().to_owned();
    let (method, headers) = (req.method().clone(), req.headers().clone());
    let body = collect(req).await;
    let all = |name: &str| query_values(query.as_deref(), name);
    let mut st = lock(state);
    let now = Instant::now();
    let no_secret = ["secret", "appsecret", "component_appsecret"]
        .iter()
        .all(|name| all(name).is_empty());
    let ok = match path.as_str() {
        // An app's login: exactly one appid and secret, the right pair, and
        // no access_token (it is not a token call).
        "/sns/jscode2session" | "/sns/oauth2/access_token" => {
            let (appid, secret) = (all("appid"), all("secret"));
            appid.len() == 1
                && secret.len() == 1
                && all("grant_type") == ["authorization_code"]
                && all("access_token").is_empty()
                && st.tokens.secret_ok(&appid[0], &secret[0])
        }
        // A platform's login of an authorizer's user: its live component token.
        "/sns/oauth2/component/access_token"
        | "/sns/oauth2/component/refresh_token"
        | "/sns/component/jscode2session" => {
            let component = all("component_appid");
            let token = all("component_access_token");
            no_secret
                && component.len() == 1
                && st.component.platforms.contains_key(&component[0])
                && matches!(st.tokens.check(&token, now), Verdict::Valid)
                && st.tokens.owner(&token[0], now).as_deref() == Some(component[0].as_str())
        }
        // The user's own token calls: the user's token, no app's.
        _ => no_secret && all("access_token") == [USER_TOKEN],
    };
    st.requests.push(Recorded {
        method,
        path: path.clone(),
        query: query.clone(),
        headers,
        body,
        token_ok: ok,
    });
    let answer = match (ok, path.as_str()) {
        (false, _) => json!({ "errcode": 40125, "errmsg": "invalid appsecret or credential" }),
        (true, "/sns/jscode2session" | "/sns/component/jscode2session") => {
            json!({ "openid": "o-user-1", "session_key": "session-key-1" })
        }
        (true, "/sns/auth") => json!({ "errcode": 0, "errmsg": "ok" }),
        (true, _) => json!({
            "access_token": USER_TOKEN, "expires_in": 7200,
            "refresh_token": "user-refresh-token-0001", "openid": "o-user-1", "scope": "snsapi_base"
        }),
    };
    respond(
        StatusCode::OK,
        "application/json; encoding=utf-8",
        answer.to_string(),
    )
}
