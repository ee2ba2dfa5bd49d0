//! A WeCom suite's endpoints on the admin listener: WeCom's 指令回调 pushes
//! (and the console's URL check), and the corp registry. Never a token,
//! ticket or permanent code in an answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::admin::{ok, refused};
use crate::forward::body::ProxyBody;
use crate::forward::query;
use crate::platform::push::{self, PushError};

use super::Suite;

/// A push whose timestamp is further than this from now is refused: WeCom
/// answers within seconds, so an older one is a replay.
const PUSH_WINDOW: Duration = Duration::from_secs(300);

/// Answers `method path` if it is one of `suites`' endpoints; `None` for a
/// path that names no suite.
pub async fn answer(
    suites: &[Arc<Suite>],
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Option<Response<ProxyBody>> {
    let rest = path.strip_prefix("/platforms/")?;
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    let suite = suites.iter().find(|s| s.name() == name)?;
    Some(match (method, action) {
        (&Method::POST, "ticket") => suite.push(query, &body).await,
        (&Method::GET, "ticket") => suite.url_check(query),
        (&Method::GET, "authorizers") => ok(suite.corps_status()),
        (&Method::POST, "authorizers") => suite.post_code(&body).await,
        (m, a) if a.starts_with("authorizers/") => {
            let corpid = &a["authorizers/".len()..];
            match *m {
                Method::PUT => suite.put(corpid, &body).await,
                Method::DELETE => match suite.unregister(corpid).await {
                    Ok(true) => ok(json!({"removed": true, "corpid": corpid})),
                    Ok(false) => refused(
                        StatusCode::NOT_FOUND,
                        format!("{name}: no corp {corpid}"),
                    ),
                    Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e),
                },
                _ => refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("PUT or DELETE /platforms/{name}/authorizers/CORPID"),
                ),
            }
        }
        _ => refused(
            StatusCode::NOT_FOUND,
            format!("no endpoint {method} {path}: try POST|GET /platforms/{name}/ticket, GET|POST /platforms/{name}/authorizers, PUT|DELETE /platforms/{name}/authorizers/CORPID"),
        ),
    })
}

/// What a decrypted 指令回调 push asks for.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A new suite_ticket, issued at (seconds).
    Ticket(String, u64),
    /// A corp installed the suite, or its code was reset: exchange the code.
    AuthCode(String),
    /// A corp uninstalled the suite.
    Cancel(String),
    /// Anything else (`change_auth`, contact changes): acknowledged.
    Other,
}

/// Reads a decrypted push; `now` stands in for a missing `TimeStamp`.
fn event(xml: &str, now: u64) -> Event {
    let field = |name| push::element(xml, name).filter(|v| !v.is_empty());
    match field("InfoType").unwrap_or("") {
        "suite_ticket" => match field("SuiteTicket") {
            Some(ticket) => Event::Ticket(
                ticket.to_owned(),
                field("TimeStamp")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(now),
            ),
            None => Event::Other,
        },
        "create_auth" | "reset_permanent_code" => match field("AuthCode") {
            Some(code) => Event::AuthCode(code.to_owned()),
            None => Event::Other,
        },
        "cancel_auth" => match field("AuthCorpId") {
            Some(corpid) => Event::Cancel(corpid.to_owned()),
            None => Event::Other,
        },
        _ => Event::Other,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Suite {
    /// `POST /platforms/NAME/ticket`: WeCom's raw push, answered `success`
    /// at once; a code is exchanged after. JSON `{"suite_ticket"}` only
    /// when no push keys are configured.
    async fn push(self: &Arc<Self>, query: Option<&str>, body: &[u8]) -> Response<ProxyBody> {
        let now = unix_now();
        let keys = (&self.config.push_token, &self.config.aes_key);
        let event = match (serde_json::from_slice::<Value>(body).ok(), keys) {
            (Some(_), (Some(_), Some(_))) => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    format!("{}: push keys are configured, so only WeCom's signed, encrypted push is taken", self.name()),
                )
            }
            (Some(json), _) => match json.get("suite_ticket").and_then(Value::as_str) {
                Some(ticket) if !ticket.is_empty() => Event::Ticket(ticket.to_owned(), now),
                _ => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        "JSON without suite_ticket: send {\"suite_ticket\":\"…\"}".into(),
                    )
                }
            },
            (None, (Some(token), Some(key))) => {
                let opened = self.open(query, |signature, timestamp, nonce| {
                    let body = std::str::from_utf8(body).map_err(|_| PushError::NotAPush)?;
                    let encrypted = push::element(body, "Encrypt").ok_or(PushError::NotAPush)?;
                    push::verified(signature, timestamp, nonce, encrypted, token.expose(), key)
                });
                match opened {
                    Ok(xml) => event(&xml, now),
                    Err(response) => return *response,
                }
            }
            (None, _) => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    format!("{0}: a raw push needs push_token_env and encoding_aes_key_env in [platforms.{0}]; or send JSON {{\"suite_ticket\":\"…\"}}", self.name()),
                )
            }
        };
        match event {
            Event::Ticket(ticket, issued) => self.keep_ticket(ticket, issued).await,
            // WeCom wants `success` within a second; the exchange can take
            // longer, and the code lives 10 minutes.
            Event::AuthCode(code) => {
                let suite = self.clone();
                tokio::spawn(async move {
                    match suite.exchange(super::EXCHANGE, &code).await {
                        Ok((corpid, _)) => {
                            tracing::info!(platform = %suite.name(), corp = %corpid, "auth code exchanged for a permanent code")
                        }
                        Err(e) => {
                            tracing::warn!(platform = %suite.name(), error = %e, "cannot exchange the pushed auth code")
                        }
                    }
                });
            }
            Event::Cancel(corpid) => {
                let suite = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = suite.unregister(&corpid).await {
                        tracing::warn!(platform = %suite.name(), corp = %corpid, error = %e, "cannot remove the corp")
                    }
                });
            }
            Event::Other => {}
        }
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"success")));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        response
    }

    /// Checks a push's query (fresh, not seen before), then `decrypt`s it
    /// and checks its ReceiveId; the message, or the refusal to answer.
    fn open(
        &self,
        query: Option<&str>,
        decrypt: impl FnOnce(&str, &str, &str) -> Result<(String, String), PushError>,
    ) -> Result<String, Box<Response<ProxyBody>>> {
        let bad = |e: PushError| {
            tracing::warn!(platform = %self.name(), error = %e, "push refused");
            Box::new(refused(
                StatusCode::BAD_REQUEST,
                format!("{}: {e}", self.name()),
            ))
        };
        let param = |name: &'static str| {
            query::param(query, name).ok_or_else(|| bad(PushError::MissingParam(name)))
        };
        let (signature, timestamp, nonce) = (
            param("msg_signature")?,
            param("timestamp")?,
            param("nonce")?,
        );
        let now = unix_now();
        let fresh = timestamp
            .parse::<u64>()
            .is_ok_and(|t| t.abs_diff(now) <= PUSH_WINDOW.as_secs());
        if !fresh {
            tracing::warn!(platform = %self.name(), "push refused: stale timestamp");
            return Err(Box::new(refused(
                StatusCode::BAD_REQUEST,
                format!("{}: the push's timestamp is more than {} s from now: a replay, or this host's clock is wrong", self.name(), PUSH_WINDOW.as_secs()),
            )));
        }
        let (message, receive_id) = decrypt(&signature, &timestamp, &nonce).map_err(bad)?;
        let provider = self.config.suite.as_ref().and_then(|s| s.provider.as_ref());
        if receive_id != self.app.appid && provider.is_none_or(|(corpid, _)| *corpid != receive_id)
        {
            return Err(bad(PushError::OtherAppId(receive_id)));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, t| t.abs_diff(now) <= PUSH_WINDOW.as_secs());
        if seen.insert(signature, now).is_some() {
            tracing::warn!(platform = %self.name(), "push refused: replayed");
            return Err(Box::new(refused(
                StatusCode::BAD_REQUEST,
                format!("{}: this push was taken already: a replay", self.name()),
            )));
        }
        Ok(message)
    }

    /// `GET /platforms/NAME/ticket?msg_signature&timestamp&nonce&echostr`:
    /// the console's URL check, answered with the decrypted `echostr`.
    fn url_check(&self, query: Option<&str>) -> Response<ProxyBody> {
        let (Some(token), Some(key)) = (&self.config.push_token, &self.config.aes_key) else {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("{0}: the URL check needs push_token_env and encoding_aes_key_env in [platforms.{0}]", self.name()),
            );
        };
        let Some(echostr) = query::param(query, "echostr") else {
            return refused(
                StatusCode::BAD_REQUEST,
                "the URL check carries echostr: forward WeCom's query string".into(),
            );
        };
        let opened = self.open(query, |signature, timestamp, nonce| {
            push::verified(signature, timestamp, nonce, &echostr, token.expose(), key)
        });
        match opened {
            Ok(plain) => {
                let mut response = Response::new(ProxyBody::full(Bytes::from(plain)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain"),
                );
                response
            }
            Err(response) => *response,
        }
    }

    /// `PUT /platforms/NAME/authorizers/CORPID` `{"permanent_code"}`.
    async fn put(&self, corpid: &str, body: &[u8]) -> Response<ProxyBody> {
        let Some(code) = json_text(body, "permanent_code") else {
            return refused(
                StatusCode::BAD_REQUEST,
                "send JSON {\"permanent_code\":\"…\"} (the corp's permanent code)".into(),
            );
        };
        if corpid.is_empty()
            || corpid.len() > crate::accounts::MAX_ID
            || !corpid.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("'{corpid}' is not a corpid: letters and digits, as WeCom sends it (case matters)"),
            );
        }
        match self.register(corpid.to_owned(), code).await {
            Ok(()) => ok(json!({"registered": true, "corpid": corpid})),
            Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }

    /// `POST /platforms/NAME/authorizers` `{"auth_code"}`: exchanged
    /// through `get_permanent_code`.
    async fn post_code(&self, body: &[u8]) -> Response<ProxyBody> {
        let Some(code) = json_text(body, "auth_code") else {
            return refused(
                StatusCode::BAD_REQUEST,
                "send JSON {\"auth_code\":\"…\"} (the AuthCode of the create_auth push)".into(),
            );
        };
        match self.exchange(super::EXCHANGE, &code).await {
            Ok((corpid, _)) => ok(json!({"registered": true, "corpid": corpid})),
            Err(e) => e.into_response(),
        }
    }

    /// `GET /platforms/NAME/authorizers`: corpid, token state, life left,
    /// last error.
    fn corps_status(&self) -> Value {
        let mut entries: Vec<Value> = self
            .corps.read()
            .iter()
            .map(|(corpid, c)| {
                let status = c.tokens().map(|t| t.status());
                json!({
                    "corpid": &**corpid,
                    "state": status.as_ref().map_or("idle", |s| s.state()),
                    "expires_in_s": status.as_ref().and_then(|s| s.expires_in).map(|d| d.as_secs()),
                    "last_error": status.and_then(|s| s.last_error).map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
                    "last_used": c.was_used(),
                    "tickets": c.tickets_status(),
                })
            })
            .collect();
        entries.sort_by(|a, b| a["corpid"].as_str().cmp(&b["corpid"].as_str()));
        Value::Array(entries)
    }
}

/// The non-empty string `name` of a JSON body.
fn json_text(body: &[u8], name: &str) -> Option<String> {
    let value = serde_json::from_slice::<Value>(body).ok()?;
    let text = value.get(name)?.as_str()?;
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_read_by_info_type() {
        let xml = "<xml><SuiteId><![CDATA[ww1]]></SuiteId><InfoType><![CDATA[suite_ticket]]></InfoType><TimeStamp>1403610513</TimeStamp><SuiteTicket><![CDATA[T1]]></SuiteTicket></xml>";
        assert_eq!(event(xml, 5), Event::Ticket("T1".into(), 1403610513));
        let xml = "<xml><InfoType>create_auth</InfoType><AuthCode>C1</AuthCode></xml>";
        assert_eq!(event(xml, 5), Event::AuthCode("C1".into()));
        let xml = "<xml><InfoType>reset_permanent_code</InfoType><AuthCode>C2</AuthCode></xml>";
        assert_eq!(event(xml, 5), Event::AuthCode("C2".into()));
        let xml = "<xml><InfoType>cancel_auth</InfoType><AuthCorpId>wwAbC</AuthCorpId></xml>";
        assert_eq!(event(xml, 5), Event::Cancel("wwAbC".into()));
        let xml = "<xml><InfoType>change_auth</InfoType><AuthCorpId>wwAbC</AuthCorpId></xml>";
        assert_eq!(event(xml, 5), Event::Other);
        let xml = "<xml><InfoType>suite_ticket</InfoType><SuiteTicket>T</SuiteTicket></xml>";
        assert_eq!(event(xml, 5), Event::Ticket("T".into(), 5));
    }
}
