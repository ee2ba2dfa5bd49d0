//! Routing, the query and header rewrite, connection reuse, the placeholder
//! token answers, and what is streamed rather than inspected.

mod common;

use bytes::Bytes;
use common::fake_wechat::{AppKind, FakeOptions, FakeWeChat};
use common::setup::{ConfigBuilder, Harness, CORP_ID, MP_APPID, SECRET};
use http::Request;
use http_body_util::Full;

/// An mp app `mp` (the default) and a WeCom app `work` behind one proxy.
async fn two_apps(default_app: Option<&str>) -> Harness {
    let fake = FakeWeChat::start().await;
    fake.add_app(AppKind::Mp, MP_APPID, SECRET);
    fake.add_app(AppKind::WeCom, CORP_ID, SECRET);
    let mut config = ConfigBuilder::new(&fake).mp("stable").wecom("work");
    if let Some(name) = default_app {
        config = config.proxy_line(&format!("default_app = {name:?}"));
    }
    Harness::start(fake, config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn app_prefix_routes_to_that_app_and_other_paths_to_the_default() {
    let h = two_apps(Some("mp")).await;

    let mp = h.http.get(&h.url("/cgi-bin/user/info?openid=o1")).await;
    let work = h.http.get(&h.url("/work/cgi-bin/user/get?userid=u1")).await;
    let prefixed_mp = h.http.get(&h.url("/mp/cgi-bin/user/info?openid=o2")).await;

    for r in [&mp, &work, &prefixed_mp] {
        r.assert_ok();
    }
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].path, "/cgi-bin/user/info");
    assert_eq!(
        seen[0].access_tokens(),
        [h.fake.current_token(MP_APPID).unwrap()]
    );
    assert_eq!(seen[1].path, "/cgi-bin/user/get");
    assert_eq!(
        seen[1].access_tokens(),
        [h.fake.current_token(CORP_ID).unwrap()]
    );
    assert_eq!(seen[2].path, "/cgi-bin/user/info");
    assert_eq!(
        seen[2].query.as_deref().unwrap().split('&').next(),
        Some("openid=o2")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_prefix_without_a_default_app_is_a_404_listing_the_apps() {
    let h = two_apps(None).await;

    let r = h.http.get(&h.url("/nosuch/cgi-bin/user/info")).await;

    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["errcode"], -1);
    let msg = body["errmsg"].as_str().unwrap();
    assert!(
        msg.contains("'nosuch'") && msg.contains("mp, work"),
        "{msg}"
    );
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn query_keeps_every_other_parameter_byte_exact_and_gets_exactly_one_token() {
    let h = Harness::mp("stable").await;

    let q = "b=2&a=%E4%B8%AD%20x&access_token=PLACEHOLDER&flag&z=a%2Bb&access_token=again";
    let r = h
        .http
        .get(&h.url(&format!("/cgi-bin/message/custom/send?{q}")))
        .await;

    assert_eq!(r.status, 200, "{}", r.text());
    let token = h.fake.current_token(MP_APPID).unwrap();
    let seen = &h.fake.requests()[0];
    assert_eq!(
        seen.query.as_deref(),
        Some(format!("b=2&a=%E4%B8%AD%20x&flag&z=a%2Bb&access_token={token}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_with_bytes_a_query_cannot_hold_goes_percent_encoded_and_works() {
    let fake = Harness::fake_with(FakeOptions {
        token_suffix: "+/=&é",
        ..FakeOptions::default()
    })
    .await;
    let config = ConfigBuilder::new(&fake).mp("stable");
    let h = Harness::start(fake, config).await;

    for _ in 0..2 {
        let r = h.http.get(&h.url("/cgi-bin/user/info?openid=o1")).await;
        assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    }

    let token = h.fake.current_token(MP_APPID).unwrap();
    assert!(token.ends_with("+/=&é"), "{token}");
    let encoded = token
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let encoded = encoded.replace('&', "%26").replace('é', "%C3%A9");
    for seen in h.fake.requests() {
        assert!(seen.token_ok);
        assert_eq!(
            seen.query.as_deref(),
            Some(format!("openid=o1&access_token={encoded}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_are_forwarded_with_host_rewritten_and_hop_by_hop_dropped() {
    let h = Harness::mp("stable").await;

    let request = Request::post(h.url("/cgi-bin/message/custom/send"))
        .header("content-type", "application/json")
        .header("x-request-id", "abc-123")
        .header("connection", "keep-alive, x-per-hop")
        .header("x-per-hop", "drop me")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"{\"touser\":\"o1\"}")))
        .unwrap();
    let r = h.http.send(request).await;

    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &h.fake.requests()[0];
    let port = h.fake.addr.port();
    assert_eq!(seen.headers["host"], format!("localhost:{port}").as_str());
    assert_eq!(seen.headers["x-request-id"], "abc-123");
    assert_eq!(seen.headers["content-type"], "application/json");
    for gone in ["x-per-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(seen.method, "POST");
    assert_eq!(&seen.body[..], b"{\"touser\":\"o1\"}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused() {
    let h = Harness::mp("stable").await;

    for i in 0..20 {
        let r = h
            .http
            .get(&h.url(&format!("/cgi-bin/user/info?n={i}")))
            .await;
        assert_eq!(r.status, 200);
    }

    // The startup token fetch and the 20 calls share the pool: one
    // connection, two if the fetch's was not yet back in the pool.
    assert!(
        h.fake.connections() <= 2,
        "{} connections",
        h.fake.connections()
    );
    assert_eq!(h.fake.requests().len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_token_requests_get_a_placeholder_and_never_reach_wechat() {
    let h = two_apps(Some("mp")).await;
    let fetches = h.fake.token_fetches();

    let classic = h
        .http
        .get(&h.url("/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=dummy"))
        .await;
    let stable = h
        .http
        .post(
            &h.url("/cgi-bin/stable_token"),
            "application/json",
            r#"{"grant_type":"client_credential","appid":"wx1","secret":"dummy"}"#,
        )
        .await;
    let wecom = h
        .http
        .get(&h.url("/work/cgi-bin/gettoken?corpid=ww1&corpsecret=dummy"))
        .await;

    for r in [&classic, &stable] {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-wechat-token-proxy"), Some("placeholder"));
        let body = r.json();
        assert_eq!(body["expires_in"], 7200);
        assert!(body.get("errcode").is_none());
        let placeholder = body["access_token"].as_str().unwrap();
        assert!(!h.fake.issued_tokens().iter().any(|t| t == placeholder));
    }
    let body = wecom.json();
    assert_eq!(
        (body["errcode"].as_i64(), body["errmsg"].as_str()),
        (Some(0), Some("ok"))
    );
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        h.fake.token_fetches(),
        fetches,
        "a token request reached WeChat"
    );
    assert!(h.fake.requests().is_empty());

    // An SDK then sends the placeholder back: the real token replaces it.
    let placeholder = classic.json()["access_token"].as_str().unwrap().to_owned();
    let r = h
        .http
        .get(&h.url(&format!("/cgi-bin/user/info?access_token={placeholder}")))
        .await;
    assert_eq!(r.json()["errcode"], 0);
    assert_eq!(
        h.fake.requests()[0].access_tokens(),
        [h.fake.current_token(MP_APPID).unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_media_download_streams_with_bounded_memory() {
    let h = Harness::mp("stable").await;
    let size = 64u64 << 20;

    let d = h
        .http
        .download(&h.url(&format!("/cgi-bin/media/get?media_id=m1&size={size}")))
        .await;

    assert_eq!(d.status, 200);
    assert_eq!(d.body_error, None);
    assert_eq!(d.len, size);
    assert_eq!(d.first_mismatch, None);
    assert!(d.headers.contains_key("content-disposition"));
    let peak_mib = h.proxy.rss_peak_kib() / 1024;
    assert!(
        peak_mib < 40,
        "the proxy's peak RSS was {peak_mib} MiB for a 64 MiB download"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_pass_untouched_even_when_they_start_like_json() {
    let h = Harness::mp("stable").await;
    let fetches = h.fake.token_fetches();

    let r = h
        .http
        .post(
            &h.url("/wxa/getwxacodeunlimit"),
            "application/json",
            r#"{"scene":"a=1"}"#,
        )
        .await;

    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(r.body.len(), 100 * 1024);
    assert_eq!(r.body[0], b'{');
    assert_eq!(h.fake.token_fetches(), fetches);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_larger_than_64_kib_streams_unread() {
    let h = Harness::mp("stable").await;
    let fetches = h.fake.token_fetches();

    // It carries errcode 40001, but the proxy must not read that far.
    let r = h.http.get(&h.url("/test/big_json?size=200000")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 200_000);
    assert!(r.body.starts_with(b"{\"errcode\":40001"));
    assert_eq!(
        h.fake.token_fetches(),
        fetches,
        "a streamed body caused a refresh"
    );
    assert_eq!(h.fake.requests().len(), 1, "a streamed body was retried");
}

/// An SDK's POST token call is answered by the proxy, which has no use for
/// its body; python's http.client sends that body in a write of its own,
/// after the head. Answered before the body came, the connection was
/// closed under the client, which was already reusing it for the next call.
#[tokio::test(flavor = "multi_thread")]
async fn a_placeholder_answered_before_its_body_came_keeps_the_connection() {
    let h = two_apps(Some("mp")).await;
    let body = r#"{"grant_type":"client_credential","appid":"wx1","secret":"dummy"}"#;
    let mut conn = common::raw::RawConn::connect(h.proxy.addr).await;
    let head = format!(
        "POST /cgi-bin/stable_token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes()).await.unwrap();
    // Long enough for an answer that does not wait for the body to be sent.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    conn.send(body.as_bytes()).await.unwrap();
    let first = conn.read_response().await;
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(first.header("x-wechat-token-proxy"), Some("placeholder"));
    assert_ne!(first.header("connection"), Some("close"), "{}", first.head);

    // The same connection serves the next call.
    conn.send(&common::raw::get("/cgi-bin/user/info?openid=o1", ""))
        .await
        .unwrap();
    let second = conn.read_response().await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(h.fake.requests().len(), 1);
}
