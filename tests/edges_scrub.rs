//! No answer the proxy returns holds a token it injected: not in a header, not in a body
//! it inspects, not in `rid/get`'s record of an earlier call.

mod common;

use common::setup::{Harness, MP_APPID};
use common::Resp;

/// Every token the fake ever issued that shows up anywhere in `r`.
fn leaked(h: &Harness, r: &Resp) -> Vec<String> {
    let mut text = String::from_utf8_lossy(&r.body).into_owned();
    for (name, value) in &r.headers {
        text.push_str(&format!(
            "\n{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    h.fake
        .issued_tokens()
        .into_iter()
        .filter(|t| text.contains(t.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_echoed_in_headers_and_body_is_replaced() {
    let h = Harness::mp("stable").await;

    let r = h.http.get(&h.url("/test/echo_token")).await;

    r.assert_ok();
    assert!(
        h.fake.requests()[0].token_ok,
        "the real token went upstream"
    );
    assert_eq!(leaked(&h, &r), Vec::<String>::new(), "{r:?}");
    // The answer is otherwise intact, and its length matches what is sent.
    let json = r.json();
    assert_eq!(json["seen"], "WECHAT_TOKEN_PROXY_PLACEHOLDER");
    let location = r.header("location").expect("Location kept");
    assert!(
        location.ends_with("access_token=WECHAT_TOKEN_PROXY_PLACEHOLDER&a=1"),
        "{location}"
    );
    assert!(r.header("set-cookie").is_some());
    if let Some(len) = r.header("content-length") {
        assert_eq!(len, r.body.len().to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_a_retry_brought_is_replaced_too() {
    let h = Harness::mp("stable").await;
    let first = h.fake.current_token(MP_APPID).unwrap();
    h.fake.invalidate_in_place(MP_APPID);

    let r = h
        .http
        .post(&h.url("/test/echo_token"), "application/json", "{}")
        .await;

    r.assert_ok();
    let second = h.fake.current_token(MP_APPID).unwrap();
    assert_ne!(first, second, "the proxy retried with a new token");
    assert_eq!(leaked(&h, &r), Vec::<String>::new(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rid_get_never_hands_back_a_token() {
    let h = Harness::mp("classic").await;

    let call = h
        .http
        .get(&h.url("/cgi-bin/user/info?openid=o1&lang=zh_CN"))
        .await;
    call.assert_ok();
    // rid/get's first attempt fails with the old token and is retried with a new one; the
    // fake's log holds the first attempt, so the record carries the replaced token.
    h.fake.revoke(MP_APPID);
    let r = h
        .http
        .post(
            &h.url("/cgi-bin/openapi/rid/get?x=1"),
            "application/json",
            r#"{"rid":"6583-1"}"#,
        )
        .await;

    r.assert_ok();
    assert_eq!(h.fake.issued_tokens().len(), 2);
    assert_eq!(leaked(&h, &r), Vec::<String>::new(), "{r:?}");
    let url = r.json()["request"]["request_url"]
        .as_str()
        .unwrap()
        .to_owned();
    // The rest of the record is still there for debugging.
    assert!(url.starts_with("x=1&"), "{url}");
    assert!(
        url.contains("access_token=WECHAT_TOKEN_PROXY_PLACEHOLDER"),
        "{url}"
    );
}
