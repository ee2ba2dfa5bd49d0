//! The token quota in sight (`/apps`, the metric) and reset by the operator:
//! `clear-quota` ends a 45009 backoff at once, and a second reset within 60 s
//! is refused without reaching WeChat.

mod common;

use std::time::Duration;

use common::fake_wechat::{FakeOptions, FetchFailure};
use common::setup::{ConfigBuilder, Harness, MP_APPID, SECRET};
use common::wait_until_async;

const USER_INFO: &str = "/cgi-bin/user/info?openid=o1";

#[tokio::test(flavor = "multi_thread")]
async fn the_quota_is_shown_on_apps_and_exported() {
    let h = Harness::mp("stable").await;
    let (http, apps) = (h.http.clone(), h.admin("/apps"));
    wait_until_async("a quota reading", Duration::from_secs(10), || {
        let (http, apps) = (http.clone(), apps.clone());
        async move { http.get(&apps).await.json()[0]["quota"]["remain"].is_u64() }
    })
    .await;
    let app = &h.http.get(&h.admin("/apps")).await.json()[0];
    assert_eq!(app["quota"]["daily_limit"], 2000);
    assert_eq!(app["quota"]["remain"], 1999, "{app}");
    assert_eq!(app["quota_resets"], 0);
    let metrics = h.http.get(&h.admin("/metrics")).await.text();
    assert!(
        metrics.contains("wechat_proxy_token_quota_remaining{app=\"mp\"} 1999"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_quota_ends_a_45009_backoff_and_a_second_reset_within_60_s_is_refused() {
    let h = Harness::mp("classic").await;
    h.fake.set_fetch_failure(Some(FetchFailure::Errcode(
        45009,
        "reach max api daily quota limit".into(),
    )));
    h.fake.revoke(MP_APPID);
    let r = h.http.get(&h.url(USER_INFO)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["errcode"], 45009);
    // The backoff stands: WeChat demands 10 minutes.
    let fetches = h.fake.token_fetches();
    assert_eq!(h.http.get(&h.url(USER_INFO)).await.status, 503);
    assert_eq!(h.fake.token_fetches(), fetches);
    h.proxy.wait_for_log("/apps/mp/clear-quota").await;

    let r = h
        .http
        .post(&h.admin("/apps/mp/clear-quota"), "text/plain", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["errcode"], 0);
    assert_eq!(h.fake.clear_quota_calls(), 1);
    assert!(!r.text().contains(SECRET));
    let (http, url) = (h.http.clone(), h.url(USER_INFO));
    wait_until_async("calls to work again", Duration::from_secs(5), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.json()["errcode"] == 0 }
    })
    .await;

    let again = h
        .http
        .post(&h.admin("/apps/mp/clear-quota"), "text/plain", "")
        .await;
    assert_eq!(again.status, 429, "{}", again.text());
    assert!(again.json()["errmsg"].as_str().unwrap().contains("60 s"));
    assert_eq!(
        h.fake.clear_quota_calls(),
        1,
        "the second reset reached WeChat"
    );
    let app = &h.http.get(&h.admin("/apps")).await.json()[0];
    assert_eq!(app["quota_resets"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_quota_is_refused_with_409_while_the_quota_is_not_spent() {
    let h = Harness::mp("classic").await;
    let r = h
        .http
        .post(&h.admin("/apps/mp/clear-quota"), "text/plain", "")
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let body = r.json();
    assert_eq!(body["errcode"], -1);
    let errmsg = body["errmsg"].as_str().unwrap();
    assert!(errmsg.contains("not used up"), "{errmsg}");
    assert!(
        errmsg.contains("1999 of 2000"),
        "read from quota/get: {errmsg}"
    );
    assert_eq!(h.fake.clear_quota_calls(), 0, "a reset reached WeChat");
    assert_eq!(
        h.http.get(&h.admin("/apps")).await.json()[0]["quota_resets"],
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_shows_the_token_fetches_spent_today() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    // No retry of the refused fetch while the test reads.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .upstream_line("token_retry_min_ms = 60000")
        .upstream_line("token_retry_max_ms = 120000");
    let h = Harness::start(fake, config).await;
    let app = &h.http.get(&h.admin("/apps")).await.json()[0];
    assert_eq!(app["fetches_today"], 1, "{app}");
    // A refused fetch is spent too.
    h.fake.set_fetch_failure(Some(FetchFailure::Errcode(
        40164,
        "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist".into(),
    )));
    h.fake.revoke(MP_APPID);
    assert_eq!(h.http.get(&h.url(USER_INFO)).await.status, 503);
    let app = &h.http.get(&h.admin("/apps")).await.json()[0];
    assert_eq!(h.fake.token_fetches(), 2);
    assert_eq!(app["fetches_today"], 2, "{app}");
}
