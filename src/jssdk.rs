//! The JS-SDK answers the proxy makes itself: the ticket calls SDKs make
//! (answered from the held ticket, so every SDK instance shares one), and
//! `wx.config` / `wx.agentConfig` values signed here, so the application
//! never needs a ticket at all.
//!
//! - `GET /jssdk/config?url=URL`: `{"appId","timestamp","nonceStr","signature"}`,
//!   signed with the jsapi ticket (mp) or the corp ticket (WeCom, `appId` =
//!   corpid).
//! - `GET /jssdk/agent-config?url=URL` (WeCom):
//!   `{"corpid","agentid","timestamp","nonceStr","signature"}`, signed with
//!   the agent ticket; needs the app's `agentid`.
//!
//! The same answers for the accounts served under a platform or a suite
//! (`/{platform}/{appid}/…`, `/{suite}/{corpid}/…`), signed for that
//! account with its own tickets, which are made on its first ask
//! ([`OnDemand`]).
//!
//! The signature is the SHA-1 of
//! `jsapi_ticket=T&noncestr=N&timestamp=TS&url=U`, U without its `#`
//! fragment; the nonce comes from the OS's randomness.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;
use http::{header, HeaderValue, Method, Response, StatusCode};
use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::{AppConfig, AppKind};
use crate::error::json_response;
use crate::forward::body::ProxyBody;
use crate::forward::route::{Local, TicketCall};
use crate::ticket::{Kind, Ticket, TicketError, Tickets};

/// Whom the answers are for: the name, kind and agentid of `config` (an
/// app, or the platform or suite an account is served under), the account
/// `appid` signed for, and where its tickets come from (called only when a
/// ticket is needed, so an account's are made on its first ask).
pub struct Signer<'a> {
    /// The app, or the platform or suite of the account.
    pub config: &'a AppConfig,
    /// The account: the app's appid, an authorizer's, a corp's corpid.
    pub appid: &'a str,
    /// The account's tickets.
    pub tickets: &'a (dyn Fn() -> Arc<Tickets> + Sync),
}

/// Answers a ticket call or a JS-SDK path (`local`, from the route table)
/// here; `None` lets the request go on to WeChat (a ticket of a type the
/// proxy does not hold). Called after the client key and the app's path
/// policy were checked.
pub async fn answer(
    signer: &Signer<'_>,
    parts: &Parts,
    local: Local,
) -> Option<Response<ProxyBody>> {
    let app = signer;
    let signed = match local {
        Local::JssdkConfig => match app.config.kind {
            AppKind::Mp => Kind::Jsapi,
            AppKind::Wecom => Kind::Corp,
        },
        Local::JssdkAgentConfig => Kind::Agent,
        Local::Ticket(call) => {
            let asked = crate::forward::query::param(parts.uri.query(), "type");
            // A `type` the proxy does not hold goes to WeChat as any call.
            let kind = match (call, asked.as_deref()) {
                (TicketCall::Mp, Some("jsapi")) => Kind::Jsapi,
                (TicketCall::Mp, Some("wx_card")) => Kind::WxCard,
                (TicketCall::Corp, _) => Kind::Corp,
                (TicketCall::Agent, Some("agent_config")) => Kind::Agent,
                _ => return None,
            };
            return Some(match ticket(app, kind).await {
                Ok(ticket) => no_store(json_response(
                    StatusCode::OK,
                    "ticket",
                    &json!({
                        "errcode": 0,
                        "errmsg": "ok",
                        "ticket": ticket.value(),
                        "expires_in": ticket.expires_in().as_secs(),
                    }),
                )),
                Err(e) => unavailable(app, kind, &e),
            });
        }
        Local::Placeholder(_) | Local::PermanentCode | Local::QueryAuth | Local::Sealed => {
            return None
        }
    };
    Some(config(app, parts, signed).await)
}

/// The JS-SDK tickets of one account served under a platform or a suite,
/// made on its first JS-SDK ask: most authorizers and corps never ask, and
/// an idle one costs no holder. Dropped with the account when it is
/// removed, which ends the tickets' renewal.
#[derive(Default)]
pub struct OnDemand(OnceLock<Made>);

/// Tickets made, and what ends their renewal.
struct Made {
    /// The account's tickets.
    tickets: Arc<Tickets>,
    /// The holders' shutdown signal: sent at shutdown, dropped with the
    /// account; either ends their renewal tasks.
    stop: watch::Sender<bool>,
}

impl OnDemand {
    /// The tickets, made now by `make` (given their shutdown signal) if
    /// this is the first ask.
    pub fn get_or_make(&self, make: impl FnOnce(watch::Receiver<bool>) -> Tickets) -> Arc<Tickets> {
        let made = self.0.get_or_init(|| {
            let (stop, stopped) = watch::channel(false);
            Made {
                tickets: Arc::new(make(stopped)),
                stop,
            }
        });
        made.tickets.clone()
    }

    /// The tickets, if they were ever asked for.
    pub fn made(&self) -> Option<&Arc<Tickets>> {
        self.0.get().map(|m| &m.tickets)
    }

    /// Ends the renewal of the tickets (at shutdown).
    pub fn stop(&self) {
        if let Some(made) = self.0.get() {
            let _ = made.stop.send(true);
        }
    }
}

/// The tickets asked for since start, by kind: state and life left, never
/// a ticket.
pub fn status(tickets: &Tickets) -> Value {
    let entries = tickets.status().into_iter().map(|t| {
        let entry = json!({
            "state": if t.expires_in.is_some() { "valid" } else { "missing" },
            "expires_in_s": t.expires_in.map(|d| d.as_secs()),
            "fetches": t.fetches,
            "last_error": t.last_error.map(|e| json!({"errcode": e.errcode(), "errmsg": e.to_string()})),
        });
        (t.kind.as_str().to_owned(), entry)
    });
    Value::Object(entries.collect())
}

/// A platform's or suite's summary of its accounts' tickets: how many
/// accounts asked, and how many of their tickets are valid or missing.
/// Counts only, never an account.
pub fn summary<'a>(accounts: impl Iterator<Item = &'a OnDemand>) -> Value {
    let (mut asked, mut valid, mut missing) = (0, 0, 0);
    for tickets in accounts.filter_map(OnDemand::made) {
        asked += 1;
        for ticket in tickets.status() {
            match ticket.expires_in {
                Some(_) => valid += 1,
                None => missing += 1,
            }
        }
    }
    json!({"accounts": asked, "valid": valid, "missing": missing})
}

/// The signed `wx.config` or `wx.agentConfig` values for the page at `url`.
async fn config(app: &Signer<'_>, parts: &Parts, kind: Kind) -> Response<ProxyBody> {
    let name = &app.config.name;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{name}: the JS-SDK config is read with GET"),
        );
    }
    // A suite's corps each have their own agentid: the page names it.
    let asked = crate::forward::query::param(parts.uri.query(), "agentid")
        .and_then(|id| id.parse::<u64>().ok())
        .filter(|&id| id > 0);
    let agentid = match (kind, app.config.kind, app.config.agentid.or(asked)) {
        (Kind::Agent, AppKind::Mp, _) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("{name}: agent-config is for WeCom apps; an mp app signs with /jssdk/config"),
            )
        }
        (Kind::Agent, AppKind::Wecom, None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "{name}: apps.{name}.agentid is not set: add the WeCom app's agentid (e.g. agentid = 1000002) to [apps.{name}] to sign agent configs, or ask with ?agentid="
                ),
            )
        }
        (_, _, agentid) => agentid,
    };
    let url = match page_url(crate::forward::query::param(parts.uri.query(), "url")) {
        Ok(url) => url,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, format!("{name}: {why}")),
    };
    let ticket = match ticket(app, kind).await {
        Ok(ticket) => ticket,
        Err(e) => return unavailable(app, kind, &e),
    };
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(nonce) = nonce() else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name}: the OS gave no randomness for the nonce"),
        );
    };
    let signature = signature(ticket.value(), &nonce, timestamp, url);
    let body = match kind {
        Kind::Agent => json!({
            "corpid": app.appid,
            "agentid": agentid,
            "timestamp": timestamp,
            "nonceStr": nonce,
            "signature": signature,
        }),
        _ => json!({
            "appId": app.appid,
            "timestamp": timestamp,
            "nonceStr": nonce,
            "signature": signature,
        }),
    };
    no_store(json_response(StatusCode::OK, "jssdk", &body))
}

async fn ticket(app: &Signer<'_>, kind: Kind) -> Result<Arc<Ticket>, TicketError> {
    let tickets = (app.tickets)();
    let holder = tickets
        .get(kind)
        .expect("the kinds asked for are the app product's own");
    holder.ticket().await
}

/// The page URL as signed: http(s), without its `#` fragment.
fn page_url(url: Option<String>) -> Result<String, &'static str> {
    let Some(url) = url else {
        return Err("url is missing: ask /jssdk/config?url=<the page's URL, percent-encoded>");
    };
    let page = url.split('#').next().unwrap_or_default();
    let scheme_end = page.find("://").unwrap_or(0);
    let scheme = &page[..scheme_end];
    let host = page[scheme_end..]
        .trim_start_matches("://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if !web || host.is_empty() || page.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url must be the page's http(s) URL, percent-encoded");
    }
    Ok(page.to_owned())
}

/// The JS-SDK signature: SHA-1 of the four fields in WeChat's order, hex.
fn signature(ticket: &str, nonce: &str, timestamp: u64, url: String) -> String {
    let plain = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
    hex(digest(&SHA1_FOR_LEGACY_USE_ONLY, plain.as_bytes()).as_ref())
}

/// 24 hex characters from the OS's randomness.
fn nonce() -> Option<String> {
    let mut bytes = [0u8; 12];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A 503 for a ticket that cannot be had, with WeChat's errcode if it gave
/// one. Never the ticket.
fn unavailable(app: &Signer<'_>, kind: Kind, e: &TicketError) -> Response<ProxyBody> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "error",
        &json!({
            "errcode": e.errcode(),
            "errmsg": format!("{}: no valid {} ticket: {e}", app.config.name, kind.as_str()),
        }),
    )
}

fn refuse(status: StatusCode, errmsg: String) -> Response<ProxyBody> {
    json_response(status, "error", &json!({"errcode": -1, "errmsg": errmsg}))
}

/// Signatures and tickets are for the caller alone, never for a cache.
fn no_store(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_wechats_documented_example() {
        // From WeChat's JS-SDK documentation (appendix 1).
        let sig = signature(
            "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
            "Wm3WZYTPz0wzccnW",
            1414587457,
            "http://mp.weixin.qq.com?params=value".into(),
        );
        assert_eq!(sig, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    }

    #[test]
    fn the_page_url_loses_its_fragment_and_must_be_http() {
        let ok = |u: &str| page_url(Some(u.into()));
        assert_eq!(
            ok("https://a.cn/p?x=1#/route").unwrap(),
            "https://a.cn/p?x=1"
        );
        assert_eq!(ok("HTTP://a.cn").unwrap(), "HTTP://a.cn");
        assert!(ok("ftp://a.cn/").is_err());
        assert!(ok("javascript:alert(1)").is_err());
        assert!(ok("https://").is_err());
        assert!(ok("https://a.cn/ b").is_err());
        assert!(page_url(None).is_err());
    }

    #[test]
    fn nonces_are_long_and_differ() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert!(a.len() >= 16);
        assert_ne!(a, b);
    }
}
