//! The platform endpoints of the admin listener: the ticket push, the
//! authorizer registry, and status. Never a token, ticket or refresh token
//! in an answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::admin::{ok, refused};
use crate::error::json_response;
use crate::forward::body::ProxyBody;
use crate::store::{Registered, StoreError};
use crate::wechat::FetchError;

use super::{push, Platform};

/// Answers `method path` if it is a platform endpoint; `None` otherwise.
pub async fn answer(
    platforms: &[Arc<Platform>],
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Option<Response<ProxyBody>> {
    if path == "/platforms" {
        return Some(match *method {
            Method::GET => ok(Value::Array(platforms.iter().map(|p| p.status()).collect())),
            _ => refused(StatusCode::METHOD_NOT_ALLOWED, "GET /platforms".into()),
        });
    }
    let rest = path.strip_prefix("/platforms/")?;
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(platform) = platforms.iter().find(|p| p.name() == name) else {
        let names: Vec<&str> = platforms.iter().map(|p| p.name()).collect();
        return Some(refused(
            StatusCode::NOT_FOUND,
            format!(
                "no platform named '{name}'; platforms: {}",
                names.join(", ")
            ),
        ));
    };
    Some(match (method, action) {
        (&Method::POST, "ticket") => platform.ticket_push(query, &body).await,
        (&Method::GET, "authorizers") => ok(platform.authorizers_status()),
        (&Method::POST, "authorizers") => platform.exchange_code(&body).await,
        (m, a) if a.starts_with("authorizers/") => {
            let appid = &a["authorizers/".len()..];
            match *m {
                Method::PUT => platform.put(appid, &body).await,
                Method::DELETE => platform.delete(appid).await,
                _ => refused(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("PUT or DELETE /platforms/{name}/authorizers/APPID"),
                ),
            }
        }
        _ => refused(
            StatusCode::NOT_FOUND,
            format!("no platform endpoint {method} {path}: try POST /platforms/{name}/ticket, GET|POST /platforms/{name}/authorizers, PUT|DELETE /platforms/{name}/authorizers/APPID"),
        ),
    })
}

impl Platform {
    /// `POST /platforms/NAME/ticket`: WeChat's raw encrypted push with its
    /// query (a ticket or an authorization event), or, without push keys,
    /// JSON `{"component_verify_ticket"}`.
    async fn ticket_push(
        self: &Arc<Self>,
        query: Option<&str>,
        body: &[u8],
    ) -> Response<ProxyBody> {
        let now = unix_s();
        if let Ok(json) = serde_json::from_slice::<Value>(body) {
            if self.config.aes_key.is_some() {
                return refused(
                    StatusCode::FORBIDDEN,
                    format!("{}: push keys are configured, so only WeChat's signed push is taken: forward its body and query unchanged", self.name()),
                );
            }
            return match json.get("component_verify_ticket").and_then(Value::as_str) {
                Some(ticket) if !ticket.is_empty() => {
                    self.keep_ticket(ticket.to_owned(), now).await;
                    success()
                }
                _ => refused(
                    StatusCode::BAD_REQUEST,
                    "JSON without component_verify_ticket: send {\"component_verify_ticket\":\"…\"} or WeChat's raw push".into(),
                ),
            };
        }
        let (Some(token), Some(key)) = (&self.config.push_token, &self.config.aes_key) else {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("{}: a raw push needs push_token_env and encoding_aes_key_env in [platforms.{}]; or send JSON {{\"component_verify_ticket\":\"…\"}}", self.name(), self.name()),
            );
        };
        let opened = match push::open(body, query, token.expose(), key, &self.app.appid, now) {
            Ok(opened) => opened,
            // WeChat's other notifications to this URL (fast registration,
            // …) are the application's: genuine, so not an error to WeChat.
            Err(e @ push::PushError::UnknownEvent(_)) => {
                tracing::info!(platform = %self.name(), event = %e, "push left to the application");
                return success();
            }
            Err(e) => {
                tracing::warn!(platform = %self.name(), error = %e, "push refused");
                return refused(StatusCode::BAD_REQUEST, format!("{}: {e}", self.name()));
            }
        };
        if !self.first_sight(&opened.signature, opened.timestamp, now) {
            tracing::warn!(platform = %self.name(), "a push taken before was sent again: refused");
            return refused(
                StatusCode::CONFLICT,
                format!(
                    "{}: this push was taken before (same msg_signature): a replay",
                    self.name()
                ),
            );
        }
        match opened.event {
            push::Event::Ticket(ticket) => {
                self.keep_ticket(ticket, opened.timestamp).await;
            }
            push::Event::Authorized { appid, code } => {
                // WeChat wants its answer at once; the SDK's own
                // api_query_auth of the same code joins this exchange.
                let platform = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = platform.exchange(&code).await {
                        tracing::warn!(platform = %platform.name(), authorizer = %appid, error = %e, "the authorization event's code could not be exchanged");
                    }
                });
            }
            push::Event::Unauthorized { appid } => match self.remove(&appid).await {
                Ok(_) => {}
                Err(e) => {
                    return refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{}: the registry cannot be saved: {e}", self.name()),
                    )
                }
            },
        }
        success()
    }

    /// `PUT /platforms/NAME/authorizers/APPID` `{"refresh_token"}`. Over a
    /// registered authorizer, the new refresh token is first tried with
    /// WeChat: a wrong one must not replace the only one that works.
    async fn put(&self, appid: &str, body: &[u8]) -> Response<ProxyBody> {
        let refresh = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.get("refresh_token")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let Some(mut refresh_token) = refresh.filter(|r| !r.is_empty()) else {
            return refused(
                StatusCode::BAD_REQUEST,
                "send JSON {\"refresh_token\":\"…\"} (the authorizer_refresh_token)".into(),
            );
        };
        if !appid_shaped(appid) {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("'{appid}' is not an appid: wx and 16 hex digits"),
            );
        }
        if self.is_registered(appid).await {
            refresh_token = match self.check_refresh_token(appid, &refresh_token).await {
                Ok(checked) => checked,
                Err(e @ FetchError::Refused { .. }) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        "error",
                        &json!({"errcode": e.errcode(), "errmsg": format!("{}: WeChat refused the new refresh token for {appid}, so the registered one is kept: {e}", self.name())}),
                    )
                }
                Err(e) => {
                    return refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{}: the new refresh token for {appid} could not be checked with WeChat, so the registered one is kept: {e}", self.name()),
                    )
                }
            };
        }
        self.register(vec![Registered {
            component_appid: self.app.appid.clone(),
            appid: appid.to_owned(),
            refresh_token,
        }])
        .await
    }

    /// Whether `appid` is registered, here or (shared store) by another
    /// replica.
    async fn is_registered(&self, appid: &str) -> bool {
        self.authorizers.read().contains_key(appid)
            || matches!(
                self.store.authorizer(&self.app.appid, appid).await,
                Ok(Some(_))
            )
    }

    /// `POST /platforms/NAME/authorizers` `{"auth_code"}`: exchanged
    /// through `api_query_auth`, once whoever asks.
    async fn exchange_code(&self, body: &[u8]) -> Response<ProxyBody> {
        let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.get("auth_code")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return refused(
                StatusCode::BAD_REQUEST,
                "send JSON {\"auth_code\":\"…\"} (the authorization_code of the authorization event)".into(),
            );
        };
        match self.exchange(&code).await {
            Ok(answer) => ok(json!({
                "registered": true,
                "appid": answer["authorization_info"]["authorizer_appid"],
            })),
            Err(e @ FetchError::NotReady(_)) => refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: {e}", self.name()),
            ),
            Err(e) => json_response(
                StatusCode::BAD_GATEWAY,
                "error",
                &json!({"errcode": e.errcode(), "errmsg": format!("{}: api_query_auth: {e}", self.name())}),
            ),
        }
    }

    /// Saves, then holds, the entries; answers with the first appid.
    async fn register(&self, entries: Vec<Registered>) -> Response<ProxyBody> {
        if let Err(e) = self.store.register(&entries).await {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: the registry cannot be saved: {e}", self.name()),
            );
        }
        let appid = entries.first().map(|e| e.appid.clone()).unwrap_or_default();
        tracing::info!(platform = %self.name(), authorizer = %appid, "authorizer registered");
        self.insert_all(entries);
        ok(json!({"registered": true, "appid": appid}))
    }

    /// `DELETE /platforms/NAME/authorizers/APPID` (the unauthorization
    /// event, for an application that decrypts pushes itself).
    async fn delete(&self, appid: &str) -> Response<ProxyBody> {
        match self.remove(appid).await {
            Ok(true) => ok(json!({"removed": true, "appid": appid})),
            Ok(false) => refused(
                StatusCode::NOT_FOUND,
                format!("{}: no authorizer {appid}", self.name()),
            ),
            Err(e) => refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: the registry cannot be saved: {e}", self.name()),
            ),
        }
    }

    /// Removes `appid` from the store and from memory; false if it was not
    /// registered. While the registry is recovered, the appid is also kept
    /// out of what the recovery finds.
    async fn remove(&self, appid: &str) -> Result<bool, StoreError> {
        let _writes = self.registry_writes.lock().await;
        let recovering = {
            let mut recovering = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(removed) = recovering.as_mut() {
                removed.insert(appid.to_owned());
            }
            recovering.is_some()
        };
        if !recovering && !self.is_registered(appid).await {
            return Ok(false);
        }
        self.store.unregister(&self.app.appid, appid).await?;
        self.authorizers.write().remove(appid);
        tracing::info!(platform = %self.name(), authorizer = %appid, "authorizer removed");
        Ok(true)
    }

    /// `GET /platforms/NAME/authorizers`: appid, token state, life left,
    /// last error.
    fn authorizers_status(&self) -> Value {
        let mut entries: Vec<Value> = self
            .authorizers.read()
            .iter()
            .map(|(appid, a)| {
                let revoked = a.grant.revoked.load(Ordering::Relaxed);
                let status = a.tokens().map(|t| t.status());
                let state = match (revoked, &status) {
                    (r, _) if r != 0 => "revoked",
                    (_, None) => "idle",
                    (_, Some(s)) => s.state(),
                };
                json!({
                    "appid": &**appid,
                    "state": state,
                    "expires_in_s": status.as_ref().and_then(|s| s.expires_in).map(|d| d.as_secs()),
                    "last_error": status.and_then(|s| s.last_error).map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
                    "tickets": a.tickets_status(),
                })
            })
            .collect();
        entries.sort_by(|a, b| a["appid"].as_str().cmp(&b["appid"].as_str()));
        Value::Array(entries)
    }

    /// The platform's entry on `GET /platforms` (and `/apps`).
    pub fn status(&self) -> Value {
        let component = self.component.status();
        let (registered, in_use, tickets) = self.authorizers.counts();
        let revoked = self
            .authorizers
            .read()
            .values()
            .filter(|a| a.grant.revoked.load(Ordering::Relaxed) != 0)
            .count();
        json!({
            "name": self.name(),
            "kind": "platform",
            "component_appid": self.app.appid,
            "base_url": self.app.base_url.to_string(),
            "fallback_base_urls": self.app.fallback_base_urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "upstream": self.client.upstream().unwrap_or(&self.app.base_url).to_string(),
            "ticket": if self.ticket.is_held() { "held" } else { "waiting for component_verify_ticket" },
            "component_token": {
                "state": component.state(),
                "expires_in_s": component.expires_in.map(|d| d.as_secs()),
                "last_error": component.last_error.map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
            },
            "authorizers": {"registered": registered, "in_use": in_use, "revoked": revoked},
            "tickets": tickets,
        })
    }
}

/// WeChat's answer to a push it made.
fn success() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"success")));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Now, in Unix seconds, as push timestamps are.
fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `wx` and 16 hex digits, like the config's appids.
fn appid_shaped(id: &str) -> bool {
    id.len() == 18 && id.starts_with("wx") && id.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}
