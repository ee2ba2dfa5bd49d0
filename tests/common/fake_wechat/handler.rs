//! What the fake answers to each request: the three token endpoints, injected fetch
//! failures, and every other path as an API call checked against the issued tokens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::body::{pattern_byte, Payload};
use super::tokens::{FetchRequest, Flavor, Grant, Verdict};
use super::{lock, FetchFailure, Recorded, State};

/// How WeChat labels token answers and successful JSON API answers.
const JSON_UTF8: &str = "application/json; encoding=utf-8";

/// Size of the fake mini-program code image.
const WXACODE_LEN: usize = 100 * 1024;

/// Announced length of `/test/reset_mid_body`.
const BROKEN_ANNOUNCED: u64 = 1024 * 1024;

/// What `/test/reset_mid_body` really sends before dropping the connection.
const BROKEN_SENT: u64 = 64 * 1024;

/// A handler's request to drop the connection without answering; hyper closes it, and for
/// `FetchFailure::Reset` the stream first arms an RST.
#[derive(Debug)]
pub(super) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake WeChat drops this connection on purpose")
    }
}

impl std::error::Error for DropConnection {}

/// The answer type of every handler.
type Answer = Result<Response<Payload>, DropConnection>;

/// Routes one request; `reset` belongs to its connection.
pub(super) async fn handle(
    state: Arc<Mutex<State>>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Answer {
    // Matched as a lenient server reads paths, so a proxy that forwards
    // another spelling of a path reaches what that path names.
    let path = lenient(req.uri().path());
    let flavor = match path.as_str() {
        "/cgi-bin/token" => Some(Flavor::Classic),
        "/cgi-bin/stable_token" => Some(Flavor::Stable),
        "/cgi-bin/gettoken" => Some(Flavor::WeCom),
        _ => None,
    };
    let query = req.uri().query().map(str::to_string);
    let kind = query_values(query.as_deref(), "type").into_iter().next();
    let ticket = match (path.as_str(), kind.as_deref()) {
        ("/cgi-bin/ticket/getticket", Some("jsapi")) => Some("jsapi"),
        ("/cgi-bin/ticket/getticket", Some("wx_card")) => Some("wx_card"),
        ("/cgi-bin/get_jsapi_ticket", _) => Some("corp"),
        ("/cgi-bin/ticket/get", Some("agent_config")) => Some("agent"),
        _ => None,
    };
    match (flavor, ticket, path.as_str()) {
        (Some(flavor), _, _) => token_endpoint(&state, &reset, flavor, req).await,
        (None, Some(kind), _) => Ok(ticket_endpoint(&state, kind, query.as_deref())),
        (None, None, "/cgi-bin/openapi/quota/get") => Ok(quota_get(&state, query.as_deref())),
        (None, None, "/cgi-bin/clear_quota/v2") => Ok(clear_quota(&state, req).await),
        (None, None, p) if p.starts_with("/cgi-bin/component/") => {
            Ok(super::component::handle(&state, req).await)
        }
        (None, None, p) if super::login::PATHS.contains(&p) => {
            Ok(super::login::handle(&state, req).await)
        }
        (None, None, p)
            if p.starts_with("/cgi-bin/service/")
                || p.starts_with("/cgi-bin/license/")
                || p == "/cgi-bin/agent/set_scope" =>
        {
            Ok(super::service::handle(&state, req).await)
        }
        (None, None, _) => api_call(&state, req).await,
    }
}

/// A ticket fetch: counted, its token judged, then the live ticket of that
/// kind for the token's app (the same one until it ends; a suite's app in a
/// corp has its own).
fn ticket_endpoint(
    state: &Mutex<State>,
    kind: &'static str,
    query: Option<&str>,
) -> Response<Payload> {
    let mut st = lock(state);
    *st.ticket_fetches.entry(kind).or_default() += 1;
    let now = Instant::now();
    let appid = match token_owner(&st, query, now) {
        Ok(appid) => appid,
        Err(refusal) => return respond(StatusCode::OK, "text/plain", refusal),
    };
    let given = query_values(query, "access_token");
    let holder = st.tokens.ticket_owner(&given[0], now).unwrap_or(appid);
    let (ticket, expires_in) = st.tickets.grant(&holder, kind, now);
    let body = json!({ "errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": expires_in });
    respond(StatusCode::OK, JSON_UTF8, body.to_string())
}

/// The app whose valid `access_token` the query carries, or the body of
/// WeChat's refusal of the token.
fn token_owner(st: &State, query: Option<&str>, now: Instant) -> Result<String, String> {
    let given = query_values(query, "access_token");
    if let Verdict::Rejected { errcode, errmsg } = st.tokens.check(&given, now) {
        let body = json!({ "errcode": errcode, "errmsg": errmsg });
        return Err(body.to_string());
    }
    Ok(st
        .tokens
        .owner(&given[0], now)
        .expect("a valid token has an owner"))
}

/// `openapi/quota/get`: the token API's daily quota, `used` counting that
/// app's token fetches.
fn quota_get(state: &Mutex<State>, query: Option<&str>) -> Response<Payload> {
    let mut st = lock(state);
    st.quota_gets += 1;
    let now = Instant::now();
    let appid = match token_owner(&st, query, now) {
        Ok(appid) => appid,
        Err(refusal) => return respond(StatusCode::OK, "text/plain", refusal),
    };
    let used = st.fetches_by_appid.get(&appid).copied().unwrap_or(0) as u64;
    let body = json!({
        "errcode": 0, "errmsg": "ok",
        "quota": { "daily_limit": 2000, "used": used, "remain": 2000u64.saturating_sub(used) }
    });
    respond(StatusCode::OK, JSON_UTF8, body.to_string())
}

/// `clear_quota/v2`: `appid` and `appsecret` as form or query fields. A
/// success also ends an injected 45009 on the token endpoints, as a real
/// reset ends the daily quota's refusals.
async fn clear_quota(state: &Mutex<State>, req: Request<Incoming>) -> Response<Payload> {
    let query = req.uri().query().map(str::to_string);
    let body = collect(req).await;
    let form = String::from_utf8_lossy(&body).into_owned();
    let field = |name: &str| {
        query_values(Some(&form), name)
            .into_iter()
            .chain(query_values(query.as_deref(), name))
            .next()
    };
    let mut st = lock(state);
    st.clear_quota_calls += 1;
    let ok = match (field("appid"), field("appsecret")) {
        (Some(appid), Some(secret)) => st.tokens.secret_ok(&appid, &secret),
        _ => false,
    };
    let body = if ok {
        if matches!(st.failure, Some(FetchFailure::Errcode(45009, _))) {
            st.failure = None;
        }
        json!({ "errcode": 0, "errmsg": "ok" })
    } else {
        json!({ "errcode": 40013, "errmsg": "invalid appid or appsecret" })
    };
    respond(StatusCode::OK, JSON_UTF8, body.to_string())
}

/// A token fetch: counted first (failed ones too), then failed on purpose or answered by
/// the token rules.
async fn token_endpoint(
    state: &Mutex<State>,
    reset: &AtomicBool,
    flavor: Flavor,
    req: Request<Incoming>,
) -> Answer {
    let fetch = match parse_fetch(flavor, req).await {
        Ok(fetch) => fetch,
        Err(answer) => {
            lock(state).token_fetches += 1;
            return Ok(answer);
        }
    };
    let failure = {
        let mut st = lock(state);
        st.token_fetches += 1;
        if let Some(appid) = &fetch.appid {
            *st.fetches_by_appid.entry(appid.clone()).or_default() += 1;
        }
        if fetch.force_refresh {
            st.force_refreshes += 1;
        }
        st.failure.clone()
    };
    if let Some(failure) = failure {
        return fail(failure, reset).await;
    }
    let (grant, delay) = {
        let mut st = lock(state);
        (st.tokens.grant(&fetch, Instant::now()), st.token_delay)
    };
    // Issued above, answered only now: like WeChat, the token exists whether
    // or not the caller is still there to read it.
    tokio::time::sleep(delay).await;
    let body = match (grant, flavor) {
        (Grant::Token { token, expires_in }, Flavor::WeCom) => json!({
            "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in
        }),
        (Grant::Token { token, expires_in }, _) => {
            json!({ "access_token": token, "expires_in": expires_in })
        }
        (Grant::Refused { errcode, errmsg }, _) => json!({ "errcode": errcode, "errmsg": errmsg }),
    };
    Ok(respond(StatusCode::OK, JSON_UTF8, body.to_string()))
}

/// Reads a fetch's parameters from the query (classic, WeCom) or the JSON body (stable).
/// A stable body that is not a JSON object is answered right away (47001, like WeChat).
async fn parse_fetch(
    flavor: Flavor,
    req: Request<Incoming>,
) -> Result<FetchRequest, Response<Payload>> {
    let query = req.uri().query().map(str::to_string);
    let param = |name: &str| query_values(query.as_deref(), name).into_iter().next();
    match flavor {
        Flavor::Classic => Ok(FetchRequest {
            flavor,
            appid: param("appid"),
            secret: param("secret"),
            grant_type: param("grant_type"),
            force_refresh: false,
        }),
        Flavor::WeCom => Ok(FetchRequest {
            flavor,
            appid: param("corpid"),
            secret: param("corpsecret"),
            grant_type: None,
            force_refresh: false,
        }),
        Flavor::Stable => {
            let body = collect(req).await;
            let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&body) else {
                let refusal =
                    json!({ "errcode": 47001, "errmsg": "data format error rid: 0008-fake" });
                return Err(respond(StatusCode::OK, JSON_UTF8, refusal.to_string()));
            };
            let text = |name: &str| {
                fields
                    .get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            Ok(FetchRequest {
                flavor,
                appid: text("appid"),
                secret: text("secret"),
                grant_type: text("grant_type"),
                force_refresh: fields.get("force_refresh") == Some(&serde_json::Value::Bool(true)),
            })
        }
    }
}

/// Answers a token fetch with the injected failure.
async fn fail(failure: FetchFailure, reset: &AtomicBool) -> Answer {
    match failure {
        FetchFailure::Errcode(errcode, errmsg) => {
            let body = json!({ "errcode": errcode, "errmsg": errmsg });
            Ok(respond(StatusCode::OK, JSON_UTF8, body.to_string()))
        }
        FetchFailure::Http500 => Ok(respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "internal error",
        )),
        FetchFailure::NotJson => Ok(respond(StatusCode::OK, "text/html", "<html>gateway</html>")),
        FetchFailure::Hang => {
            // Longer than any test; the fake's shutdown cancels it.
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            Err(DropConnection)
        }
        FetchFailure::Reset => {
            reset.store(true, Ordering::Relaxed);
            Err(DropConnection)
        }
        FetchFailure::Body(body) => Ok(respond(StatusCode::OK, JSON_UTF8, body)),
    }
}

/// Any other path: record it, judge its token, wait the configured API delay, answer.
async fn api_call(state: &Mutex<State>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let body = collect_body(body).await;
    let query = parts.uri.query().map(str::to_string);
    let path = parts.uri.path().to_string();
    let given = query_values(query.as_deref(), "access_token");
    // Like WeChat's front end: a client that accepts gzip gets it.
    let gzip = parts
        .headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let (verdict, delay) = {
        let mut st = lock(state);
        let verdict = st.tokens.check(&given, Instant::now());
        st.requests.push(Recorded {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers,
            body: body.clone(),
            token_ok: matches!(verdict, Verdict::Valid),
        });
        (verdict, st.api_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Verdict::Rejected { errcode, errmsg } = verdict {
        let body = json!({ "errcode": errcode, "errmsg": errmsg });
        let answer = respond(StatusCode::OK, "text/plain", body.to_string());
        return Ok(if gzip { gzipped(answer) } else { answer });
    }
    let number = |name: &str, default: u64| {
        query_values(query.as_deref(), name)
            .first()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let answer = match lenient(&path).as_str() {
        "/cgi-bin/media/get" => media(number("size", 1024)),
        "/wxa/getwxacodeunlimit" => wxacode(),
        "/test/big_json" => big_json(number("size", 100 * 1024)),
        "/test/reset_mid_body" => broken_download(),
        "/cgi-bin/openapi/rid/get" => rid_get(state, number("pad", 0)),
        "/test/reason" => {
            // A reason phrase of the fake's own, quoting the token it was sent.
            let mut answer = respond(StatusCode::OK, JSON_UTF8, r#"{"errcode":0}"#);
            let phrase = format!("Fine {}", given.first().map_or("", String::as_str));
            let phrase = hyper::ext::ReasonPhrase::try_from(phrase.into_bytes())
                .expect("a token fits a reason phrase");
            answer.extensions_mut().insert(phrase);
            answer
        }
        "/test/echo_token" => echo_token(given.first().map_or("", String::as_str)),
        "/test/stall_json" => stall("application/json", br#"{"errcode":0,"#, 1000),
        "/test/stall_stream" => stall("application/octet-stream", &[7u8; 4096], 1024 * 1024),
        // Any errcode on demand, as WeChat sends it (HTTP 200, text/plain).
        "/test/errcode" => {
            let code = query_values(query.as_deref(), "code")
                .first()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1);
            let body = json!({ "errcode": code, "errmsg": "on demand" });
            respond(StatusCode::OK, "text/plain", body.to_string())
        }
        _ => {
            if path == "/test/slow" {
                tokio::time::sleep(Duration::from_millis(number("ms", 0))).await;
            }
            // Written by hand to keep WeChat's field order (errcode first).
            let echo = format!(
                r#"{{"errcode":0,"errmsg":"ok","path":{},"method":"{}","body_len":{}}}"#,
                serde_json::Value::from(path.as_str()),
                parts.method,
                body.len()
            );
            respond(StatusCode::OK, JSON_UTF8, echo)
        }
    };
    Ok(if gzip { gzipped(answer) } else { answer })
}

/// `answer` gzipped, when its body is a buffer; others go as they are.
fn gzipped(answer: Response<Payload>) -> Response<Payload> {
    let (mut parts, body) = answer.into_parts();
    let Payload::Full(Some(bytes)) = body else {
        return Response::from_parts(parts, body);
    };
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Payload::full(super::body::gzip(&bytes)))
}

/// `media/get`: `size` generated bytes as an attachment, streamed.
fn media(size: u64) -> Response<Payload> {
    let mut resp = Response::new(Payload::pattern(size));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"x.bin\""),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

/// The mini-program code: `image/jpeg` whose bytes begin like a JSON token error, so only a
/// proxy that goes by `Content-Type` leaves it alone.
fn wxacode() -> Response<Payload> {
    let mut bytes = br#"{"errcode":40001,"errmsg":"this is a jpeg, not an error"}"#.to_vec();
    bytes.extend((bytes.len()..WXACODE_LEN).map(|i| pattern_byte(i as u64)));
    respond(StatusCode::OK, "image/jpeg", bytes)
}

/// `size` bytes of JSON carrying errcode 40001: a proxy must only act on it when small
/// enough to be inspected.
fn big_json(size: u64) -> Response<Payload> {
    let head = br#"{"errcode":40001,"pad":""#;
    let tail = br#""}"#;
    let size = usize::try_from(size).expect("size fits memory");
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut bytes = Vec::with_capacity(head.len() + pad + tail.len());
    bytes.extend_from_slice(head);
    bytes.resize(head.len() + pad, b'x');
    bytes.extend_from_slice(tail);
    respond(StatusCode::OK, "application/json", bytes)
}

/// Announces 1 MiB, sends 64 KiB, then drops the connection.
fn broken_download() -> Response<Payload> {
    let mut resp = Response::new(Payload::break_after(BROKEN_SENT));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(BROKEN_ANNOUNCED));
    resp
}

/// `rid/get` as WeChat answers it: the logged request behind the rid, whose `request_url` is
/// the query of that earlier call, its `access_token` included. The fake logs one request:
/// the API call before this one.
fn rid_get(state: &Mutex<State>, pad: u64) -> Response<Payload> {
    let earlier = {
        let st = lock(state);
        let n = st.requests.len();
        n.checked_sub(2)
            .and_then(|i| st.requests[i].query.clone())
            .unwrap_or_default()
    };
    let body = json!({
        "errcode": 0,
        "errmsg": "ok",
        "request": {
            "invoke_time": 1_700_000_000,
            "cost_in_ms": 12,
            "request_url": earlier,
            // `pad` bytes, for a record larger than any inspection limit.
            "request_body": "x".repeat(usize::try_from(pad).expect("pad fits memory")),
            "response_body": "{\"errcode\":45009}",
            "client_ip": "203.0.113.7",
        }
    });
    respond(StatusCode::OK, JSON_UTF8, body.to_string())
}

/// An answer that hands the caller's token back in a `Location`, a `Set-Cookie`, a custom
/// header and a small JSON body: what a careless or hostile upstream could do.
fn echo_token(token: &str) -> Response<Payload> {
    let body = json!({ "errcode": 0, "errmsg": "ok", "seen": token, "url": format!("/x?access_token={token}") });
    let mut resp = respond(StatusCode::OK, JSON_UTF8, body.to_string());
    let headers = resp.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).expect("a token fits a header");
    headers.insert(
        header::LOCATION,
        value(format!("https://example.com/cb?access_token={token}&a=1")),
    );
    headers.insert(header::SET_COOKIE, value(format!("t={token}; Path=/")));
    headers.insert("x-echo", value(token.to_owned()));
    resp
}

/// Headers announcing `announced` bytes of `content_type`, a first chunk, then a stall that
/// never ends.
fn stall(content_type: &'static str, first: &[u8], announced: u64) -> Response<Payload> {
    let mut resp = Response::new(Payload::Stall(Some(Bytes::copy_from_slice(first))));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    resp
}

/// A complete answer with a fixed body.
pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Payload> {
    let mut resp = Response::new(Payload::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The whole request body (a body cut short by the client counts as what arrived).
pub(super) async fn collect(req: Request<Incoming>) -> Bytes {
    collect_body(req.into_body()).await
}

/// See [`collect`].
async fn collect_body(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default()
}

/// `path` as a lenient server reads it: escapes decoded, repeated and
/// trailing slashes merged.
fn lenient(path: &str) -> String {
    let decoded = percent_decode(path);
    let merged: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", merged.join("/"))
}

/// Every value of `name` in a raw query, percent-decoded, in order. Keys are compared raw.
pub(super) fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` and `+` in a query value; malformed escapes stay as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
