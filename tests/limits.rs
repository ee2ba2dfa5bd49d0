//! Limits on what a client may send and hold, each answered properly: oversized heads and
//! bodies, slow heads, idle and stalled connections, too many connections, and a token fetch
//! that hangs.

mod common;

use std::time::Duration;

use common::fake_wechat::FetchFailure;
use common::raw::{get, RawConn};
use common::setup::{env, ConfigBuilder, Harness};
use common::{wait_until, Http, Proxy};

/// A ready proxy with `proxy_lines` added to `[proxy]`.
async fn with_proxy_lines(lines: &[&str]) -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let mut config = ConfigBuilder::new(&fake).mp("stable");
    for line in lines {
        config = config.proxy_line(line);
    }
    Harness::start(fake, config).await
}

/// Like [`with_proxy_lines`], logging at debug level so tests can see why a connection
/// ended.
async fn with_proxy_lines_debug(lines: &[&str]) -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let mut config = ConfigBuilder::new(&fake).mp("stable");
    for line in lines {
        config = config.proxy_line(line);
    }
    let proxy = Proxy::start_with_log(&config.render(), &env(), "info,wechat_token_proxy=debug");
    let h = Harness {
        fake,
        proxy,
        http: Http::new(),
    };
    h.wait_ready().await;
    h
}

async fn still_serves(h: &Harness) {
    let r = Http::new().get(&h.url("/cgi-bin/user/info")).await;
    r.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_the_limit_is_431() {
    let h = with_proxy_lines(&["max_request_header_bytes = 10000"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    let padding = format!("X-Padding: {}\r\n", "a".repeat(12_000));
    conn.send(&get("/cgi-bin/user/info", &padding))
        .await
        .unwrap();

    assert_eq!(conn.read_response().await.status, 431);
    assert!(h.fake.requests().is_empty());
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_body_over_the_limit_is_413_before_a_byte_is_read() {
    let h = with_proxy_lines(&["max_request_body_bytes = 100000"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    conn.send(
        b"POST /cgi-bin/media/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100001\r\n\r\n",
    )
    .await
    .unwrap();

    let r = conn.read_response().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
    assert!(msg.contains("max_request_body_bytes = 100000"), "{msg}");
    assert!(h.fake.requests().is_empty());
    still_serves(&h).await;
}

/// `len` bytes as one chunk of a chunked body, without the final chunk.
fn chunk(len: usize) -> Vec<u8> {
    let mut out = format!("{len:x}\r\n").into_bytes();
    out.resize(out.len() + len, b'x');
    out.extend_from_slice(b"\r\n");
    out
}

const CHUNKED_POST: &[u8] = b"POST /cgi-bin/media/upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_is_413_while_it_is_read() {
    // The limit is below the replay buffer: the body is refused while being buffered.
    let h = with_proxy_lines(&["max_request_body_bytes = 50000"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;
    conn.send(CHUNKED_POST).await.unwrap();
    for _ in 0..6 {
        // 60 000 bytes, never finished: the proxy must not wait for the end.
        let _ = conn.send(&chunk(10_000)).await;
    }

    let r = conn.read_response().await;
    assert_eq!(r.status, 413);
    assert!(h.fake.requests().is_empty());
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_is_413_while_it_streams_to_wechat() {
    // The replay buffer is smaller than the limit: the body streams upstream and the proxy
    // cuts it off at the limit, so WeChat never gets a truncated body as if whole.
    let h = with_proxy_lines(&[
        "max_replay_body_bytes = 10000",
        "max_request_body_bytes = 50000",
    ])
    .await;
    let mut conn = RawConn::connect(h.proxy.addr).await;
    conn.send(CHUNKED_POST).await.unwrap();
    for _ in 0..6 {
        let _ = conn.send(&chunk(10_000)).await;
    }

    let r = conn.read_response().await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["errmsg"]
        .as_str()
        .unwrap()
        .contains("max_request_body_bytes"));
    // The upstream request was aborted, not ended: the fake could not read a whole body.
    for request in h.fake.requests() {
        assert!(
            request.body.is_empty(),
            "WeChat got {} bytes as a whole body",
            request.body.len()
        );
    }
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_within_the_limit_streams_through_whole() {
    let h = with_proxy_lines(&[
        "max_replay_body_bytes = 10000",
        "max_request_body_bytes = 50000",
    ])
    .await;
    let r = h
        .http
        .post(
            &h.url("/cgi-bin/media/upload"),
            "application/octet-stream",
            vec![7u8; 50_000],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 50_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_request_head_is_cut_off_at_the_header_timeout() {
    let h = with_proxy_lines(&["header_read_timeout_ms = 300", "idle_timeout_ms = 600000"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    conn.send(b"GET /cgi-bin/user/info HTTP/1.1\r\nHost: pro")
        .await
        .unwrap();

    let closed = conn.read_until_closed(Duration::from_secs(20)).await;
    assert_eq!(closed, Some(0), "the slow head was not cut off");
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_sends_is_cut_off_at_the_header_timeout() {
    let h = with_proxy_lines(&["header_read_timeout_ms = 300", "idle_timeout_ms = 600000"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    let closed = conn.read_until_closed(Duration::from_secs(20)).await;

    assert_eq!(closed, Some(0), "the silent connection was not cut off");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let h = with_proxy_lines(&["header_read_timeout_ms = 600000", "idle_timeout_ms = 300"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;
    conn.send(&get("/cgi-bin/user/info", "")).await.unwrap();
    assert_eq!(conn.read_response().await.status, 200);

    let closed = conn.read_until_closed(Duration::from_secs(20)).await;

    assert_eq!(closed, Some(0), "the idle connection was not closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    // hyper's own timer would close it after 300 ms; the idle limit is what applies.
    let h = with_proxy_lines(&["header_read_timeout_ms = 300", "idle_timeout_ms = 600000"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;
    conn.send(&get("/cgi-bin/user/info", "")).await.unwrap();
    assert_eq!(conn.read_response().await.status, 200);

    tokio::time::sleep(Duration::from_millis(1200)).await;

    conn.send(&get("/cgi-bin/user/info", "")).await.unwrap();
    assert_eq!(conn.read_response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_a_download_is_cut_off() {
    let h = with_proxy_lines_debug(&["idle_timeout_ms = 500"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;
    let size = 256 * 1024 * 1024;
    conn.send(&get(&format!("/cgi-bin/media/get?size={size}"), ""))
        .await
        .unwrap();

    // Read nothing until the proxy gives up on this client.
    wait_until(
        "the proxy to cut off the client that stopped reading",
        Duration::from_secs(20),
        || h.proxy.has_log("the client read nothing of its answer"),
    )
    .await;
    let received = conn
        .read_until_closed(Duration::from_secs(20))
        .await
        .expect("the connection ends");

    assert!(received < size, "the whole download arrived");
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_stalls_is_408() {
    let h = with_proxy_lines(&["idle_timeout_ms = 500"]).await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    conn.send(b"POST /cgi-bin/message/custom/send HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{\"touser\":")
        .await
        .unwrap();

    let r = conn.read_response().await;
    assert_eq!(r.status, 408);
    assert!(r.json()["errmsg"]
        .as_str()
        .unwrap()
        .contains("did not arrive within 500 ms"));
    assert!(h.fake.requests().is_empty());
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let h = with_proxy_lines(&["max_connections = 2", "header_read_timeout_ms = 600000"]).await;
    let held = [
        RawConn::connect(h.proxy.addr).await,
        RawConn::connect(h.proxy.addr).await,
    ];
    wait_until(
        "the proxy to reach its connection limit",
        Duration::from_secs(10),
        || h.proxy.has_log("connection limit reached"),
    )
    .await;

    // The kernel completes the handshake, but the proxy does not take the connection.
    let mut third = RawConn::connect(h.proxy.addr).await;
    third.send(&get("/cgi-bin/user/info", "")).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_some(1)).await;
    assert!(
        early.is_err(),
        "the third connection was served over the limit"
    );

    drop(held);
    assert_eq!(third.read_response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_on_a_hanging_token_fetch_get_503_when_the_fetch_times_out() {
    let fake = Harness::fake_with(Default::default()).await;
    fake.set_fetch_failure(Some(FetchFailure::Hang));
    let config = ConfigBuilder::new(&fake).mp("stable");
    let h = Harness::start_unready(fake, config);
    // The startup fetch is under way and hangs.
    wait_until("the first token fetch", Duration::from_secs(10), || {
        h.fake.token_fetches() == 1
    })
    .await;

    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let http = h.http.clone();
            let url = h.url("/cgi-bin/user/info");
            tokio::spawn(async move { http.get(&url).await })
        })
        .collect();
    for request in waiting {
        let r = request.await.unwrap();
        assert_eq!(r.status, 503);
        let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
        assert!(msg.contains("timed out after 2000 ms"), "{msg}");
    }
    // Waiting requests share the one fetch instead of starting their own.
    assert_eq!(h.fake.token_fetches(), 1);

    h.fake.set_fetch_failure(None);
    h.wait_ready().await;
    still_serves(&h).await;
}
