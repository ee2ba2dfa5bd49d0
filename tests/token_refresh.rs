//! Token errors: single-flight refresh, one retry with the body replayed,
//! refresh ahead of expiry, and the stable API's force_refresh rule.

mod common;

use std::time::Duration;

use common::fake_wechat::{AppKind, FakeOptions, FakeWeChat};
use common::setup::{ConfigBuilder, Harness, CORP_ID, MP_APPID, SECRET};
use common::wait_until;

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_token_errors_cause_exactly_one_fetch() {
    let h = Harness::mp("classic").await;
    assert_eq!(h.fake.token_fetches(), 1);
    h.fake.revoke(MP_APPID);

    let requests = (0..64).map(|i| {
        let http = h.http.clone();
        let url = h.url(&format!("/cgi-bin/user/info?openid=o{i}"));
        tokio::spawn(async move { http.get(&url).await })
    });
    let answers = futures_join(requests).await;

    for r in &answers {
        r.assert_ok();
    }
    assert_eq!(
        h.fake.token_fetches(),
        2,
        "64 token errors must cause one fetch"
    );
    let fresh = h.fake.current_token(MP_APPID).unwrap();
    let ok = h.fake.requests().into_iter().filter(|r| r.token_ok).count();
    assert_eq!(ok, 64);
    assert!(h
        .fake
        .requests()
        .iter()
        .filter(|r| r.token_ok)
        .all(|r| r.access_tokens() == [fresh.clone()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_requests_meeting_a_revoked_token_cause_exactly_one_fetch() {
    // Client and fake hold a socket per request each.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= 2500,
        "RLIMIT_NOFILE hard limit {limit} is too low for this test"
    );
    let h = Harness::mp("classic").await;
    h.fake.revoke(MP_APPID);
    // Slow answers keep all thousand in flight together.
    h.fake.set_api_delay(Duration::from_millis(300));

    let requests = (0..1000).map(|i| {
        let http = h.http.clone();
        let url = h.url(&format!("/cgi-bin/user/info?openid=o{i}"));
        tokio::spawn(async move { http.get(&url).await })
    });
    let answers = futures_join(requests).await;

    let failed: Vec<_> = answers
        .iter()
        .filter(|r| r.status != 200 || r.json()["errcode"] != 0)
        .map(|r| r.text())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        h.fake.token_fetches(),
        2,
        "startup plus exactly one refresh"
    );
    assert_eq!(
        h.fake.requests().iter().filter(|r| r.token_ok).count(),
        1000
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_replays_the_request_body_byte_for_byte() {
    let h = Harness::mp("stable").await;
    let old = h.fake.current_token(MP_APPID).unwrap();
    h.fake.revoke(MP_APPID);
    let body: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();

    let r = h
        .http
        .post(
            &h.url("/cgi-bin/media/upload?type=image"),
            "application/octet-stream",
            body.clone(),
        )
        .await;

    r.assert_ok();
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 2, "one attempt and one retry");
    assert_eq!(seen[0].access_tokens(), [old]);
    assert!(!seen[0].token_ok && seen[1].token_ok);
    assert_eq!(
        seen[1].access_tokens(),
        [h.fake.current_token(MP_APPID).unwrap()]
    );
    assert_eq!(&seen[0].body[..], &body[..]);
    assert_eq!(&seen[1].body[..], &body[..]);
    assert_eq!(
        seen[1].query.as_deref().unwrap().split('&').next(),
        Some("type=image")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_replay_limit_is_not_retried_but_the_token_is_renewed() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .proxy_line("max_replay_body_bytes = 1024");
    let h = Harness::start(fake, config).await;
    h.fake.revoke(MP_APPID);

    let r = h
        .http
        .post(
            &h.url("/cgi-bin/media/upload"),
            "application/octet-stream",
            vec![7u8; 10 * 1024],
        )
        .await;

    assert_eq!(
        r.json()["errcode"],
        40001,
        "the token error goes back to the client"
    );
    assert_eq!(
        h.fake.requests().len(),
        1,
        "a streamed body cannot be retried"
    );
    assert_eq!(h.fake.requests()[0].body.len(), 10 * 1024);
    wait_until("the token to be renewed", Duration::from_secs(5), || {
        h.fake.token_fetches() == 2
    })
    .await;
    let next = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(next.json()["errcode"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_sees_only_the_retry_and_never_a_second_retry() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 0");
    let h = Harness::start(fake, config).await;

    // /test/errcode answers 40001 whatever the token: a refresh cannot help.
    let r = h.http.get(&h.url("/test/errcode?code=40001")).await;

    assert_eq!(r.json()["errcode"], 40001);
    assert_eq!(
        h.fake.requests().len(),
        2,
        "one attempt, one retry, no more"
    );
    assert_eq!(h.fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn wecom_refreshes_on_40014_but_treats_40001_as_no_token_error() {
    let fake = FakeWeChat::start().await;
    fake.add_app(AppKind::WeCom, CORP_ID, SECRET);
    let config = ConfigBuilder::new(&fake).wecom("work");
    let h = Harness::start(fake, config).await;

    let r = h.http.get(&h.url("/test/errcode?code=40001")).await;
    assert_eq!(r.json()["errcode"], 40001);
    assert_eq!(
        h.fake.token_fetches(),
        1,
        "40001 means a bad secret in WeCom, not a bad token"
    );
    assert_eq!(h.fake.requests().len(), 1);

    h.fake.revoke(CORP_ID);
    let r = h.http.get(&h.url("/cgi-bin/user/get?userid=u1")).await;
    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert_eq!(h.fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_a_superseded_token_retries_with_the_current_one_without_a_fetch() {
    let h = Harness::mp("classic").await;

    // A slow request leaves with token 1; meanwhile a token error replaces it.
    let slow = {
        let http = h.http.clone();
        let url = h.url("/test/slow?ms=800");
        tokio::spawn(async move { http.get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.fake.revoke(MP_APPID);
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.json()["errcode"], 0);
    assert_eq!(h.fake.token_fetches(), 2);

    // The slow request's token was revoked too; it is retried with token 2
    // without another fetch.
    let slow = slow.await.unwrap();
    assert_eq!(slow.json()["errcode"], 0, "{}", slow.text());
    assert_eq!(h.fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_renewed_ahead_of_expiry_so_steady_traffic_never_meets_42001() {
    let fake = Harness::fake_with(FakeOptions {
        expires_in: 3,
        ..FakeOptions::default()
    })
    .await;
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("refresh_before_expiry_s = 1");
    let h = Harness::start(fake, config).await;

    for _ in 0..70 {
        let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
        assert_eq!(r.json()["errcode"], 0, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let seen = h.fake.requests();
    assert!(
        seen.iter().all(|r| r.token_ok),
        "a request met an expired token"
    );
    assert_eq!(seen.len(), 70, "no request needed a retry");
    let fetches = h.fake.token_fetches();
    assert!(
        (3..=6).contains(&fetches),
        "{fetches} fetches in ~7 s of 3 s tokens renewed after 2 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stable_refresh_ahead_uses_normal_mode_only() {
    let fake = Harness::fake_with(FakeOptions {
        expires_in: 4,
        stable_window: Duration::from_secs(2),
        ..FakeOptions::default()
    })
    .await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line("refresh_before_expiry_s = 2");
    let h = Harness::start(fake, config).await;

    wait_until("two renewals", Duration::from_secs(10), || {
        h.fake.issued_tokens().len() >= 3
    })
    .await;

    assert_eq!(h.fake.force_refreshes(), 0);
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.json()["errcode"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stable_forces_a_refresh_only_when_normal_mode_returns_the_rejected_token() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line("min_refresh_interval_ms = 0");
    let h = Harness::start(fake, config).await;

    // A plain revoke: normal mode already yields a new token, no force.
    h.fake.revoke(MP_APPID);
    assert_eq!(
        h.http.get(&h.url("/cgi-bin/user/info")).await.json()["errcode"],
        0
    );
    assert_eq!(h.fake.force_refreshes(), 0);

    // Normal mode keeps returning the dead token: force once.
    h.fake.invalidate_in_place(MP_APPID);
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert_eq!(h.fake.force_refreshes(), 1);

    // Again within 30 s: no second force; the client gets WeChat's errcode.
    h.fake.invalidate_in_place(MP_APPID);
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.json()["errcode"], 40001);
    assert_eq!(h.fake.force_refreshes(), 1);
}

/// Awaits spawned requests in order.
async fn futures_join(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<common::Resp>>,
) -> Vec<common::Resp> {
    let tasks: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}
