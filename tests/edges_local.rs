//! Requests the proxy answers itself and never forwards: `CONNECT`, absolute-form targets
//! naming another host, and anything carrying an AppSecret.

mod common;

use common::fake_wechat::AppKind;
use common::raw::RawConn;
use common::setup::{ConfigBuilder, Harness, CORP_ID, SECRET};
use common::Proxy;

/// Every issued token and the AppSecret: none may appear in the proxy's log.
fn secrets_in_log(h: &Harness) -> Vec<String> {
    let mut secrets = h.fake.issued_tokens();
    secrets.push(SECRET.to_owned());
    let logs = h.proxy.logs().join("\n");
    secrets.retain(|s| logs.contains(s.as_str()));
    secrets
}

async fn raw(h: &Harness, request: &str) -> common::raw::RawResponse {
    let mut conn = RawConn::connect(h.proxy.addr).await;
    conn.send(request.as_bytes()).await.unwrap();
    conn.read_response().await
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_is_answered_405_and_never_forwarded() {
    let h = Harness::mp("stable").await;

    let r = raw(
        &h,
        "CONNECT api.weixin.qq.com:443 HTTP/1.1\r\nHost: api.weixin.qq.com:443\r\n\r\n",
    )
    .await;

    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
    assert!(msg.contains("base URL"), "{msg}");
    assert!(h.fake.requests().is_empty(), "{:?}", h.fake.requests());
    // The proxy keeps serving, and logged no token at the default level.
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
    assert_eq!(secrets_in_log(&h), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_targets_naming_another_host_are_refused() {
    let h = Harness::mp("stable").await;

    for (target, host) in [
        (
            "http://api.mch.weixin.qq.com/pay/orderquery",
            "api.mch.weixin.qq.com",
        ),
        ("http://evil.example/cgi-bin/user/info?x=1", "evil.example"),
        (
            "https://evil.example:8443/cgi-bin/user/info",
            "evil.example",
        ),
    ] {
        let r = raw(
            &h,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .await;
        assert!((400..500).contains(&r.status), "{target}: {r:?}");
        assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
        let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
        assert!(msg.contains(host), "{target}: {msg}");
    }
    assert!(h.fake.requests().is_empty(), "{:?}", h.fake.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_targets_naming_the_apps_host_are_served() {
    let h = Harness::mp("stable").await;

    // What old axios sends behind HTTPS_PROXY; the fake's host is `localhost`.
    let r = raw(
        &h,
        "GET http://localhost/cgi-bin/user/info?openid=o1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;

    assert_eq!(r.status, 200, "{r:?}");
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/cgi-bin/user/info");
    assert!(seen[0].token_ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_targets_naming_wechats_own_hosts_are_served_behind_a_relay() {
    // base_url points elsewhere (here the fake, `localhost`), as behind an egress relay;
    // a client behind HTTPS_PROXY still names WeChat's own host, or a fallback's.
    let fake = Harness::fake_with(Default::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line(r#"fallback_base_urls = ["https://sh.api.weixin.qq.com"]"#);
    let h = Harness::start(fake, config).await;

    for host in [
        "api.weixin.qq.com",
        "API.weixin.qq.com",
        "sh.api.weixin.qq.com",
    ] {
        let r = raw(
            &h,
            &format!(
                "GET http://{host}/cgi-bin/user/info?openid=o1 HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.path == "/cgi-bin/user/info" && r.token_ok));

    // WeCom's host is not an mp app's.
    let r = raw(
        &h,
        "GET http://qyapi.weixin.qq.com/cgi-bin/user/get HTTP/1.1\r\nHost: qyapi.weixin.qq.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(h.fake.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_secret_is_never_forwarded() {
    let fake = Harness::fake_with(Default::default()).await;
    fake.add_app(AppKind::WeCom, CORP_ID, SECRET);
    let config = ConfigBuilder::new(&fake).mp("stable").wecom("work");
    let h = Harness::start(fake, config).await;
    let fetches = h.fake.token_fetches();

    let json = "application/json";
    for (method, path, body) in [
        // A token request of the other app kind.
        (
            "GET",
            "/work/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s3cr3t",
            "",
        ),
        (
            "POST",
            "/work/cgi-bin/stable_token",
            r#"{"appid":"wx1","secret":"s3cr3t"}"#,
        ),
        (
            "GET",
            "/mp/cgi-bin/gettoken?corpid=ww1&corpsecret=s3cr3t",
            "",
        ),
        // The third-party platform's token.
        (
            "POST",
            "/mp/cgi-bin/component/api_component_token",
            r#"{"component_appid":"wx2","component_appsecret":"s3cr3t","component_verify_ticket":"t"}"#,
        ),
        // A secret in the query of any other call, however spelled.
        (
            "GET",
            "/mp/sns/jscode2session?appid=wx1&secret=s3cr3t&js_code=c",
            "",
        ),
        ("GET", "/mp/cgi-bin/user/info?secr%65t=s3cr3t", ""),
        (
            "GET",
            "/work/cgi-bin/user/get?corpsecret=s3cr3t&userid=u",
            "",
        ),
        (
            "GET",
            "/mp/cgi-bin/user/info?component_appsecret=s3cr3t",
            "",
        ),
    ] {
        let request = http::Request::builder()
            .method(method)
            .uri(h.url(path))
            .header("content-type", json)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let r = h.http.send(request).await;
        assert!((400..500).contains(&r.status), "{method} {path}: {r:?}");
        assert!(r.header("x-wechat-token-proxy").is_some(), "{path}");
        assert!(r.json()["errcode"].as_i64().is_some(), "{path}");
        assert!(!r.text().contains("s3cr3t"), "{path}: {}", r.text());
    }
    assert!(h.fake.requests().is_empty(), "{:?}", h.fake.requests());
    assert_eq!(h.fake.token_fetches(), fetches);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_in_the_log_even_at_trace() {
    let fake = Harness::fake_with(Default::default()).await;
    let config = ConfigBuilder::new(&fake).mp("classic");
    let proxy = Proxy::start_with_log(&config.render(), &common::setup::env(), "trace");
    let h = Harness {
        fake,
        proxy,
        http: common::Http::new(),
    };
    h.wait_ready().await;

    h.http
        .get(&h.url("/cgi-bin/user/info?openid=o1"))
        .await
        .assert_ok();
    h.http
        .post(&h.url("/test/echo_token"), "application/json", "{}")
        .await
        .assert_ok();
    h.fake.revoke(common::setup::MP_APPID);
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
    raw(
        &h,
        "CONNECT api.weixin.qq.com:443 HTTP/1.1\r\nHost: api.weixin.qq.com\r\n\r\n",
    )
    .await;
    raw(
        &h,
        "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;

    assert!(h.proxy.logs().len() > 20, "trace logging is on");
    assert_eq!(secrets_in_log(&h), Vec::<String>::new());
}
