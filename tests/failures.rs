//! When WeChat refuses or fails: clear 503/502/504 JSON at once, backoff
//! instead of a fetch loop, the still-valid token kept in use, and recovery
//! by itself.

mod common;

use std::time::Duration;

use common::fake_wechat::{FakeOptions, FetchFailure};
use common::setup::{ConfigBuilder, Harness};

const WHITELIST_MSG: &str = "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist rid: 6543";

/// A proxy whose every token fetch fails with `failure` from the start.
async fn refused_from_the_start(failure: FetchFailure) -> Harness {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    fake.set_fetch_failure(Some(failure));
    let config = ConfigBuilder::new(&fake).mp("stable");
    Harness::start_unready(fake, config)
}

/// Checks the 503 a request gets while fetches fail, then heals the fake and
/// checks the proxy recovers by itself.
async fn answers_503_then_recovers(h: &Harness, errcode: i64, says: &str) {
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    let body = r.json();
    assert_eq!(body["errcode"], errcode, "{body}");
    let msg = body["errmsg"].as_str().unwrap();
    assert!(msg.starts_with("mp: "), "{msg}");
    assert!(msg.contains(says), "{msg:?} should mention {says:?}");

    let ready = h.http.get(&h.admin("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["apps"][0]["app"], "mp");

    h.fake.set_fetch_failure(None);
    h.wait_ready().await;
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    r.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whitelist_refusal_is_a_503_naming_the_app_and_the_ip_and_backs_off() {
    let h = refused_from_the_start(FetchFailure::Errcode(40164, WHITELIST_MSG.into())).await;

    // Requests during the backoff are answered from the last error, not by
    // new fetches.
    for _ in 0..20 {
        let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
        assert_eq!(r.status, 503);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fetches = h.fake.token_fetches();
    // Backoff 200 ms doubling to 1 s (±20 %): at most 5 attempts in ~1.6 s.
    assert!(
        (2..=6).contains(&fetches),
        "{fetches} fetches: a loop, or no retry at all"
    );

    answers_503_then_recovers(&h, 40164, "invalid ip 1.2.3.4").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_reported_as_such() {
    let h = refused_from_the_start(FetchFailure::Errcode(40125, "invalid appsecret".into())).await;
    answers_503_then_recovers(&h, 40125, "the AppSecret is wrong").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_used_up_daily_quota_is_reported() {
    let h = refused_from_the_start(FetchFailure::Errcode(
        45009,
        "reach max api daily quota limit".into(),
    ))
    .await;
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!((r.status, r.json()["errcode"].as_i64()), (503, Some(45009)));
    assert!(r.text().contains("daily token quota"), "{}", r.text());
    // 45009 demands a long wait (10 min): no second attempt comes soon.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.fake.token_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn system_busy_is_retried_with_backoff() {
    let h = refused_from_the_start(FetchFailure::Errcode(-1, "system error".into())).await;
    answers_503_then_recovers(&h, -1, "system error").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_500_from_the_token_endpoint_is_a_503() {
    let h = refused_from_the_start(FetchFailure::Http500).await;
    answers_503_then_recovers(&h, -1, "HTTP 500").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_answer_that_is_not_json_is_a_503() {
    let h = refused_from_the_start(FetchFailure::NotJson).await;
    answers_503_then_recovers(&h, -1, "not JSON").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_token_connection_is_a_503() {
    let h = refused_from_the_start(FetchFailure::Reset).await;
    answers_503_then_recovers(&h, -1, "cannot reach the token endpoint").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_token_endpoint_times_out_into_a_503() {
    let h = refused_from_the_start(FetchFailure::Hang).await;
    answers_503_then_recovers(&h, -1, "timed out after 2000 ms").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_still_valid_token_keeps_serving_while_fetches_fail() {
    let h = Harness::mp("stable").await;
    let token = h.fake.current_token(common::setup::MP_APPID).unwrap();
    h.fake.set_fetch_failure(Some(FetchFailure::Http500));

    // A token error makes the proxy fetch; the fetch fails.
    let r = h.http.get(&h.url("/test/errcode?code=40001")).await;
    assert_eq!((r.status, r.json()["errcode"].as_i64()), (503, Some(-1)));
    assert_eq!(h.fake.token_fetches(), 2);

    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    r.assert_ok();
    assert_eq!(h.fake.requests().last().unwrap().access_tokens(), [token]);
    assert_eq!(h.http.get(&h.admin("/readyz")).await.status, 200);
    let apps = h.http.get(&h.admin("/apps")).await.json();
    assert!(apps[0]["last_error"]["errmsg"]
        .as_str()
        .unwrap()
        .contains("HTTP 500"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_502() {
    let Harness { fake, proxy, http } = Harness::mp("stable").await;
    drop(fake);

    let r = http.get(&format!("{}/cgi-bin/user/info", proxy.url)).await;

    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
    assert!(msg.starts_with("mp: cannot reach WeChat"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_is_a_504_and_the_next_call_works() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .upstream_line("request_timeout_ms = 300");
    let h = Harness::start(fake, config).await;

    let r = h.http.get(&h.url("/test/slow?ms=3000")).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        r.json()["errmsg"],
        "mp: WeChat did not answer within 300 ms"
    );

    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_in_the_middle_of_a_body_breaks_that_answer_only() {
    let h = Harness::mp("stable").await;

    let broken = h.http.try_send(get(&h.url("/test/reset_mid_body"))).await;
    // Either no head arrived or the body broke off: never a whole answer.
    if let Ok(r) = broken {
        assert!(
            r.body_error.is_some(),
            "a broken body arrived whole: {}",
            r.status
        );
    }

    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.status, 200);
}

fn get(url: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(url).body(Default::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_of_range_expires_in_is_a_clear_fetch_error_never_a_panic() {
    let h = refused_from_the_start(FetchFailure::Body(
        r#"{"access_token":"T-forever","expires_in":18446744073709551615}"#.into(),
    ))
    .await;
    answers_503_then_recovers(&h, -1, "expires_in 18446744073709551615").await;
    for line in h.proxy.logs() {
        assert!(!line.contains("panicked"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newline_in_wechats_errmsg_cannot_forge_a_log_line() {
    let forged = "2026-01-01T00:00:00.000000Z  INFO wechat_token_proxy::token: token refreshed app=\"mp\" result=\"ok\"";
    let h = refused_from_the_start(FetchFailure::Errcode(
        40164,
        format!("{WHITELIST_MSG}\n{forged}\r\n{forged}"),
    ))
    .await;
    let failed = h.proxy.wait_for_log("token refresh failed").await;
    assert!(failed.contains(r"\n2026-01-01T00:00:00"), "{failed}");
    for line in h.proxy.logs() {
        assert!(
            !line.contains("2026-01-01T00:00:00") || line.contains("token refresh failed"),
            "a forged line: {line}"
        );
    }
}
