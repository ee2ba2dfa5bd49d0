//! The platform endpoints of the admin listener: the ticket push, the
//! authorizer registry, and status. Never a token, ticket or refresh token
//! in an answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::ProxyBody;
use crate::error::json_response;
use crate::store::Registered;

use super::{grant, push, Platform};

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
    /// `POST /platforms/NAME/ticket`: JSON `{"component_verify_ticket"}`, or
    /// WeChat's raw encrypted push with its query.
    async fn ticket_push(&self, query: Option<&str>, body: &[u8]) -> Response<ProxyBody> {
        let json_ticket = serde_json::from_slice::<Value>(body).ok().map(|v| {
            v.get("component_verify_ticket")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let ticket = match json_ticket {
            Some(Some(ticket)) if !ticket.is_empty() => ticket,
            Some(_) => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "JSON without component_verify_ticket: send {\"component_verify_ticket\":\"…\"} or WeChat's raw push".into(),
                )
            }
            None => {
                let (Some(token), Some(key)) = (&self.config.push_token, &self.config.aes_key) else {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        format!("{}: a raw push needs push_token_env and encoding_aes_key_env in [platforms.{}]; or send JSON {{\"component_verify_ticket\":\"…\"}}", self.name(), self.name()),
                    );
                };
                match push::open(body, query, token.expose(), key, &self.app.appid) {
                    Ok(ticket) => ticket,
                    Err(e) => {
                        tracing::warn!(platform = %self.name(), error = %e, "ticket push refused");
                        return refused(StatusCode::BAD_REQUEST, format!("{}: {e}", self.name()));
                    }
                }
            }
        };
        self.keep_ticket(ticket).await;
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(b"success")));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        response
    }

    /// `PUT /platforms/NAME/authorizers/APPID` `{"refresh_token"}`.
    async fn put(&self, appid: &str, body: &[u8]) -> Response<ProxyBody> {
        let refresh = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.get("refresh_token")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let Some(refresh_token) = refresh.filter(|r| !r.is_empty()) else {
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
        self.register(vec![Registered {
            component_appid: self.app.appid.clone(),
            appid: appid.to_owned(),
            refresh_token,
        }])
        .await
    }

    /// `POST /platforms/NAME/authorizers` `{"auth_code"}`: exchanged
    /// through `api_query_auth`.
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
        let component = match self.component.token().await {
            Ok(token) => token,
            Err(e) => {
                return refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{}: no component_access_token: {e}", self.name()),
                )
            }
        };
        let body = json!({"component_appid": self.app.appid, "authorization_code": code});
        let path = "/cgi-bin/component/api_query_auth";
        let answer = match grant::call(
            &self.client,
            &self.app.base_url,
            path,
            Some(component.value()),
            body,
        )
        .await
        {
            Ok(answer) => answer,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    "error",
                    &json!({"errcode": e.errcode(), "errmsg": format!("{}: api_query_auth: {e}", self.name())}),
                )
            }
        };
        let info = &answer["authorization_info"];
        let field = |f: &str| info.get(f).and_then(Value::as_str).map(str::to_owned);
        match (field("authorizer_appid"), field("authorizer_refresh_token")) {
            (Some(appid), Some(refresh_token)) => {
                self.register(vec![Registered {
                    component_appid: self.app.appid.clone(),
                    appid,
                    refresh_token,
                }])
                .await
            }
            _ => refused(
                StatusCode::BAD_GATEWAY,
                "api_query_auth answered without authorizer_appid or authorizer_refresh_token"
                    .into(),
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
    /// event).
    async fn delete(&self, appid: &str) -> Response<ProxyBody> {
        // Registered through another replica, perhaps, and not used here yet.
        let elsewhere = async {
            matches!(
                self.store.authorizer(&self.app.appid, appid).await,
                Ok(Some(_))
            )
        };
        if !self.read().contains_key(appid) && !elsewhere.await {
            return refused(
                StatusCode::NOT_FOUND,
                format!("{}: no authorizer {appid}", self.name()),
            );
        }
        if let Err(e) = self.store.unregister(&self.app.appid, appid).await {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: the registry cannot be saved: {e}", self.name()),
            );
        }
        self.write().remove(appid);
        tracing::info!(platform = %self.name(), authorizer = %appid, "authorizer removed");
        ok(json!({"removed": true, "appid": appid}))
    }

    /// `GET /platforms/NAME/authorizers`: appid, token state, life left,
    /// last error.
    fn authorizers_status(&self) -> Value {
        let mut entries: Vec<Value> = self
            .read()
            .iter()
            .map(|(appid, a)| {
                let revoked = a.grant.revoked.load(Ordering::Relaxed);
                let status = a.tokens.get().map(|t| t.status());
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
                })
            })
            .collect();
        entries.sort_by(|a, b| a["appid"].as_str().cmp(&b["appid"].as_str()));
        Value::Array(entries)
    }

    /// The platform's entry on `GET /platforms` (and `/apps`).
    pub fn status(&self) -> Value {
        let component = self.component.status();
        let map = self.read();
        let in_use = map.values().filter(|a| a.tokens.get().is_some()).count();
        let revoked = map
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
            "ticket": if self.component_grant.ticket.load().is_some() { "held" } else { "waiting for component_verify_ticket" },
            "component_token": {
                "state": component.state(),
                "expires_in_s": component.expires_in.map(|d| d.as_secs()),
                "last_error": component.last_error.map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
            },
            "authorizers": {"registered": map.len(), "in_use": in_use, "revoked": revoked},
        })
    }
}

/// `wx` and 16 hex digits, like the config's appids.
fn appid_shaped(id: &str) -> bool {
    id.len() == 18 && id.starts_with("wx") && id.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}

fn ok(body: Value) -> Response<ProxyBody> {
    let mut response = json_response(StatusCode::OK, "admin", &body);
    response.headers_mut().remove(crate::error::LOCAL_ANSWER);
    response
}

fn refused(status: StatusCode, errmsg: String) -> Response<ProxyBody> {
    json_response(status, "error", &json!({"errcode": -1, "errmsg": errmsg}))
}
