//! Tests of the test harness itself: the fake WeChat server over real TLS (no proxy
//! involved), the plain-HTTP mode with the harness's own client, and the log parsing the
//! proxy harness relies on. If these fail, the proxy tests cannot be trusted.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::fake_wechat::{pattern_byte, AppKind, FakeOptions, FakeWeChat, FetchFailure};
use common::Http;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The test app's appid.
const APPID: &str = "wx0123456789abcdef";
/// The test app's secret, as registered with the fake.
const SECRET: &str = "s3cret";

/// One keep-alive connection to the fake, over TLS when the fake uses it.
struct Conn {
    /// hyper's low-level client handle for this one connection.
    sender: SendRequest<Full<Bytes>>,
    /// `Host` header value.
    host: String,
}

/// An answer read completely.
struct Answer {
    /// HTTP status code.
    status: u16,
    /// Response headers.
    headers: HeaderMap,
    /// The whole body.
    body: Bytes,
}

impl Answer {
    /// The body as JSON, or a panic showing it.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

impl Conn {
    /// Opens a connection; TLS verification uses only the fake's CA and the name `localhost`.
    async fn open(fake: &FakeWeChat) -> Conn {
        let tcp = TcpStream::connect(fake.addr)
            .await
            .expect("connect to the fake");
        let sender = if fake.base_url.starts_with("https://") {
            let connector = TlsConnector::from(fake.tls_client_config());
            let name = ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            handshake(tls).await
        } else {
            handshake(tcp).await
        };
        Conn {
            sender,
            host: format!("localhost:{}", fake.addr.port()),
        }
    }

    /// Sends a request and reads the whole answer; `Err` if the connection fails instead.
    async fn try_send(&mut self, method: &str, path: &str, body: &str) -> Result<Answer, String> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.sender.ready().await.map_err(|e| chain(&e))?;
        let resp = self.sender.send_request(req).await.map_err(|e| chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| chain(&e))?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// [`Conn::try_send`] that panics on connection failure.
    async fn send(&mut self, method: &str, path: &str, body: &str) -> Answer {
        self.try_send(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// An error with its causes: hyper's own message ("connection error") hides the OS error.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// HTTP/1.1 handshake on any stream; the connection runs on its own task.
async fn handshake<I>(io: I) -> SendRequest<Full<Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

/// A fresh connection for one request.
async fn once(fake: &FakeWeChat, method: &str, path: &str, body: &str) -> Answer {
    Conn::open(fake).await.send(method, path, body).await
}

/// Classic fetch for the test app: (token, expires_in).
async fn classic(fake: &FakeWeChat) -> (String, u64) {
    let path = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
    token_of(&once(fake, "GET", &path, "").await)
}

/// Stable fetch for the test app: (token, expires_in).
async fn stable(fake: &FakeWeChat, force_refresh: bool) -> (String, u64) {
    token_of(&stable_answer(fake, force_refresh).await)
}

/// The raw stable answer (for refusals).
async fn stable_answer(fake: &FakeWeChat, force_refresh: bool) -> Answer {
    let body = json!({
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET,
        "force_refresh": force_refresh
    });
    once(fake, "POST", "/cgi-bin/stable_token", &body.to_string()).await
}

/// Token and expires_in out of a successful token answer.
fn token_of(answer: &Answer) -> (String, u64) {
    let v = answer.json();
    let token = v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"))
        .to_string();
    (token, v["expires_in"].as_u64().unwrap())
}

/// The errcode of an API call made with `token` (0 when accepted).
async fn api_errcode(fake: &FakeWeChat, token: &str) -> i64 {
    let answer = once(
        fake,
        "GET",
        &format!("/cgi-bin/user/get?access_token={token}"),
        "",
    )
    .await;
    answer.json()["errcode"].as_i64().unwrap()
}

/// A TLS fake with `opts` and the test app registered as mp.
async fn mp_fake(opts: FakeOptions) -> FakeWeChat {
    let fake = FakeWeChat::start_with(opts).await;
    fake.add_app(AppKind::Mp, APPID, SECRET);
    fake
}

#[tokio::test]
async fn classic_refetch_kills_the_old_token_after_the_grace() {
    let fake = mp_fake(FakeOptions {
        classic_grace: Duration::from_millis(600),
        ..FakeOptions::default()
    })
    .await;
    let (t1, expires_in) = classic(&fake).await;
    assert_eq!(expires_in, 7200);
    assert!(t1.len() >= 40, "token too short: {t1}");
    assert_eq!(api_errcode(&fake, &t1).await, 0);

    let (t2, _) = classic(&fake).await;
    assert_ne!(t1, t2);
    assert_eq!(
        api_errcode(&fake, &t1).await,
        0,
        "old token works during the grace"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        api_errcode(&fake, &t1).await,
        40001,
        "old token dead after the grace"
    );
    assert_eq!(api_errcode(&fake, &t2).await, 0);

    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(fake.token_fetches_for(APPID), 2);
    assert_eq!(fake.issued_tokens(), vec![t1, t2.clone()]);
    assert_eq!(fake.current_token(APPID), Some(t2));
}

#[tokio::test]
async fn stable_normal_mode_shares_a_token_then_renews_inside_the_window() {
    let fake = mp_fake(FakeOptions {
        expires_in: 3,
        stable_window: Duration::from_secs(2),
        ..FakeOptions::default()
    })
    .await;
    let (t1, expires_in) = stable(&fake, false).await;
    assert_eq!(expires_in, 3);
    let (again, left) = stable(&fake, false).await;
    assert_eq!(again, t1, "same token while more than the window is left");
    assert!(
        (1..=3).contains(&left),
        "reports the remaining seconds, got {left}"
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (t2, expires_in) = stable(&fake, false).await;
    assert_ne!(t2, t1, "a new token inside the window");
    assert_eq!(expires_in, 3);
    assert_eq!(
        api_errcode(&fake, &t1).await,
        0,
        "the old one works until its expiry"
    );

    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(api_errcode(&fake, &t1).await, 42001, "then it expires");
    assert_eq!(api_errcode(&fake, &t2).await, 0);
}

#[tokio::test]
async fn force_refresh_revokes_at_once_and_respects_the_minimum_interval() {
    let fake = mp_fake(FakeOptions {
        force_min_interval: Duration::from_secs(60),
        ..FakeOptions::default()
    })
    .await;
    let (t1, _) = stable(&fake, false).await;
    let (t2, expires_in) = stable(&fake, true).await;
    assert_ne!(t1, t2);
    assert_eq!(expires_in, 7200);
    assert_eq!(api_errcode(&fake, &t1).await, 40001);
    assert_eq!(api_errcode(&fake, &t2).await, 0);
    assert_eq!(
        stable(&fake, false).await.0,
        t2,
        "normal mode now shares the new token"
    );

    let refused = stable_answer(&fake, true).await.json();
    assert_eq!(refused["errcode"], 45011, "{refused}");
    assert_eq!(
        api_errcode(&fake, &t2).await,
        0,
        "a refused force keeps the token"
    );
    assert_eq!(fake.force_refreshes(), 2);
    assert_eq!(fake.token_fetches(), 4);
}

#[tokio::test]
async fn revoke_kills_every_token_and_the_next_fetch_issues_a_new_one() {
    let fake = mp_fake(FakeOptions::default()).await;
    let (classic_token, _) = classic(&fake).await;
    let (stable_token, _) = stable(&fake, false).await;
    fake.revoke(APPID);
    assert_eq!(fake.current_token(APPID), None);
    assert_eq!(api_errcode(&fake, &classic_token).await, 40001);
    assert_eq!(api_errcode(&fake, &stable_token).await, 40001);

    let (new_stable, _) = stable(&fake, false).await;
    assert_ne!(new_stable, stable_token);
    assert_eq!(api_errcode(&fake, &new_stable).await, 0);
    let (new_classic, _) = classic(&fake).await;
    assert_eq!(api_errcode(&fake, &new_classic).await, 0);
}

#[tokio::test]
async fn wecom_shares_its_token_and_answers_with_wecom_codes() {
    let fake = FakeWeChat::start().await;
    fake.add_app(AppKind::WeCom, "wwcorp", "corpsecret");
    let gettoken = |secret: &str, corpid: &str| {
        format!("/cgi-bin/gettoken?corpid={corpid}&corpsecret={secret}")
    };
    let first = once(&fake, "GET", &gettoken("corpsecret", "wwcorp"), "")
        .await
        .json();
    assert_eq!(first["errcode"], 0);
    assert_eq!(first["errmsg"], "ok");
    let token = first["access_token"].as_str().unwrap().to_string();
    let second = once(&fake, "GET", &gettoken("corpsecret", "wwcorp"), "")
        .await
        .json();
    assert_eq!(
        second["access_token"],
        token.as_str(),
        "same token while valid"
    );

    let wrong = once(&fake, "GET", &gettoken("nope", "wwcorp"), "")
        .await
        .json();
    assert_eq!(wrong["errcode"], 40001, "WeCom's wrong-secret code");
    let unknown = once(&fake, "GET", &gettoken("corpsecret", "wwother"), "")
        .await
        .json();
    assert_eq!(unknown["errcode"], 40013);

    fake.revoke("wwcorp");
    assert_eq!(api_errcode(&fake, &token).await, 40014);
    assert_eq!(api_errcode(&fake, "never-issued").await, 40014);
    let third = once(&fake, "GET", &gettoken("corpsecret", "wwcorp"), "")
        .await
        .json();
    assert_ne!(third["access_token"], token.as_str());
    assert_eq!(fake.token_fetches_for("wwcorp"), 4);
}

#[tokio::test]
async fn invalidate_in_place_needs_a_force_refresh() {
    let fake = mp_fake(FakeOptions::default()).await;
    let (t1, _) = stable(&fake, false).await;
    fake.invalidate_in_place(APPID);
    assert_eq!(api_errcode(&fake, &t1).await, 40001);
    assert_eq!(
        stable(&fake, false).await.0,
        t1,
        "normal mode keeps the dead token"
    );
    assert_eq!(fake.current_token(APPID), Some(t1.clone()));
    let (t2, _) = stable(&fake, true).await;
    assert_ne!(t2, t1);
    assert_eq!(api_errcode(&fake, &t2).await, 0);
}

#[tokio::test]
async fn credentials_are_checked_and_secrets_can_rotate() {
    let fake = mp_fake(FakeOptions::default()).await;
    let path = |appid: &str, secret: &str| {
        format!("/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}")
    };
    let wrong = once(&fake, "GET", &path(APPID, "wrong"), "").await.json();
    assert_eq!(wrong["errcode"], 40125);
    let unknown = once(&fake, "GET", &path("wxunknown", SECRET), "")
        .await
        .json();
    assert_eq!(unknown["errcode"], 40013);
    assert_eq!(fake.token_fetches_for("wxunknown"), 1);

    fake.set_secret(APPID, "rotated");
    let old = once(&fake, "GET", &path(APPID, SECRET), "").await.json();
    assert_eq!(old["errcode"], 40125);
    let new = once(&fake, "GET", &path(APPID, "rotated"), "").await.json();
    assert!(new["access_token"].is_string(), "{new}");
    assert_eq!(fake.token_fetches(), 4);
    assert!(
        fake.requests().is_empty(),
        "token calls are not API requests"
    );
}

#[tokio::test]
async fn each_fetch_failure_fails_every_token_endpoint_until_cleared() {
    let fake = mp_fake(FakeOptions::default()).await;
    let whitelist = "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist rid: 1234";
    fake.set_fetch_failure(Some(FetchFailure::Errcode(40164, whitelist.into())));
    let answer = stable_answer(&fake, false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json(),
        json!({"errcode": 40164, "errmsg": whitelist})
    );

    fake.set_fetch_failure(Some(FetchFailure::Http500));
    let path = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
    let answer = once(&fake, "GET", &path, "").await;
    assert_eq!(answer.status, 500);
    assert_eq!(&answer.body[..], b"internal error");

    fake.set_fetch_failure(Some(FetchFailure::NotJson));
    let answer = once(&fake, "GET", "/cgi-bin/gettoken?corpid=a&corpsecret=b", "").await;
    assert_eq!(answer.status, 200);
    assert!(answer.header("content-type").starts_with("text/html"));
    assert_eq!(&answer.body[..], b"<html>gateway</html>");

    fake.set_fetch_failure(Some(FetchFailure::Hang));
    let mut conn = Conn::open(&fake).await;
    let hung = tokio::time::timeout(Duration::from_millis(500), conn.send("GET", &path, "")).await;
    assert!(hung.is_err(), "a hung fetch gets no answer");

    fake.set_fetch_failure(Some(FetchFailure::Reset));
    let reset = Conn::open(&fake).await.try_send("GET", &path, "").await;
    let error = reset.err().expect("a reset fetch gets no answer");
    assert!(error.contains("reset"), "an RST, not a close: {error}");

    fake.set_fetch_failure(None);
    let (token, _) = classic(&fake).await;
    assert_eq!(api_errcode(&fake, &token).await, 0);
    assert_eq!(fake.token_fetches(), 6);
}

#[tokio::test]
async fn api_calls_are_checked_recorded_and_echoed() {
    let fake = mp_fake(FakeOptions::default()).await;
    let (token, _) = classic(&fake).await;

    let missing = once(&fake, "GET", "/cgi-bin/user/get?next_openid=", "").await;
    assert_eq!(missing.header("content-type"), "text/plain");
    assert_eq!(missing.json()["errcode"], 41001);

    let doubled = format!("/cgi-bin/user/get?access_token={token}&access_token={token}");
    assert_eq!(
        once(&fake, "GET", &doubled, "").await.json()["errcode"],
        40001
    );

    let query = format!("access_token={token}&a=%2F+x&b");
    let ok = once(
        &fake,
        "POST",
        &format!("/cgi-bin/message/send?{query}"),
        "{\"x\":1}",
    )
    .await;
    assert_eq!(
        ok.header("content-type"),
        "application/json; encoding=utf-8"
    );
    assert_eq!(
        ok.json(),
        json!({"errcode": 0, "errmsg": "ok", "path": "/cgi-bin/message/send",
               "method": "POST", "body_len": 7})
    );

    let recorded = fake.requests();
    assert_eq!(recorded.len(), 3);
    assert!(!recorded[0].token_ok);
    assert_eq!(
        recorded[1].access_tokens(),
        vec![token.clone(), token.clone()]
    );
    assert!(!recorded[1].token_ok);
    let post = &recorded[2];
    assert!(post.token_ok);
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/cgi-bin/message/send");
    assert_eq!(
        post.query.as_deref(),
        Some(query.as_str()),
        "raw query, byte for byte"
    );
    assert_eq!(&post.body[..], b"{\"x\":1}");
    assert_eq!(
        post.headers["host"],
        format!("localhost:{}", fake.addr.port()).as_str()
    );
}

#[tokio::test]
async fn special_paths_answer_like_their_real_counterparts() {
    let fake = mp_fake(FakeOptions::default()).await;
    let (token, _) = classic(&fake).await;
    let mut conn = Conn::open(&fake).await;

    let code = conn
        .send(
            "POST",
            &format!("/wxa/getwxacodeunlimit?access_token={token}"),
            "{}",
        )
        .await;
    assert_eq!(code.header("content-type"), "image/jpeg");
    assert_eq!(code.header("content-length"), "102400");
    assert_eq!(code.body.len(), 100 * 1024);
    assert_eq!(code.body[0], b'{');

    let big = conn
        .send(
            "GET",
            &format!("/test/big_json?size=70000&access_token={token}"),
            "",
        )
        .await;
    assert_eq!(big.header("content-type"), "application/json");
    assert_eq!(big.body.len(), 70000);
    assert_eq!(big.json()["errcode"], 40001);

    let started = std::time::Instant::now();
    let slow = conn
        .send(
            "GET",
            &format!("/test/slow?ms=300&access_token={token}"),
            "",
        )
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(slow.json()["errcode"], 0);

    let broken = conn
        .try_send(
            "GET",
            &format!("/test/reset_mid_body?access_token={token}"),
            "",
        )
        .await;
    assert!(
        broken.is_err(),
        "a body cut short is an error for the client"
    );
}

#[tokio::test]
async fn media_get_streams_exactly_the_requested_bytes() {
    let fake = mp_fake(FakeOptions::default()).await;
    let (token, _) = classic(&fake).await;
    let size: u64 = 8 * 1024 * 1024 + 3;
    let mut conn = Conn::open(&fake).await;
    let req = Request::get(format!(
        "/cgi-bin/media/get?media_id=m&size={size}&access_token={token}"
    ))
    .header("host", &conn.host)
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = conn.sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"x.bin\""
    );
    assert_eq!(resp.headers()["content-length"], size.to_string().as_str());
    let mut body = resp.into_body();
    let (mut len, mut frames) = (0u64, 0usize);
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(
            data.iter().zip(len..).all(|(b, i)| *b == pattern_byte(i)),
            "pattern broken in the chunk at {len}"
        );
        len += data.len() as u64;
        frames += 1;
    }
    assert_eq!(len, size);
    assert!(frames > 1, "streamed in several frames");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let fake = mp_fake(FakeOptions::default()).await;
    let path = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
    let mut conn = Conn::open(&fake).await;
    for _ in 0..5 {
        assert_eq!(conn.send("GET", &path, "").await.status, 200);
    }
    assert_eq!(fake.connections(), 1);
    Conn::open(&fake).await.send("GET", &path, "").await;
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn api_delay_and_short_token_lifetime() {
    let fake = mp_fake(FakeOptions {
        token_lifetime: Duration::from_millis(400),
        ..FakeOptions::default()
    })
    .await;
    let (token, expires_in) = classic(&fake).await;
    assert_eq!(
        expires_in, 7200,
        "reports expires_in, not the real lifetime"
    );
    fake.set_api_delay(Duration::from_millis(250));
    let started = std::time::Instant::now();
    assert_eq!(api_errcode(&fake, &token).await, 0, "checked on arrival");
    assert!(started.elapsed() >= Duration::from_millis(250));
    fake.set_api_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api_errcode(&fake, &token).await, 42001);
}

#[tokio::test]
async fn plain_http_mode_with_the_harness_client() {
    let fake = mp_fake(FakeOptions {
        tls: false,
        ..FakeOptions::default()
    })
    .await;
    assert_eq!(
        fake.base_url,
        format!("http://127.0.0.1:{}", fake.addr.port())
    );
    let http = Http::new();
    let body = json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET});
    let answer = http
        .post(
            &fake.url("/cgi-bin/stable_token"),
            "application/json",
            body.to_string(),
        )
        .await;
    let token = answer.json()["access_token"].as_str().unwrap().to_string();

    let ok = http
        .get(&fake.url(&format!("/sns/x?access_token={token}")))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["path"], "/sns/x");

    let media = http
        .download(&fake.url(&format!(
            "/cgi-bin/media/get?size=1000003&access_token={token}"
        )))
        .await;
    assert_eq!((media.len, media.first_mismatch), (1_000_003, None));
    assert!(media.body_error.is_none());

    let broken = http
        .try_send(
            Request::get(fake.url(&format!("/test/reset_mid_body?access_token={token}")))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .expect("the head arrives");
    assert!(broken.body_error.is_some());
    assert!(broken.body.len() < 1024 * 1024);
    assert_eq!(
        fake.connections(),
        1,
        "the harness client keeps connections alive"
    );
}

#[tokio::test]
async fn dropping_the_fake_stops_it_and_removes_the_ca_file() {
    let fake = FakeWeChat::start().await;
    let (addr, ca_file) = (fake.addr, fake.ca_file.clone());
    let pem = std::fs::read_to_string(&ca_file).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    drop(fake);
    assert!(!ca_file.exists());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn proxy_listening_lines_are_parsed() {
    let lines = [
        "2026-11-21T03:40:00.1Z  INFO wechat_token_proxy::server: starting".to_string(),
        "2026-11-21T03:40:00.1Z  INFO wechat_token_proxy::server: listening listener=proxy addr=127.0.0.1:41234".to_string(),
        "\u{1b}[2m2026\u{1b}[0m INFO listening listener=\"admin\" addr=\"127.0.0.1:41235\"".to_string(),
    ];
    let proxy = common::proxy::listening_addr(&lines, "proxy");
    let admin = common::proxy::listening_addr(&lines, "admin");
    assert_eq!(proxy, Some("127.0.0.1:41234".parse().unwrap()));
    assert_eq!(admin, Some("127.0.0.1:41235".parse().unwrap()));
    assert_eq!(common::proxy::listening_addr(&lines[..1], "proxy"), None);
}
