//! What WeChat's answer comes to on the way back: never compressed, so a token error behind
//! gzip is seen and retried and a token in the body is scrubbed; the status line's reason
//! is the status code's own, not the upstream's.

mod common;

use common::raw::RawConn;
use common::setup::{Harness, MP_APPID};

#[tokio::test(flavor = "multi_thread")]
async fn a_token_error_a_gzip_client_would_get_is_refreshed_and_retried() {
    let h = Harness::mp("stable").await;
    let first = h.fake.current_token(MP_APPID).unwrap();
    h.fake.invalidate_in_place(MP_APPID);

    let request = http::Request::get(h.url("/cgi-bin/user/info?openid=o1"))
        .header("accept-encoding", "gzip, deflate")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = h.http.send(request).await;

    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none(), "{r:?}");
    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert_ne!(h.fake.current_token(MP_APPID).unwrap(), first);
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 2, "the call, then its retry");
    assert!(seen
        .iter()
        .all(|r| !r.headers.contains_key("accept-encoding")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_echoed_in_an_answer_to_a_gzip_client_is_scrubbed() {
    let h = Harness::mp("stable").await;
    let token = h.fake.current_token(MP_APPID).unwrap();

    let request = http::Request::get(h.url("/test/echo_token"))
        .header("accept-encoding", "gzip")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = h.http.send(request).await;

    assert_eq!(r.status, 200);
    assert!(r.header("content-encoding").is_none(), "{r:?}");
    assert!(!r.text().contains(&token));
    assert_eq!(r.json()["seen"], "WECHAT_TOKEN_PROXY_PLACEHOLDER");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reason_phrase_is_the_status_codes_own() {
    let h = Harness::mp("stable").await;
    let token = h.fake.current_token(MP_APPID).unwrap();
    let mut conn = RawConn::connect(h.proxy.addr).await;

    conn.send(b"GET /test/reason HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = conn.read_response().await;

    let status_line = r.head.lines().next().unwrap();
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert!(!r.head.contains(&token));
}
