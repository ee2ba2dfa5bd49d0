//! The fake's WeCom service-provider endpoints (企业微信第三方应用): the suite
//! token (secret and pushed `suite_ticket` checked, 40085 otherwise), the
//! provider token, the auth-code exchange (one-time codes), corp tokens from
//! permanent codes, and every other suite or provider API judged by its
//! token (40082 invalid, 42009 expired). Tokens are minted by
//! [`super::tokens::Tokens`]; a corp's token is a WeCom token, so its API
//! calls and JS-SDK tickets are judged like a WeCom app's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::body::Payload;
use super::handler::{collect, query_values, respond};
use super::tokens::Verdict;
use super::{lock, AppKind, Recorded, State};

/// Everything the fake knows about suites.
#[derive(Default)]
pub(super) struct Service {
    /// suite_id → (suite_secret, the ticket it last pushed).
    pub suites: HashMap<String, (String, Option<String>)>,
    /// provider corpid → provider_secret.
    pub providers: HashMap<String, String>,
    /// corpid → its permanent code.
    pub corps: HashMap<String, String>,
    /// auth_code → corpid, each usable once.
    pub codes: HashMap<String, String>,
    /// `get_suite_token` calls, refused ones included.
    pub suite_fetches: usize,
    /// `get_provider_token` calls, refused ones included.
    pub provider_fetches: usize,
    /// `get_corp_token` calls by corpid, refused ones included.
    pub corp_fetches: HashMap<String, usize>,
    /// `get_permanent_code` calls (both versions).
    pub exchanges: usize,
}

fn answer(body: Value) -> Response<Payload> {
    respond(
        StatusCode::OK,
        "application/json; charset=UTF-8",
        body.to_string(),
    )
}

fn refuse(errcode: i64, errmsg: &str) -> Response<Payload> {
    answer(json!({"errcode": errcode, "errmsg": errmsg}))
}

/// WeCom's verdict on a suite or provider token: 40082 invalid, 42009
/// expired.
fn suite_verdict(
    st: &State,
    given: &[String],
    owners: &[&str],
    now: Instant,
) -> Option<Response<Payload>> {
    match st.tokens.check(given, now) {
        Verdict::Valid => {
            let owner = st.tokens.owner(&given[0], now).unwrap_or_default();
            (!owners.contains(&owner.as_str())).then(|| refuse(40082, "invalid suite_access_token"))
        }
        Verdict::Rejected { errcode: 42001, .. } => {
            Some(refuse(42009, "suite_access_token expired"))
        }
        Verdict::Rejected { .. } => Some(refuse(40082, "invalid suite_access_token")),
    }
}

/// Answers `/cgi-bin/service/…`, `/cgi-bin/license/…` and
/// `/cgi-bin/agent/set_scope`.
pub(super) async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Payload> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req.headers().clone();
    let method = req.method().clone();
    let raw = collect(req).await;
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if path == "/cgi-bin/service/get_corp_token" {
        // Slow when the test asks, so that a corp's calls on other replicas
        // arrive while one fetch is under way.
        let delay = lock(state).token_delay;
        tokio::time::sleep(delay).await;
    }
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut st = lock(state);
    let now = Instant::now();
    let suites: Vec<String> = st.service.suites.keys().cloned().collect();
    let suites: Vec<&str> = suites.iter().map(String::as_str).collect();
    let suite_token = query_values(query.as_deref(), "suite_access_token");
    match path.as_str() {
        "/cgi-bin/service/get_suite_token" => {
            st.service.suite_fetches += 1;
            let suite_id = text("suite_id");
            let Some((secret, ticket)) = st.service.suites.get(&suite_id).cloned() else {
                return refuse(40013, "invalid suite_id");
            };
            if secret != text("suite_secret") {
                return refuse(40001, "invalid suite_secret");
            }
            if ticket.as_deref() != Some(text("suite_ticket").as_str()) {
                return refuse(40085, "invalid suite ticket");
            }
            let (token, expires_in) = st.tokens.mint(&suite_id, now);
            answer(json!({"suite_access_token": token, "expires_in": expires_in}))
        }
        "/cgi-bin/service/get_provider_token" => {
            st.service.provider_fetches += 1;
            let corpid = text("corpid");
            if st.service.providers.get(&corpid) != Some(&text("provider_secret")) {
                return refuse(40001, "invalid provider_secret");
            }
            let (token, expires_in) = st.tokens.mint(&corpid, now);
            answer(json!({"provider_access_token": token, "expires_in": expires_in}))
        }
        "/cgi-bin/service/get_corp_token" => {
            let corpid = text("auth_corpid");
            *st.service.corp_fetches.entry(corpid.clone()).or_default() += 1;
            if let Some(refusal) = suite_verdict(&st, &suite_token, &suites, now) {
                return refusal;
            }
            if st.service.corps.get(&corpid) != Some(&text("permanent_code")) {
                return refuse(40084, "invalid permanent_code");
            }
            let (token, expires_in) = st.tokens.mint_as(AppKind::WeCom, &corpid, now);
            answer(json!({"access_token": token, "expires_in": expires_in}))
        }
        "/cgi-bin/service/get_permanent_code" | "/cgi-bin/service/v2/get_permanent_code" => {
            st.service.exchanges += 1;
            if let Some(refusal) = suite_verdict(&st, &suite_token, &suites, now) {
                return refusal;
            }
            let Some(corpid) = st.service.codes.remove(&text("auth_code")) else {
                return refuse(40029, "invalid code");
            };
            let code = st.service.corps[&corpid].clone();
            let mut body = json!({
                "permanent_code": code,
                "auth_corp_info": {"corpid": corpid, "corp_name": "Test Corp"},
                "auth_info": {"agent": [{"agentid": 1000012}]},
            });
            if path == "/cgi-bin/service/get_permanent_code" {
                let (token, expires_in) = st.tokens.mint_as(AppKind::WeCom, &corpid, now);
                body["access_token"] = json!(token);
                body["expires_in"] = json!(expires_in);
            }
            answer(body)
        }
        _ => {
            let provider =
                path.starts_with("/cgi-bin/license/") || path == "/cgi-bin/service/get_login_info";
            let providers: Vec<String> = st.service.providers.keys().cloned().collect();
            let providers: Vec<&str> = providers.iter().map(String::as_str).collect();
            let refusal = match provider {
                true => {
                    let mut given = query_values(query.as_deref(), "provider_access_token");
                    if given.is_empty() {
                        given = query_values(query.as_deref(), "access_token");
                    }
                    suite_verdict(&st, &given, &providers, now)
                }
                false => suite_verdict(&st, &suite_token, &suites, now),
            };
            // get_auth_info and get_admin_list take the permanent code.
            let code_refused = refusal.is_none()
                && body.get("permanent_code").is_some()
                && st.service.corps.get(&text("auth_corpid")) != Some(&text("permanent_code"));
            st.requests.push(Recorded {
                method,
                path: path.clone(),
                query: query.clone(),
                headers,
                body: Bytes::from(raw.to_vec()),
                token_ok: refusal.is_none(),
            });
            if let Some(refusal) = refusal {
                return refusal;
            }
            if code_refused {
                return refuse(40084, "invalid permanent_code");
            }
            answer(
                json!({"errcode": 0, "errmsg": "ok", "path": path, "auth_corp_info": {"corpid": text("auth_corpid")}}),
            )
        }
    }
}
