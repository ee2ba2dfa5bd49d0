//! The request path: pick the app, ask the route table what the request
//! comes to, answer it locally or forward it with the credential the route
//! names, read WeChat's errcode, refresh and retry once, scrub the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::config::{AppConfig, AppKind, Config, Secret};
use crate::error::{json_response, with_causes, LocalError};
use crate::forward::body::{buffer_up_to, Buffered, ProxyBody, Stalled};
use crate::forward::inspect::{self, INSPECT_LIMIT};
use crate::forward::route::{self, Action, Local, Place, Placeholder, Refuse, Scope, Scrub};
use crate::forward::upstream::{Error as ClientError, HttpClient};
use crate::forward::{guard, query, scrub};
use crate::inbound::auth::{self, InboundKey};
use crate::inbound::host::Hosts;
use crate::inbound::limits::{self, BodyTooLarge, Cap};
use crate::inbound::linger::Linger;
use crate::jssdk::Signer;
use crate::metrics::{AppMetrics, Metrics};
use crate::platform::AuthorizerHandle;
use crate::suite::{self, CorpHandle, Suite};
use crate::token::{RefreshError, Token, TokenManager};
use crate::wechat::{is_token_error, PLACEHOLDER_TOKEN};

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
    /// Set for a WeCom suite: it picks the credential per path (suite,
    /// provider or a corp's token); `tokens` is its suite token.
    pub suite: Option<Arc<Suite>>,
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
    /// The `Host` names the listener answers to.
    hosts: Hosts,
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
            hosts: Hosts::of(config.proxy.listen),
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
            Ok(response) => match body.take() {
                // Answered here before the body was read (a placeholder for
                // an SDK's POST token call): read it first. A body not yet
                // arrived when the answer goes would make hyper close the
                // connection, under a client already reusing it.
                Some(unread) if !unread.is_end_stream() => {
                    Box::pin(self.read_unused(unread, response)).await
                }
                _ => response,
            },
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
            // A platform's authorizer, a suite's corp, is its customer: the
            // line names the platform or suite only.
            let raw = parts.uri.path();
            let path = match outcome.app.map(|i| &self.apps[i]) {
                Some(App {
                    platform: Some(platform),
                    ..
                }) => std::borrow::Cow::Owned(platform.loggable(raw)),
                Some(App {
                    suite: Some(suite), ..
                }) => std::borrow::Cow::Owned(suite.loggable(raw)),
                _ => std::borrow::Cow::Borrowed(raw),
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
        self.hosts.check(parts)?;
        guard::browser(parts)?;
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
        let normal = route::normalize(parts.uri.path())?;
        let (index, path) = self.app_for(&normal)?;
        outcome.app = Some(index);
        let app = &self.apps[index];
        guard::target(&app.config, parts)?;
        let (action, path, authorizer, corp) = match &app.suite {
            // The rarer paths' futures (a suite's corp lookup, the calls a
            // platform or suite answers itself, a ticket, a token's
            // replacement) are boxed: held inline they would make every
            // request's future, and so every request's allocation, as large as
            // the largest of them, and it is copied at each level above.
            Some(suite) => Box::pin(classify_suite(suite, path, parts.uri.query())).await?,
            None => {
                let (action, path, authorizer) = classify(app, path).await?;
                (action, path, authorizer, None)
            }
        };
        let (place, scrub) = match action {
            // Before the policy: the placeholder carries no credential, and
            // SDKs cannot start without it.
            Action::Local(Local::Placeholder(kind)) => return Ok(placeholder(kind)),
            Action::Refuse(why) => return Err(refusal(app, why, path)),
            Action::Forward { place, scrub } => (place, scrub),
            Action::Local(_) => (Place::AccessToken, Scrub::Placed),
        };
        guard::secrets(&app.config, place, parts)?;
        app.config
            .policy
            .check(path)
            .map_err(|refusal| LocalError::Forbidden {
                app: app.config.name.clone(),
                refusal,
            })?;
        if let (Action::Local(Local::QueryAuth | Local::Sealed), Some(platform)) =
            (action, &app.platform)
        {
            // Its answer carries credentials: the platform makes the call and
            // answers with placeholders.
            let call = match action {
                Action::Local(Local::QueryAuth) => crate::platform::Local::QueryAuth,
                _ => crate::platform::Local::Sealed { path },
            };
            let body = body.take().ok_or_else(|| {
                LocalError::ClientBody("the request body was already read".into())
            })?;
            let (_, Some(body), _) = self.prepare_body(body).await? else {
                return Err(BodyTooLarge(self.max_replay as u64).into());
            };
            return Ok(Box::pin(platform.answer_local(call, &body)).await);
        }
        if let Action::Local(local) = action {
            if let (Local::PermanentCode, Some(suite)) = (local, &app.suite) {
                return Box::pin(self.permanent_code(suite, path, body)).await;
            }
            // An authorizer's or a corp's own tickets, made on this ask.
            let signer = match (&corp, &authorizer, &app.platform, &app.suite) {
                (Some(corp), _, _, Some(suite)) => Signer {
                    config: &corp.grant().corp,
                    appid: &corp.grant().corp.appid,
                    tickets: &|| suite.tickets(corp),
                },
                (_, Some(authorizer), Some(platform), _) => Signer {
                    config: &app.config,
                    appid: &authorizer.grant().appid,
                    tickets: &|| platform.tickets(authorizer),
                },
                _ => Signer {
                    config: &app.config,
                    appid: &app.config.appid,
                    tickets: &|| app.tickets.clone(),
                },
            };
            if let Some(answer) = Box::pin(crate::jssdk::answer(&signer, parts, local)).await {
                return Ok(answer);
            }
        }
        // The credential's source: an authorizer's token, the app's (or a
        // platform's component) token, or none (a login takes the secret or
        // the user's own token). Borrowed for an app: no reference count
        // touched per request.
        let corp_tokens = corp.as_ref().map(|c| &c.tokens);
        let tokens = match place {
            Place::AccessToken => Some(
                corp_tokens
                    .or(authorizer.as_ref().map(|a| &a.tokens))
                    .unwrap_or(&app.tokens),
            ),
            Place::ComponentToken | Place::ComponentLogin | Place::SuiteToken => Some(&app.tokens),
            Place::ProviderToken => Some(
                app.suite
                    .as_ref()
                    .and_then(|s| s.provider())
                    .ok_or_else(|| LocalError::TokenUnavailable {
                        app: app.config.name.clone(),
                        errcode: -1,
                        reason: format!("this path takes the provider_access_token: set provider_corpid and provider_secret_env in [platforms.{}]", app.config.name),
                    })?,
            ),
            Place::AppSecret | Place::Nothing => None,
        };
        let token = match tokens {
            Some(tokens) => Some(
                tokens
                    .token()
                    .await
                    .map_err(|e| token_unavailable(tokens, e))?,
            ),
            None => None,
        };
        let secret = (place == Place::AppSecret).then(|| app.tokens.secret());
        let placed = Placed {
            token: token.as_deref(),
            secret: secret.as_deref(),
        };

        let Some(body) = body.take() else {
            return Err(LocalError::ClientBody(
                "the request body was already read".into(),
            ));
        };
        let (body, replay, ended) = self.prepare_body(body).await?;
        // A suite API that takes a corp's permanent code in its body gets
        // the real one in place of its placeholder; scrubbed from the answer.
        let (body, replay, code) = match (&app.suite, replay) {
            (Some(suite), Some(bytes)) => {
                match Box::pin(with_permanent_code(suite, &bytes)).await {
                    Some((bytes, code)) => {
                        (ProxyBody::full(bytes.clone()), Some(bytes), Some(code))
                    }
                    None => (body, Some(bytes), None),
                }
            }
            (_, replay) => (body, replay, None),
        };
        let request = Forward {
            app,
            parts,
            path,
            place,
            resized: code.is_some(),
        };
        let code = code.as_ref().map_or("", |c| c.expose());
        let response = self
            .send(&request, placed, body, replay.as_ref(), ended)
            .await?;
        let (response, errcode) = self
            .inspect(app, scrub, response, &[placed.value(), code])
            .await?;
        outcome.errcode = errcode;
        let (Some(tokens), Some(token)) = (tokens, token) else {
            return Ok(response);
        };
        let dead = |errcode: i64| match place {
            Place::SuiteToken | Place::ProviderToken => suite::is_suite_token_error(errcode),
            _ => is_token_error(app.config.kind, errcode),
        };
        if !errcode.is_some_and(dead) {
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
        let fresh = match Box::pin(tokens.replace(&token, path)).await {
            Ok(fresh) => fresh,
            // WeChat's own answer, at once: the client sees its errcode.
            Err(RefreshError::NotRenewed | RefreshError::RejectedByOneApi) => return Ok(response),
            Err(e) => return Err(token_unavailable(tokens, e)),
        };
        outcome.retried = true;
        app.metrics.retry();
        let placed = Placed {
            token: Some(&fresh),
            secret: None,
        };
        let retry = self
            .send(
                &request,
                placed,
                ProxyBody::full(replay.clone()),
                Some(&replay),
                None,
            )
            .await?;
        // The answer may quote either token: the one sent, or the one it replaced.
        let (retry, errcode) = self
            .inspect(app, scrub, retry, &[fresh.value(), token.value(), code])
            .await?;
        outcome.errcode = errcode;
        if !errcode.is_some_and(dead) {
            tokens.accepted(&fresh, path);
        }
        Ok(retry)
    }

    /// Picks the app by the first segment of the normalized path, else the
    /// default app. Returns the app's index and the path after its prefix.
    fn app_for<'p>(&self, path: &'p str) -> Result<(usize, &'p str), LocalError> {
        let (segment, rest) = first_segment(path);
        if let Some(i) = self.apps.iter().position(|a| a.config.name == segment) {
            return Ok((i, rest));
        }
        match self.default_app {
            Some(i) => Ok((i, path)),
            None => Err(LocalError::UnknownApp {
                prefix: segment.to_owned(),
                apps: self.app_list.clone(),
            }),
        }
    }

    /// A suite's `get_permanent_code`: the proxy exchanges the code,
    /// registers the corp, and answers with placeholders for its permanent
    /// code and token.
    async fn permanent_code(
        &self,
        suite: &Suite,
        path: &str,
        body: &mut Option<Incoming>,
    ) -> Result<Response<ProxyBody>, LocalError> {
        let body = body
            .take()
            .ok_or_else(|| LocalError::ClientBody("the request body was already read".into()))?;
        let (_, replay, _) = self.prepare_body(body).await?;
        let auth_code = replay
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("auth_code")?.as_str().map(str::to_owned))
            .ok_or_else(|| {
                LocalError::ClientBody("get_permanent_code takes JSON {\"auth_code\":\"…\"}".into())
            })?;
        // The version the SDK asked for: the first also answers a token.
        let path = match path.eq_ignore_ascii_case(suite::EXCHANGE) {
            true => suite::EXCHANGE,
            false => "/cgi-bin/service/get_permanent_code",
        };
        let (_, answer) = suite.exchange(path, &auth_code).await?;
        Ok(json_response(StatusCode::OK, "exchanged", &answer))
    }

    /// The most of a request body read into memory: the bodies kept for a
    /// retry, never past the body limit.
    fn replay_limit(&self) -> usize {
        self.max_replay
            .min(usize::try_from(self.max_body).unwrap_or(usize::MAX))
    }

    /// Reads and drops the body of a request answered without it, so the
    /// connection stays open for the client's next call; one larger than
    /// the bodies kept for a retry, or not all in within `idle_timeout`, is
    /// left and the connection closed after `answer`.
    async fn read_unused(
        &self,
        body: Incoming,
        mut answer: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let keep = self.replay_limit();
        let read = tokio::time::timeout(self.body_timeout, buffer_up_to(body, keep));
        if !matches!(read.await, Ok(Ok(Buffered::Complete(_)))) {
            Linger::mark(&mut answer);
        }
        answer
    }

    /// Reads a request body of up to `max_replay` bytes into memory so it can
    /// be sent twice; a larger one streams (and cannot be retried), counted
    /// against `max_body`, bounded by the gaps between its bytes rather than
    /// its total time, and tells through the receiver when it has all gone.
    async fn prepare_body(
        &self,
        body: Incoming,
    ) -> Result<(ProxyBody, Option<Bytes>, Option<oneshot::Receiver<()>>), LocalError> {
        // Most calls are GETs: nothing to wait for, no timer to arm.
        if body.is_end_stream() {
            return Ok((ProxyBody::empty(), Some(Bytes::new()), None));
        }
        let keep = self.replay_limit();
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
        placed: Placed<'_>,
        body: ProxyBody,
        replay: Option<&Bytes>,
        ended: Option<oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, LocalError> {
        let client = &request.app.client;
        let sent = Instant::now();
        // Pinned here and lent to `wait`, in a block of its own: a future
        // passed by value would be held twice (as `wait`'s argument and
        // pinned inside it), and this one is most of every request's size.
        let mut answer = {
            let answer = client.request(request.build(placed, body)?);
            tokio::pin!(answer);
            self.wait(answer, ended).await
        };
        let stale = matches!(&answer, Ok(Err(e)) if e.reused() && closed_unanswered(e));
        if stale {
            if let Some(replay) = replay {
                tracing::debug!(app = %request.app.config.name, "a pooled connection closed unanswered; sending again on a new one");
                let again = request.build(placed, ProxyBody::full(replay.clone()))?;
                let again = client.request_fresh(again);
                tokio::pin!(again);
                answer = self.wait(again, None).await;
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
        mut answer: Pin<&mut impl Future<Output = Result<Response<Incoming>, ClientError>>>,
        ended: Option<oneshot::Receiver<()>>,
    ) -> Result<Result<Response<Incoming>, ClientError>, tokio::time::error::Elapsed> {
        if let Some(ended) = ended {
            tokio::select! {
                answer = answer.as_mut() => return Ok(answer),
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
    /// `placed` in the headers or in a body read here is replaced; on a
    /// route whose answers can hold other credentials ([`Scrub::Fields`])
    /// the whole body is read and scrubbed by field ([`scrub`]).
    async fn inspect(
        &self,
        app: &App,
        scrub: Scrub,
        response: Response<Incoming>,
        placed: &[&str],
    ) -> Result<(Response<ProxyBody>, Option<i64>), LocalError> {
        let (mut parts, body) = response.into_parts();
        // The client sees the status code's own reason, not one the
        // upstream chose (it could quote anything).
        parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        strip_hop_by_hop(&mut parts.headers);
        scrub::headers(&mut parts.headers, placed);
        let fields = scrub == Scrub::Fields;
        if fields && parts.headers.contains_key(header::CONTENT_ENCODING) {
            return Err(LocalError::Unscrubbable {
                app: app.config.name.clone(),
                reason: "it came encoded (Content-Encoding), so its credentials cannot be replaced",
            });
        }
        if !fields && !worth_inspecting(&parts.headers) {
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
        let limit = if fields { SCRUB_LIMIT } else { INSPECT_LIMIT };
        let buffered = tokio::time::timeout(self.request_timeout, buffer_up_to(body, limit))
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
                let clean = match scrub {
                    Scrub::Placed => scrub::body(&bytes, placed),
                    Scrub::Fields => scrub::credentials(&bytes, placed),
                };
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
            Ok(Buffered::Partial(_)) if fields => Err(LocalError::Unscrubbable {
                app: app.config.name.clone(),
                reason: "it is larger than 16 MiB, too large to read for credentials",
            }),
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
    /// The path after the app prefix, in normal form.
    path: &'a str,
    /// Which credential goes where.
    place: Place,
    /// The body is not the client's (a permanent code put in): its
    /// `Content-Length` no longer holds.
    resized: bool,
}

/// The credential one attempt places: a token, or the app's AppSecret.
#[derive(Clone, Copy)]
struct Placed<'a> {
    token: Option<&'a Token>,
    secret: Option<&'a Secret>,
}

impl Placed<'_> {
    /// The credential's value, to scrub from the answer ("" when none).
    fn value(&self) -> &str {
        match (self.token, self.secret) {
            (Some(token), _) => token.value(),
            (None, Some(secret)) => secret.expose(),
            (None, None) => "",
        }
    }

    /// The credential as it goes into the query: a token comes encoded.
    fn in_query(&self) -> std::borrow::Cow<'_, str> {
        match self.token {
            Some(token) => std::borrow::Cow::Borrowed(token.in_query()),
            None => query::encoded(self.value()),
        }
    }
}

impl Forward<'_> {
    /// One attempt's upstream request.
    fn build(&self, placed: Placed<'_>, body: ProxyBody) -> Result<Request<ProxyBody>, LocalError> {
        let mut upstream = Request::new(body);
        *upstream.method_mut() = self.parts.method.clone();
        *upstream.uri_mut() = self.uri(placed)?;
        *upstream.headers_mut() =
            forward_headers(&self.parts.headers, &self.app.config.base_url.host);
        if self.resized {
            upstream.headers_mut().remove(header::CONTENT_LENGTH);
        }
        Ok(upstream)
    }

    /// The upstream URI: the app's base URL, the path, the client's query
    /// without the parameters the proxy places, and those parameters.
    fn uri(&self, placed: Placed<'_>) -> Result<Uri, LocalError> {
        let base = &self.app.config.base_url;
        let query = self.parts.uri.query();
        let value = placed.in_query();
        let value = &*value;
        let mut pq = String::with_capacity(
            base.path.len() + self.path.len() + query.map_or(0, str::len) + value.len() + 64,
        );
        pq.push_str(&base.path);
        pq.push_str(self.path);
        pq.push('?');
        match self.place {
            Place::AccessToken => query::with_param(query, "access_token", value, &mut pq),
            Place::ComponentToken => {
                query::with_param(query, "component_access_token", value, &mut pq)
            }
            Place::ComponentLogin => query::rewrite(
                query,
                &["component_appid", "component_access_token"],
                &[
                    ("component_appid", &query::encoded(&self.app.config.appid)),
                    ("component_access_token", value),
                ],
                &mut pq,
            ),
            // Exactly one of each, whatever the client sent: WeChat takes
            // the first of a repeated parameter, another server the last.
            Place::AppSecret => query::rewrite(
                query,
                &["appid", "secret", "grant_type", "access_token"],
                &[
                    ("appid", &query::encoded(&self.app.config.appid)),
                    ("secret", value),
                    ("grant_type", "authorization_code"),
                ],
                &mut pq,
            ),
            Place::Nothing => query::rewrite(query, &[], &[], &mut pq),
            Place::SuiteToken => query::with_param(query, "suite_access_token", value, &mut pq),
            // License APIs take it as provider_access_token, others (such
            // as get_login_info) as access_token: where the client put it.
            Place::ProviderToken => {
                let param = if self.path.starts_with("/cgi-bin/license/")
                    || query::param(query, "provider_access_token").is_some()
                {
                    "provider_access_token"
                } else {
                    "access_token"
                };
                query::with_param(query, param, value, &mut pq)
            }
        }
        if pq.ends_with('?') {
            pq.pop();
        }
        // Only a token with bytes a URI cannot hold fails here, and those
        // are percent-encoded; so this is a path hyper let in but `http`
        // refuses. Do not echo it: it may carry a credential.
        fn unfit<E>(_: E) -> LocalError {
            LocalError::ClientBody("the request path cannot be forwarded".into())
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(base.scheme.clone());
        uri.authority = Some(base.authority.clone());
        uri.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).map_err(unfit)?);
        Uri::from_parts(uri).map_err(unfit)
    }
}

/// What the route table says of `path` (after the app prefix) for `app`;
/// for a platform path that names an authorizer, the path after its appid
/// and the authorizer's token.
async fn classify<'p>(
    app: &App,
    path: &'p str,
) -> Result<(Action, &'p str, Option<AuthorizerHandle>), LocalError> {
    let Some(platform) = &app.platform else {
        let scope = match app.config.kind {
            AppKind::Mp => Scope::Mp,
            AppKind::Wecom => Scope::Wecom,
        };
        let action = route::classify(scope, path).unwrap_or(route::FORWARD);
        return Ok((action, path, None));
    };
    if let Some(action) = route::classify(Scope::Platform, path) {
        return Ok((action, path, None));
    }
    let (appid, rest) = first_segment(path);
    let authorizer = platform.authorizer(appid).await?;
    let action = route::classify(Scope::Authorizer, rest).unwrap_or(route::FORWARD);
    Ok((action, rest, Some(authorizer)))
}

/// What the route table says of `path` (after the suite's prefix): a
/// suite path (`/cgi-bin/…`), or a corp's (`/{corpid}/…`, a WeCom app's
/// paths) with that corp. A provider placeholder sent as `access_token`
/// asks for the provider token.
async fn classify_suite<'p>(
    suite: &Suite,
    path: &'p str,
    query: Option<&str>,
) -> Result<
    (
        Action,
        &'p str,
        Option<AuthorizerHandle>,
        Option<CorpHandle>,
    ),
    LocalError,
> {
    let (first, rest) = first_segment(path);
    if first.eq_ignore_ascii_case("cgi-bin") {
        let suite_forward = Action::Forward {
            place: Place::SuiteToken,
            scrub: Scrub::Placed,
        };
        let action = match route::classify(Scope::Suite, path).unwrap_or(suite_forward) {
            Action::Forward { scrub, .. }
                if query::param(query, "access_token").as_deref()
                    == Some(suite::PROVIDER_PLACEHOLDER) =>
            {
                Action::Forward {
                    place: Place::ProviderToken,
                    scrub,
                }
            }
            action => action,
        };
        return Ok((action, path, None, None));
    }
    let corp = suite.corp(first).await?;
    let action = route::classify(Scope::Wecom, rest).unwrap_or(route::FORWARD);
    Ok((action, rest, None, Some(corp)))
}

/// The body with the permanent code of its `auth_corpid` in place of the
/// placeholder, and the code; `None` when it holds no placeholder.
async fn with_permanent_code(suite: &Suite, body: &Bytes) -> Option<(Bytes, Secret)> {
    let placeholder = suite::CODE_PLACEHOLDER.as_bytes();
    if !body.windows(placeholder.len()).any(|w| w == placeholder) {
        return None;
    }
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let corpid = json.get("auth_corpid")?.as_str()?.to_owned();
    let code = suite.permanent_code(&corpid).await?;
    if json.get("permanent_code")?.as_str()? != suite::CODE_PLACEHOLDER {
        return None;
    }
    json["permanent_code"] = serde_json::Value::from(code.expose());
    Some((Bytes::from(json.to_string()), code))
}

/// The first segment of `path` and the path after it (`/` when nothing is).
fn first_segment(path: &str) -> (&str, &str) {
    let after = path.strip_prefix('/').unwrap_or(path);
    let end = after.find('/').unwrap_or(after.len());
    let rest = &after[end..];
    (&after[..end], if rest.is_empty() { "/" } else { rest })
}

/// The 4xx answer of a refused route.
fn refusal(app: &App, why: Refuse, path: &str) -> LocalError {
    match why {
        Refuse::TokenPath => LocalError::TokenPath {
            app: app.config.name.clone(),
            kind: match (&app.platform, &app.suite) {
                (Some(_), _) => "platform",
                (_, Some(_)) => "WeCom suite",
                _ => app.config.kind.as_str(),
            },
            path: path.to_owned(),
            own: match (app.platform.is_some(), app.suite.is_some(), app.config.kind) {
                (true, _, _) => "/cgi-bin/component/api_component_token",
                (_, true, _) => {
                    "/cgi-bin/service/get_suite_token (a corp's: /CORPID/cgi-bin/gettoken)"
                }
                (false, false, AppKind::Mp) => "/cgi-bin/token or /cgi-bin/stable_token",
                (false, false, AppKind::Wecom) => "/cgi-bin/gettoken",
            },
        },
        Refuse::AuthorizerLogin => LocalError::AuthorizerLogin {
            platform: app.config.name.clone(),
            path: path.to_owned(),
        },
    }
}

/// The largest answer read whole to be scrubbed by field: WeChat's largest
/// such answers (an authorizer list page of 500) are ~75 KB.
const SCRUB_LIMIT: usize = 16 * 1024 * 1024;

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

/// The answer to a token request an SDK makes on its own: the placeholder,
/// in the shape of the endpoint asked, so it works unmodified without the
/// secret.
fn placeholder(kind: Placeholder) -> Response<ProxyBody> {
    let body = match kind {
        Placeholder::Mp => serde_json::json!({
            "access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
        }),
        Placeholder::Wecom => serde_json::json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
        }),
        Placeholder::Component => serde_json::json!({
            "component_access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
        }),
        Placeholder::Authorizer => serde_json::json!({
            "authorizer_access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
            "authorizer_refresh_token": PLACEHOLDER_TOKEN,
        }),
        Placeholder::Suite => serde_json::json!({
            "suite_access_token": suite::SUITE_PLACEHOLDER,
            "expires_in": 7200,
        }),
        Placeholder::Provider => serde_json::json!({
            "provider_access_token": suite::PROVIDER_PLACEHOLDER,
            "expires_in": 7200,
        }),
        Placeholder::Corp => serde_json::json!({
            "access_token": PLACEHOLDER_TOKEN,
            "expires_in": 7200,
        }),
    };
    json_response(StatusCode::OK, "placeholder", &body)
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

/// The client's headers as sent upstream: hop-by-hop headers, the proxy key
/// and `Accept-Encoding` dropped, `Host` set to the upstream's.
fn forward_headers(client: &HeaderMap, host: &http::HeaderValue) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    // The caller's key for this proxy is not WeChat's business.
    auth::strip(&mut headers);
    headers.insert(header::HOST, host.clone());
    // A compressed answer could be neither read for its errcode nor
    // scrubbed: WeChat is asked for plain bytes.
    headers.remove(header::ACCEPT_ENCODING);
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
