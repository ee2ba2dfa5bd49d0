//! The proxy's connections to WeChat: at most `max_connections_per_app` open at once,
//! with the requests beyond them waiting their turn rather than failing, and idle ones
//! closed after `[upstream] idle_timeout_ms` even when no request comes.

mod common;

use std::time::Duration;

use common::setup::{ConfigBuilder, Harness};
use common::wait_until;

async fn with_upstream(lines: &[&str]) -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let mut config = ConfigBuilder::new(&fake).mp("stable");
    for line in lines {
        config = config.upstream_line(line);
    }
    Harness::start(fake, config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_stay_under_the_cap_and_requests_beyond_it_wait() {
    let h = with_upstream(&["max_connections_per_app = 3"]).await;
    // Slow answers: 24 requests at once all want a connection at the same time.
    h.fake.set_api_delay(Duration::from_millis(100));

    let calls = (0..24).map(|i| {
        let http = h.http.clone();
        let url = h.url(&format!("/cgi-bin/user/info?openid=o{i}"));
        tokio::spawn(async move { http.get(&url).await })
    });
    for call in futures_join(calls).await {
        let r = call.expect("the request task");
        assert_eq!(
            r.status, 200,
            "a request beyond the cap waits, never fails: {r:?}"
        );
        assert_eq!(r.json()["errcode"], 0, "{r:?}");
    }
    assert_eq!(h.fake.requests().len(), 24);
    assert!(
        h.fake.max_open_connections() <= 3,
        "{} connections were open at once; the cap is 3",
        h.fake.max_open_connections()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_fetch_takes_the_next_free_connection_ahead_of_queued_calls() {
    // Two connections, 24 calls of 400 ms each: the last in line waits about
    // 4.8 s. The token is revoked, so the first answers are 40001 and the
    // token fetch needs a connection while 22 calls queue for one; behind
    // them it would pass token_timeout_ms (2 s) and every waiting call
    // would get 503.
    let h = with_upstream(&["max_connections_per_app = 2", "token_timeout_ms = 2000"]).await;
    h.fake.revoke(common::setup::MP_APPID);
    h.fake.set_api_delay(Duration::from_millis(400));

    let calls = (0..24).map(|i| {
        let http = h.http.clone();
        let url = h.url(&format!("/cgi-bin/user/info?openid=o{i}"));
        tokio::spawn(async move { http.get(&url).await })
    });
    for call in futures_join(calls).await {
        let r = call.expect("the request task");
        assert_eq!(r.status, 200, "a token fetch queued behind calls: {r:?}");
        assert_eq!(r.json()["errcode"], 0, "{r:?}");
    }
    assert_eq!(h.fake.token_fetches(), 2, "startup plus one refresh");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_upstream_connections_close_without_a_next_request() {
    let h = with_upstream(&["idle_timeout_ms = 300"]).await;
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
    assert!(
        h.fake.open_connections() >= 1,
        "the answered call's connection is kept for reuse"
    );

    wait_until(
        "the idle upstream connection to be closed",
        Duration::from_secs(5),
        || h.fake.open_connections() == 0,
    )
    .await;
    // And the next call simply opens a new one.
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
}

/// Awaits every task, in order.
async fn futures_join<T>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let tasks: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await);
    }
    out
}
