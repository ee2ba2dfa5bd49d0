//! One route table on one normal form of the path: another spelling of a path reaches what
//! that path names (or is refused), never WeChat's token endpoints raw; answers that can hold
//! credentials are scrubbed by field, at any size, however their path is spelled.

mod common;

use common::fake_wechat::FakeWeChat;
use common::setup::{platform, Harness, MP_APPID};

const PLACEHOLDER: &str = "WECHAT_TOKEN_PROXY_PLACEHOLDER";

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_in_another_spelling_is_answered_with_the_placeholder() {
    let h = Harness::mp("stable").await;

    for path in [
        "/cgi-bin//stable_token",
        "/cgi-bin/%73table_token",
        "/cgi-bin/x/../token/",
        "/CGI-BIN/Token",
        "//cgi-bin/./token",
    ] {
        let r = h.http.get(&h.url(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["access_token"], PLACEHOLDER, "{path}");
    }
    assert_eq!(h.fake.token_fetches(), 1, "only the proxy's own fetch");
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_spelling_of_an_api_path_is_forwarded_in_normal_form() {
    let h = Harness::mp("stable").await;

    let r = h
        .http
        .get(&h.url("//cgi-bin/./user//info/?openid=o1"))
        .await;

    r.assert_ok();
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/cgi-bin/user/info");
    assert!(seen[0].token_ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_servers_read_differently_is_refused_with_json_and_not_forwarded() {
    let h = Harness::mp("stable").await;

    for path in [
        "/cgi-bin%2Fuser/info",
        "/cgi-bin/user/info;jsessionid=1",
        "/cgi-bin/user/%2e%2e/%2e%2e/%2e%2e/x",
        "/cgi-bin/user/%zz",
    ] {
        let r = h.http.get(&h.url(path)).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["errcode"], -1, "{path}");
        assert!(r.json()["errmsg"].as_str().unwrap().contains("path"));
    }
    assert!(h.fake.requests().is_empty(), "{:?}", h.fake.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn rid_get_is_scrubbed_at_any_size_and_on_every_spelling() {
    let h = Harness::mp("stable").await;
    let token = h.fake.current_token(MP_APPID).unwrap();

    // Over the 64 KiB the proxy reads of other answers; and two other spellings.
    for path in [
        "/cgi-bin/openapi/rid/get?pad=200000",
        "/cgi-bin/openapi/rid/get/",
        "//cgi-bin/openapi//rid/get",
    ] {
        h.http
            .get(&h.url("/cgi-bin/user/info?openid=o1"))
            .await
            .assert_ok();
        let r = h
            .http
            .post(&h.url(path), "application/json", r#"{"rid":"1-2-3"}"#)
            .await;

        r.assert_ok();
        let text = r.text();
        assert!(!text.contains(&token), "{path}: the live token came back");
        let url = r.json()["request"]["request_url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            url.contains(&format!("access_token={PLACEHOLDER}")),
            "{path}: {url}"
        );
        if let Some(len) = r.header("content-length") {
            assert_eq!(len, r.body.len().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_token_endpoint_in_another_spelling_never_reaches_wechat() {
    let fake = FakeWeChat::start().await;
    fake.add_authorizer("wx00000000000000a1", "REFRESH-A");
    let (proxy, http) = platform(&fake).await;

    for path in [
        "/saas/cgi-bin/component/api%5Fauthorizer_token",
        "/saas/cgi-bin/component//api_authorizer_token",
        "/saas/cgi-bin/component/api_authorizer_token/",
    ] {
        let r = http
            .post(
                &format!("{}{path}", proxy.url),
                "application/json",
                r#"{"authorizer_appid":"wx00000000000000a1","authorizer_refresh_token":"REFRESH-A"}"#,
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["authorizer_access_token"], PLACEHOLDER, "{path}");
    }
    assert_eq!(fake.authorizer_fetches("wx00000000000000a1"), 0);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_api_answer_loses_every_credential_field() {
    let fake = FakeWeChat::start().await;
    fake.add_authorizer("wx00000000000000a1", "REFRESH-A");
    let (proxy, http) = platform(&fake).await;

    let r = http
        .post(
            &format!(
                "{}/saas/cgi-bin/component/api_get_authorizer_list",
                proxy.url
            ),
            "application/json",
            r#"{"offset":0,"count":500}"#,
        )
        .await;

    assert_eq!(r.status, 200, "{}", r.text());
    let json = r.json();
    assert_eq!(json["list"][0]["authorizer_appid"], "wx00000000000000a1");
    assert_eq!(json["list"][0]["refresh_token"], PLACEHOLDER);
    assert!(!r.text().contains("REFRESH-A"), "{}", r.text());
}
