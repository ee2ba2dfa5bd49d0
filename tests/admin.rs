//! The admin listener: liveness, readiness, the status page and the
//! "refresh now" entry.

mod common;

use common::fake_wechat::FetchFailure;
use common::setup::{ConfigBuilder, Harness, MP_APPID, SECRET};

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_while_readyz_waits_for_a_token() {
    let fake = Harness::fake_with(Default::default()).await;
    fake.set_fetch_failure(Some(FetchFailure::Http500));
    let config = ConfigBuilder::new(&fake).mp("stable");
    let h = Harness::start_unready(fake, config);

    assert_eq!(h.http.get(&h.admin("/healthz")).await.status, 200);
    let ready = h.http.get(&h.admin("/readyz")).await;
    assert_eq!(ready.status, 503);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["apps"][0]["app"], "mp");

    h.fake.set_fetch_failure(None);
    h.wait_ready().await;
    assert_eq!(h.http.get(&h.admin("/readyz")).await.json()["ready"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_describes_each_app_without_token_or_secret() {
    let h = Harness::mp("classic").await;

    let r = h.http.get(&h.admin("/apps")).await;

    assert_eq!(r.status, 200);
    let apps = r.json();
    let mp = &apps[0];
    assert_eq!(mp["name"], "mp");
    assert_eq!(mp["kind"], "mp");
    assert_eq!(mp["appid"], MP_APPID);
    assert_eq!(mp["token_api"], "classic");
    assert_eq!(mp["token"]["state"], "valid");
    let left = mp["token"]["expires_in_s"].as_u64().unwrap();
    assert!((7100..=7200).contains(&left), "{left}");
    assert!(mp["last_refresh_unix"].as_u64().unwrap() > 1_700_000_000);
    assert!(mp["last_error"].is_null());
    let text = r.text();
    assert!(!text.contains(SECRET));
    for token in h.fake.issued_tokens() {
        assert!(!text.contains(&token), "the status page shows a token");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_now_fetches_once_per_ten_seconds() {
    let h = Harness::mp("classic").await;
    // The startup fetch counts: right after it, the endpoint declines.
    let r = h
        .http
        .post(&h.admin("/apps/mp/refresh"), "application/json", "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["refreshed"], false);
    assert_eq!(h.fake.token_fetches(), 1);

    let unknown = h
        .http
        .post(&h.admin("/apps/nope/refresh"), "application/json", "")
        .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["errmsg"]
        .as_str()
        .unwrap()
        .contains("'nope'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_admin_paths_are_404_json() {
    let h = Harness::mp("stable").await;
    let r = h.http.get(&h.admin("/metricz")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errcode"], -1);
}
