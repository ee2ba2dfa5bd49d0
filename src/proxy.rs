//! The request path: route to an app, answer token requests locally, forward
//! with the token, read WeChat's errcode, refresh and retry once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::auth::{self, InboundKey};
use crate::body::{buffer_up_to, Buffered, ProxyBody, Stalled};
use crate::config::{AppConfig, AppKind, Config};
use crate::error::{json_response, with_causes, LocalError};
use crate::inspect::{self, INSPECT_LIMIT};
use crate::limits::{self, BodyTooLarge, Cap};
use crate::linger::Linger;
use crate::metrics::{AppMetrics, Metrics};
use crate::token::{RefreshError, Token, TokenManager};
use crate::upstream::{Error as ClientError, HttpClient};
use crate::{guard, query, scrub};

/// What SDKs get instead of a real token when they ask for one. They send it
/// back on every call; the proxy drops it and puts in the real one.
pub const PLACEHOLDER_TOKEN: &str = "WECHAT_TOKEN_PROXY_PLACEHOLDER";

/// An app as the request path sees it.
pub struct App {
    /// Its validated config.
    pub config: Arc<AppConfig>,
    /// Its token.
    pub tokens: Arc<TokenManager>,
    /// Its request, retry and latency metrics.
    pub metrics: AppMetrics,
    /// The connection pool for its egress route.
    pub client: HttpClient,
    /// Its JS-SDK tickets, answered and signed with locally.
    pub tickets: Arc<crate::ticket::Tickets>,
    /// Set for a third-party platform: it picks the credential per path
    /// (component or authorizer token); `tokens` is its component token.
    pub platform: Option<Arc<crate::platform::Platform>>,
}

/// Forwards requests; shared by every connection.
pub struct Proxy {
    /// The apps, in config order.
    apps: Vec<App>,
    /// Serves paths that name no app.
    default_app: Option<usize>,
    /// Request bodies up to this size are kept for a retry.
    max_replay: usize,
    /// Until WeChat's response headers arrive, counted from the last byte of
    /// the request; also the longest gap in WeChat's answer body.
    request_timeout: Duration,
    /// Whether to log one line per request.
    access_log: bool,
    /// "mp, work": for the unknown-app answer.
    app_list: String,
    /// For requests that match no app.
    metrics: Arc<Metrics>,
    /// Callers must present this key, if set.
    client_key: Option<InboundKey>,
    /// Request bodies over this size get 413.
    max_body: u64,
    /// A body kept for replay must arrive within this; a streamed one may
    /// pause this long between bytes.
    body_timeout: Duration,
    /// For the connect-timeout answer.
    connect_timeout: Duration,
}

/// What a request came to, for the access log.
struct Outcome {
    app: Option<usize>,
    errcode: Option<i64>,
    retried: bool,
}

impl Proxy {
    /// A proxy for `apps` (one per `config.apps`, in that order).
    pub fn new(config: &Config, apps: Vec<App>, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            app_list: apps
                .iter()
                .map(|a| a.config.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            apps,
            default_app: config.default_app,
            max_replay: config.proxy.max_replay_body_bytes,
            request_timeout: config.upstream.request_timeout,
            access_log: config.log.access_log,
            metrics,
            client_key: config.proxy.client_key.clone(),
            max_body: config.proxy.limits.max_body_bytes,
            body_timeout: config.proxy.limits.idle_timeout,
            connect_timeout: config.upstream.connect_timeout,
        }
    }

    /// Serves one request; never fails (errors become JSON answers).
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let mut outcome = Outcome {
            app: None,
            errcode: None,
            retried: false,
        };
        let mut body = Some(body);
        let response = match self.serve(&parts, &mut body, &mut outcome).await {
            Ok(response) => response,
            Err(e) => {
                // Answered before the client finished sending: the rest of
                // its body must be read before closing, or the client may
                // never read this answer.
                let unread = match &e {
                    LocalError::BodyTooLarge(_) | LocalError::ClientTimeout { .. } => true,
                    _ => body.as_ref().is_some_and(|b| !b.is_end_stream()),
                };
                let mut response = e.into_response();
                if unread {
                    Linger::mark(&mut response);
                }
                response
            }
        };
        let status = response.status().as_u16();
        match outcome.app {
            Some(i) => self.apps[i].metrics.request(status),
            None => self.metrics.unrouted(status),
        }
        if self.access_log {
            // A platform's authorizer is its customer: the line names the
            // platform only.
            let platform = outcome.app.and_then(|i| self.apps[i].platform.as_ref());
            let path = match platform {
                Some(platform) => std::borrow::Cow::Owned(platform.loggable(parts.uri.path())),
                None => std::borrow::Cow::Borrowed(parts.uri.path()),
            };
            tracing::info!(
                target: "wechat_token_proxy::access",
                app = outcome.app.map_or("-", |i| self.apps[i].config.name.as_str()),
                method = %parts.method,
                path = &*path,
                status,
                errcode = outcome.errcode,
                retried = outcome.retried,
                latency_ms = started.elapsed().as_micros() as f64 / 1000.0,
                "request"
            );
        }
        response
    }

    async fn serve(
        &self,
        parts: &Parts,
        body: &mut Option<Incoming>,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, LocalError> {
        guard::method(parts)?;
        if self
            .client_key
            .as_ref()
            .is_some_and(|k| !k.admits(&parts.headers))
        {
            return Err(LocalError::Unauthorized);
        }
        if limits::declared_too_large(&parts.headers, self.max_body) {
            return Err(BodyTooLarge(self.max_body).into());
        }
        let (index, path) = self.route(parts.uri.path())?;
        outcome.app = Some(index);
        let app = &self.apps[index];
        guard::target(&app.config, parts)?;
        // A platform path names the credential: its component token, or an
        // authorizer's token (answered here for the token endpoints).
        // Borrowed for an app (the common case: no reference count touched
        // per request); a platform's route hands out the manager it picked.
        let routed;
        let (tokens, path, param) = match &app.platform {
            None => (&app.tokens, path, "access_token"),
            Some(platform) => match platform.route(path).await? {
                crate::platform::Routed::Answer(answer) => return Ok(answer),
                crate::platform::Routed::Local(call) => {
                    policy(app, path)?;
                    let body = body.take().ok_or_else(|| {
                        LocalError::ClientBody("the request body was already read".into())
                    })?;
                    let (_, Some(body), _) = self.prepare_body(body).await? else {
                        return Err(BodyTooLarge(self.max_replay as u64).into());
                    };
                    return Ok(platform.answer_local(call, &body).await);
                }
                crate::platform::Routed::Forward {
                    tokens,
                    path,
                    param,
                } => {
                    routed = tokens;
                    (&routed, path, param)
                }
            },
        };
        // Before the policy: the placeholder carries no credential, and SDKs
        // cannot start without it.
        if let Some(answer) = placeholder_answer(app.config.kind, path) {
            return Ok(answer);
        }
        guard::secrets(&app.config, path, parts)?;
        policy(app, path)?;
        if app.platform.is_none() {
            if let Some(answer) = crate::jssdk::answer(app, parts, path).await {
                return Ok(answer);
            }
        }
        let token = tokens
            .token()
            .await
            .map_err(|e| token_unavailable(tokens, e))?;

        let Some(body) = body.take() else {
            return Err(LocalError::ClientBody(
                "the request body was already read".into(),
            ));
        };
        let (body, replay, ended) = self.prepare_body(body).await?;
        let request = Forward {
            app,
            parts,
            path,
            param,
        };
        let response = self
            .send(&request, &token, body, replay.as_ref(), ended)
            .await?;
        let (response, errcode) = self.inspect(app, path, response, &[token.value()]).await?;
        outcome.errcode = errcode;
        if !errcode.is_some_and(|code| is_token_error(app.config.kind, code)) {
            tokens.accepted(&token, path);
            return Ok(response);
        }

        let Some(replay) = replay else {
            // The body is gone: hand the token error back, but renew the
            // token so the client's next call works.
            let (tokens, path) = (tokens.clone(), path.to_owned());
            tokio::spawn(async move { tokens.replace(&token, &path).await });
            return Ok(response);
        };
        let fresh = match tokens.replace(&token, path).await {
            Ok(fresh) => fresh,
            // WeChat's own answer, at once: the client sees its errcode.
            Err(RefreshError::NotRenewed | RefreshError::RejectedByOneApi) => return Ok(response),
            Err(e) => return Err(token_unavailable(tokens, e)),
        };
        outcome.retried = true;
        app.metrics.retry();
        let retry = self
            .send(
                &request,
                &fresh,
                ProxyBody::full(replay.clone()),
                Some(&replay),
                None,
            )
            .await?;
        // The answer may quote either token: the one sent, or the one it replaced.
        let (retry, errcode) = self
            .inspect(app, path, retry, &[fresh.value(), token.value()])
            .await?;
        outcome.errcode = errcode;
        if !errcode.is_some_and(|code| is_token_error(app.config.kind, code)) {
            tokens.accepted(&fresh, path);
        }
        Ok(retry)
    }

    /// Picks the app by the first path segment, else the default app.
    /// Returns the app's index and the path to forward.
    fn route<'p>(&self, path: &'p str) -> Result<(usize, &'p str), LocalError> {
        let after = path.strip_prefix('/').unwrap_or(path);
        let end = after.find('/').unwrap_or(after.len());
        let segment = &after[..end];
        if let Some(i) = self.apps.iter().position(|a| a.config.name == segment) {
            let rest = &after[end..];
            return Ok((i, if rest.is_empty() { "/" } else { rest }));
        }
        match self.default_app {
            Some(i) => Ok((i, path)),
            None => Err(LocalError::UnknownApp {
                prefix: segment.to_owned(),
                apps: self.app_list.clone(),
            }),
        }
    }

    /// Reads a request body of up to `max_replay` bytes into memory so it can
    /// be sent twice; a larger one streams (and cannot be retried), counted
    /// against `max_body`, bounded by the gaps between its bytes rather than
    /// its total time, and tells through the receiver when it has all gone.
    async fn prepare_body(
        &self,
        body: Incoming,
    ) -> Result<(ProxyBody, Option<Bytes>, Option<oneshot::Receiver<()>>), LocalError> {
        let keep = self
            .max_replay
            .min(usize::try_from(self.max_body).unwrap_or(usize::MAX));
        let buffered = tokio::time::timeout(self.body_timeout, buffer_up_to(body, keep))
            .await
            .map_err(|_| LocalError::ClientTimeout {
                ms: self.body_timeout.as_millis(),
            })?;
        match buffered {
            Ok(Buffered::Complete(bytes)) => {
                Ok((ProxyBody::full(bytes.clone()), Some(bytes), None))
            }
            Ok(Buffered::Partial(_)) if keep as u64 == self.max_body => {
                Err(BodyTooLarge(self.max_body).into())
            }
            Ok(Buffered::Partial(body)) => {
                let (ended, sent) = oneshot::channel();
                let capped = ProxyBody::Capped {
                    cap: Cap::new(self.max_body),
                    inner: Box::new(body),
                };
                Ok((
                    capped.paced(self.body_timeout, Some(ended)),
                    None,
                    Some(sent),
                ))
            }
            Err(e) => Err(LocalError::ClientBody(e.to_string())),
        }
    }

    /// Sends one attempt and waits for WeChat's response headers: up to
    /// `request_timeout` after the request body has all gone out. A pooled
    /// connection that the server closed before answering never delivered
    /// the request, so a replayable request goes again, once, on a fresh
    /// connection, whatever its method.
    async fn send(
        &self,
        request: &Forward<'_>,
        token: &Token,
        body: ProxyBody,
        replay: Option<&Bytes>,
        ended: Option<oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, LocalError> {
        let client = &request.app.client;
        let sent = Instant::now();
        let answer = client.request(request.build(token, body)?);
        let mut answer = self.wait(answer, ended).await;
        let stale = matches!(&answer, Ok(Err(e)) if e.reused() && closed_unanswered(e));
        if stale {
            if let Some(replay) = replay {
                tracing::debug!(app = %request.app.config.name, "a pooled connection closed unanswered; sending again on a new one");
                let again = request.build(token, ProxyBody::full(replay.clone()))?;
                answer = self.wait(client.request_fresh(again), None).await;
            }
        }
        request.app.metrics.upstream(sent.elapsed());
        let app = &request.app.config.name;
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.send_error(app, &e)),
            Err(_) => Err(LocalError::UpstreamTimeout {
                app: app.clone(),
                ms: self.request_timeout.as_millis(),
            }),
        }
    }

    /// The response headers, or a timeout: `request_timeout` counted from
    /// when `ended` fires (a streamed body's last byte), or from now.
    async fn wait(
        &self,
        answer: impl std::future::Future<Output = Result<Response<Incoming>, ClientError>>,
        ended: Option<oneshot::Receiver<()>>,
    ) -> Result<Result<Response<Incoming>, ClientError>, tokio::time::error::Elapsed> {
        tokio::pin!(answer);
        if let Some(ended) = ended {
            tokio::select! {
                answer = &mut answer => return Ok(answer),
                // Sent, or dropped with the body: either way, nothing more
                // is coming from the client.
                _ = ended => {}
            }
        }
        tokio::time::timeout(self.request_timeout, answer).await
    }

    /// Names why a request could not be sent: the client's body passed its
    /// limit (413), no connection in time (504), or WeChat unreachable (502).
    fn send_error(&self, app: &str, e: &ClientError) -> LocalError {
        if let Some(too_large) = limits::body_too_large(e) {
            return too_large.into();
        }
        if cause::<Stalled>(e).is_some() {
            // Only the client's streamed body is paced on the way up.
            return LocalError::ClientTimeout {
                ms: self.body_timeout.as_millis(),
            };
        }
        if e.is_connect() && timed_out(e) {
            return LocalError::UpstreamConnectTimeout {
                app: app.to_owned(),
                ms: self.connect_timeout.as_millis(),
            };
        }
        LocalError::UpstreamUnreachable {
            app: app.to_owned(),
            reason: with_causes(e),
        }
    }

    /// Reads the errcode of a small JSON-ish answer; streams anything else,
    /// failing it if WeChat pauses longer than `request_timeout`. Any of
    /// `tokens` in the headers or in a body read here is replaced
    /// ([`scrub`]).
    async fn inspect(
        &self,
        app: &App,
        path: &str,
        response: Response<Incoming>,
        tokens: &[&str],
    ) -> Result<(Response<ProxyBody>, Option<i64>), LocalError> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        scrub::headers(&mut parts.headers, tokens);
        if !worth_inspecting(&parts.headers) {
            let body = ProxyBody::Stream {
                prefix: None,
                rest: body,
            };
            let body = body.paced(self.request_timeout, None);
            return Ok((Response::from_parts(parts, body), None));
        }
        let stalled = || LocalError::UpstreamStalled {
            app: app.config.name.clone(),
            ms: self.request_timeout.as_millis(),
        };
        let buffered =
            tokio::time::timeout(self.request_timeout, buffer_up_to(body, INSPECT_LIMIT))
                .await
                .map_err(|_| stalled())?;
        match buffered {
            Ok(Buffered::Complete(bytes)) => {
                let errcode = inspect::looks_like_json(&bytes)
                    .then(|| inspect::errcode(&bytes))
                    .flatten();
                if let Some(code) = errcode {
                    app.metrics.errcode(code);
                }
                let mut clean = scrub::body(&bytes, tokens);
                if path == scrub::RID_GET {
                    clean = scrub::quoted_queries(clean.as_deref().unwrap_or(&bytes)).or(clean);
                }
                let bytes = match clean {
                    Some(clean) => {
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, clean.len().into());
                        clean
                    }
                    None => bytes,
                };
                Ok((Response::from_parts(parts, ProxyBody::full(bytes)), errcode))
            }
            Ok(Buffered::Partial(body)) => {
                let body = body.paced(self.request_timeout, None);
                Ok((Response::from_parts(parts, body), None))
            }
            Err(e) => Err(LocalError::UpstreamUnreachable {
                app: app.config.name.clone(),
                reason: format!("the answer broke off: {e}"),
            }),
        }
    }
}

/// The parts of a client request that every attempt shares.
struct Forward<'a> {
    app: &'a App,
    parts: &'a Parts,
    /// The path after the app prefix.
    path: &'a str,
    /// The query parameter the token goes in.
    param: &'static str,
}

impl Forward<'_> {
    /// One attempt's upstream request.
    fn build(&self, token: &Token, body: ProxyBody) -> Result<Request<ProxyBody>, LocalError> {
        let mut upstream = Request::new(body);
        *upstream.method_mut() = self.parts.method.clone();
        *upstream.uri_mut() = self.uri(token)?;
        *upstream.headers_mut() =
            forward_headers(&self.parts.headers, &self.app.config.base_url.host);
        Ok(upstream)
    }

    /// The upstream URI: the app's base URL, the path, the client's query
    /// without its `access_token`, and the real token.
    fn uri(&self, token: &Token) -> Result<Uri, LocalError> {
        let base = &self.app.config.base_url;
        let query = self.parts.uri.query();
        let mut pq = String::with_capacity(
            base.path.len()
                + self.path.len()
                + query.map_or(0, str::len)
                + token.value().len()
                + 16,
        );
        pq.push_str(&base.path);
        pq.push_str(self.path);
        pq.push('?');
        query::with_param(query, self.param, token.value(), &mut pq);
        Uri::builder()
            .scheme(base.scheme.clone())
            .authority(base.authority.clone())
            .path_and_query(pq)
            .build()
            // Only a token with bytes a URI cannot hold gets here, and those
            // are percent-encoded; so this is a path hyper let in but `http`
            // refuses. Do not echo it: it may carry the token.
            .map_err(|_| LocalError::ClientBody("the request path cannot be forwarded".into()))
    }
}

/// The app's path rules on `path`.
fn policy(app: &App, path: &str) -> Result<(), LocalError> {
    app.config
        .policy
        .check(path)
        .map_err(|refusal| LocalError::Forbidden {
            app: app.config.name.clone(),
            refusal,
        })
}

/// Whether `errcode` means "this token is no good" for an app of `kind`.
/// In WeCom 40001 means a bad secret, not a bad token.
pub(crate) fn is_token_error(kind: AppKind, errcode: i64) -> bool {
    matches!(
        (kind, errcode),
        (AppKind::Mp, 40001 | 40014 | 42001) | (AppKind::Wecom, 40014 | 42001)
    )
}

/// Media, images and downloads are never inspected, whatever their size.
fn worth_inspecting(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CONTENT_DISPOSITION) {
        return false;
    }
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start();
            ["image/", "audio/", "video/", "application/octet-stream"]
                .iter()
                .any(|p| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p))
        });
    let large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > INSPECT_LIMIT as u64);
    !binary && !large
}

/// The token requests SDKs make on their own, answered with a placeholder so
/// they work unmodified without the secret.
fn placeholder_answer(kind: AppKind, path: &str) -> Option<Response<ProxyBody>> {
    let body = match (kind, path) {
        (AppKind::Mp, "/cgi-bin/token" | "/cgi-bin/stable_token") => serde_json::json!({
            "access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
        }),
        (AppKind::Wecom, "/cgi-bin/gettoken") => serde_json::json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
        }),
        _ => return None,
    };
    Some(json_response(StatusCode::OK, "placeholder", &body))
}

/// Whether an I/O timeout is among the error's causes.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    cause::<std::io::Error>(error).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// Whether the connection ended before any answer came: closed, reset,
/// broken or given up by hyper (canceled) while the request went out. Not a connect error (nothing was
/// sent) and not a failure of the proxy's own request body.
fn closed_unanswered(error: &ClientError) -> bool {
    if error.is_connect()
        || cause::<Stalled>(error).is_some()
        || limits::body_too_large(error).is_some()
    {
        return false;
    }
    if cause::<hyper::Error>(error).is_some_and(|e| e.is_incomplete_message() || e.is_canceled()) {
        return true;
    }
    cause::<std::io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
                // A TLS peer that closed without close_notify.
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}

/// The first cause of type `E` in an error's chain.
fn cause<'e, E: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    crate::error::causes(error).find_map(|e| e.downcast_ref::<E>())
}

fn token_unavailable(tokens: &TokenManager, e: RefreshError) -> LocalError {
    let errcode = e.errcode();
    LocalError::TokenUnavailable {
        app: tokens.label().to_owned(),
        errcode,
        reason: e.to_string(),
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The client's headers as sent upstream: hop-by-hop headers and the proxy
/// key dropped, `Host` set to the upstream's.
fn forward_headers(client: &HeaderMap, host: &http::HeaderValue) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    // The caller's key for this proxy is not WeChat's business.
    auth::strip(&mut headers);
    headers.insert(header::HOST, host.clone());
    headers
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// `Transfer-Encoding` goes too: hyper frames the body itself. Runs twice
/// per request, so it looks names up only when one is there: one pass over
/// a handful of names costs less than nine hash lookups.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Taken out first, so the names it lists can be removed by `&str`
    // without copying the value.
    if let Some(connection) = headers.remove(header::CONNECTION) {
        for name in connection.to_str().unwrap_or("").split(',') {
            let name = name.trim();
            if !name.is_empty() {
                // A name that is not a valid header name matches nothing.
                headers.remove(name);
            }
        }
    }
    if headers
        .keys()
        .any(|name| name == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(name))
    {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        headers.remove(header::TRANSFER_ENCODING);
    }
}
