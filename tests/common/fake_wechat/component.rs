//! The fake's third-party platform endpoints (开放平台): the component token
//! (secret and `component_verify_ticket` checked), authorizer tokens from
//! refresh tokens (rotated on demand, revoked on demand), the paged
//! authorizer list, the authorization-code exchange and the push request.
//! Tokens are minted by [`super::tokens::Tokens`], so API calls made with
//! them are judged like any other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::body::Payload;
use super::handler::{collect, query_values, respond};
use super::tokens::Verdict;
use super::{lock, Recorded, State};

/// Everything the fake knows about platforms.
#[derive(Default)]
pub(super) struct Component {
    /// component_appid → (component_appsecret, the ticket it last pushed).
    pub platforms: HashMap<String, (String, Option<String>)>,
    /// authorizer appid → its current refresh token (sorted, for paging).
    pub authorizers: BTreeMap<String, String>,
    /// Authorizers whose refresh token WeChat refuses (61023).
    pub revoked: Vec<String>,
    /// Hand out a new refresh token with every authorizer token.
    pub rotate: bool,
    /// authorization_code → authorizer appid.
    pub codes: HashMap<String, String>,
    /// `api_component_token` calls, refused ones included.
    pub component_fetches: usize,
    /// `api_authorizer_token` calls by authorizer appid.
    pub authorizer_fetches: HashMap<String, usize>,
    /// `api_start_push_ticket` calls.
    pub start_push: usize,
    /// `api_get_authorizer_list` calls.
    pub list_calls: usize,
    /// `api_authorizer_token` calls received, counted as they arrive (before
    /// any token delay), so a test can act while one is answered.
    pub authorizer_token_arrivals: usize,
    /// `api_query_auth` calls, refused ones included.
    pub query_auth_calls: usize,
    /// Wait before each `api_get_authorizer_list` answer.
    pub list_delay: Duration,
}

fn answer(body: Value) -> Response<Payload> {
    respond(
        StatusCode::OK,
        "application/json; encoding=utf-8",
        body.to_string(),
    )
}

fn refuse(errcode: i64, errmsg: &str) -> Response<Payload> {
    answer(json!({"errcode": errcode, "errmsg": errmsg}))
}

/// Answers `/cgi-bin/component/…`.
pub(super) async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Payload> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req.headers().clone();
    let method = req.method().clone();
    let raw = collect(req).await;
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if path == "/cgi-bin/component/api_authorizer_token"
        || path == "/cgi-bin/component/api_query_auth"
    {
        // Slow like an app token fetch when the test asks, so that requests
        // (across replicas) pile up while one fetch is under way.
        let delay = {
            let mut st = lock(state);
            if path == "/cgi-bin/component/api_authorizer_token" {
                st.component.authorizer_token_arrivals += 1;
            }
            st.token_delay
        };
        tokio::time::sleep(delay).await;
    }
    if path == "/cgi-bin/component/api_get_authorizer_list" {
        // Slow when the test asks, so that it can act while a list is read.
        let delay = lock(state).component.list_delay;
        tokio::time::sleep(delay).await;
    }
    let mut st = lock(state);
    let now = Instant::now();
    let given = query_values(query.as_deref(), "component_access_token");
    let component_ok = matches!(st.tokens.check(&given, now), Verdict::Valid);
    match path.as_str() {
        "/cgi-bin/component/api_component_token" => {
            st.component.component_fetches += 1;
            let appid = text("component_appid");
            let Some((secret, ticket)) = st.component.platforms.get(&appid).cloned() else {
                return refuse(40013, "invalid appid");
            };
            if secret != text("component_appsecret") {
                return refuse(40125, "invalid appsecret");
            }
            if ticket.as_deref() != Some(text("component_verify_ticket").as_str()) {
                return refuse(61006, "component ticket is invalid");
            }
            let (token, expires_in) = st.tokens.mint(&appid, now);
            answer(json!({"component_access_token": token, "expires_in": expires_in}))
        }
        "/cgi-bin/component/api_start_push_ticket" => {
            st.component.start_push += 1;
            answer(json!({"errcode": 0, "errmsg": "ok"}))
        }
        "/cgi-bin/component/api_authorizer_token" => {
            let appid = text("authorizer_appid");
            *st.component
                .authorizer_fetches
                .entry(appid.clone())
                .or_default() += 1;
            if !component_ok {
                return refuse(
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                );
            }
            if st.component.revoked.contains(&appid) {
                return refuse(61023, "refresh_token is invalid");
            }
            let refresh = text("authorizer_refresh_token");
            if st.component.authorizers.get(&appid) != Some(&refresh) {
                return refuse(61023, "refresh_token is invalid");
            }
            if st.component.rotate {
                let n = st.component.authorizer_fetches[&appid];
                let rotated = format!("REFRESH-{appid}-r{n}");
                st.component.authorizers.insert(appid.clone(), rotated);
            }
            let (token, expires_in) = st.tokens.mint(&appid, now);
            let refresh = st.component.authorizers[&appid].clone();
            answer(
                json!({"authorizer_access_token": token, "expires_in": expires_in, "authorizer_refresh_token": refresh}),
            )
        }
        "/cgi-bin/component/api_get_authorizer_list" => {
            st.component.list_calls += 1;
            if !component_ok {
                return refuse(40001, "invalid credential");
            }
            let offset = body.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
            let count = body
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(500)
                .min(500) as usize;
            let list: Vec<Value> = st
                .component
                .authorizers
                .iter()
                .skip(offset)
                .take(count)
                .map(|(appid, refresh)| json!({"authorizer_appid": appid, "refresh_token": refresh, "auth_time": 1_700_000_000}))
                .collect();
            answer(json!({"total_count": st.component.authorizers.len(), "list": list}))
        }
        "/cgi-bin/component/api_query_auth" => {
            st.component.query_auth_calls += 1;
            if !component_ok {
                return refuse(40001, "invalid credential");
            }
            // One-time, as WeChat's are.
            let Some(appid) = st.component.codes.remove(&text("authorization_code")) else {
                return refuse(61010, "code is expired");
            };
            let (token, expires_in) = st.tokens.mint(&appid, now);
            let refresh = st.component.authorizers[&appid].clone();
            answer(json!({"authorization_info": {
                "authorizer_appid": appid, "authorizer_access_token": token,
                "expires_in": expires_in, "authorizer_refresh_token": refresh,
            }}))
        }
        _ => {
            st.requests.push(Recorded {
                method,
                path: path.clone(),
                query: query.clone(),
                headers,
                body: Bytes::from(raw.to_vec()),
                token_ok: component_ok,
            });
            if !component_ok {
                return refuse(
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                );
            }
            if path == "/cgi-bin/component/api_get_authorizer_info" {
                // WeChat's answer holds the refresh token.
                let appid = text("authorizer_appid");
                let refresh = st.component.authorizers.get(&appid).cloned();
                return answer(json!({
                    "authorizer_info": {"nick_name": "shop", "user_name": "gh_1"},
                    "authorization_info": {"authorizer_appid": appid, "authorizer_refresh_token": refresh, "func_info": []},
                }));
            }
            answer(json!({"errcode": 0, "errmsg": "ok", "path": path}))
        }
    }
}
