//! The token engine under faults: fetches that outlive the client that
//! started them, a fleet lease that a dead holder gives up within seconds,
//! requests bounded by `token_timeout_ms`, token errors in a flood that wait
//! instead of failing, status that tells the truth about a rejected token,
//! and token fights reported.

mod common;

use std::time::{Duration, Instant};

use common::fake_wechat::{FakeOptions, FetchFailure};
use common::raw::{self, RawConn};
use common::redis::RedisServer;
use common::setup::{env, ConfigBuilder, Harness, MP_APPID};
use common::{wait_until, wait_until_async, Http, Proxy, Resp};

const USER_INFO: &str = "/cgi-bin/user/info?openid=o1";

/// Sends a request on a raw connection and waits until the proxy has asked
/// the fake for a token because of it (the fetch count reaches `fetches`),
/// then hangs up without reading the answer.
async fn start_request_and_disconnect(
    proxy: &Proxy,
    fake_fetches: impl Fn() -> usize,
    fetches: usize,
) {
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::get(USER_INFO, "")).await.expect("send");
    wait_until(
        "the proxy to ask for a token",
        Duration::from_secs(5),
        || fake_fetches() >= fetches,
    )
    .await;
    drop(conn);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_whose_client_disconnected_finishes_and_its_token_is_used() {
    let h = Harness::mp("classic").await;
    assert_eq!(h.fake.token_fetches(), 1);
    h.fake.revoke(MP_APPID);
    h.fake.set_token_delay(Duration::from_millis(800));

    start_request_and_disconnect(&h.proxy, || h.fake.token_fetches(), 2).await;
    // Long enough for the fetch to have answered.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.fake.set_token_delay(Duration::ZERO);

    let r = h.http.get(&h.url(USER_INFO)).await;
    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert_eq!(
        h.fake.token_fetches(),
        2,
        "the token WeChat issued for the vanished client is the one used"
    );
    let fresh = h.fake.current_token(MP_APPID).unwrap();
    let last = h.fake.requests().pop().unwrap();
    assert!(last.token_ok);
    assert_eq!(last.access_tokens(), [fresh]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_a_fetch_whose_client_disconnected_still_serves_the_fleet() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake).mp("classic");
    let (a, b) = (
        replica(&config, &redis, &http).await,
        replica(&config, &redis, &http).await,
    );
    assert_eq!(fake.token_fetches(), 1);
    fake.revoke(MP_APPID);
    fake.set_token_delay(Duration::from_millis(800));

    start_request_and_disconnect(&a, || fake.token_fetches(), 2).await;
    // Replica b meets the same revoked token while a's fetch is under way.
    let r = http.get(&format!("{}{USER_INFO}", b.url)).await;

    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert_eq!(
        fake.token_fetches(),
        2,
        "b waited for a's fetch instead of fetching again"
    );
    assert!(
        redis.keys("*lock").is_empty(),
        "the lock is released once the fetch ends"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_lock_is_a_short_lease_so_a_killed_holder_costs_seconds() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    // A fetch may take up to 10 s: a lock sized by the fetch timeout would
    // stall the fleet that long after its holder died.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .upstream_line("token_timeout_ms = 10000");
    let mut a = replica(&config, &redis, &http).await;
    let b = replica(&config, &redis, &http).await;
    fake.revoke(MP_APPID);
    fake.set_token_delay(Duration::from_secs(60));

    start_request_and_disconnect(&a, || fake.token_fetches(), 2).await;
    let lock = format!("wechat-token-proxy:{MP_APPID}:classic:lock");
    let ttl = redis.pttl(&lock);
    assert!(
        (1..=3000).contains(&ttl),
        "the holder's lock lives at most 3 s unless renewed (PTTL {ttl} ms)"
    );
    // Renewed while the holder's fetch is alive.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(redis.pttl(&lock) > 0, "the live holder renews its lease");

    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    fake.set_token_delay(Duration::ZERO);
    let killed_at = Instant::now();
    wait_until_async("replica b to serve again", Duration::from_secs(8), || {
        let (http, url) = (http.clone(), format!("{}{USER_INFO}", b.url));
        async move { http.get(&url).await.json()["errcode"] == 0 }
    })
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(8),
        "b served again once the dead holder's lease lapsed"
    );
    assert_eq!(fake.token_fetches(), 3, "a's lost fetch, then b's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_waits_no_longer_than_the_token_timeout_while_another_replica_fetches() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .upstream_line("token_timeout_ms = 1500");
    let a = replica(&config, &redis, &http).await;
    let b = replica(&config, &redis, &http).await;
    fake.revoke(MP_APPID);
    // The token endpoint hangs: a's fetch holds the lease until it times out.
    fake.set_token_delay(Duration::from_secs(60));

    let on_a = {
        let (http, url) = (http.clone(), format!("{}{USER_INFO}", a.url));
        tokio::spawn(async move { http.get(&url).await })
    };
    wait_until("a to fetch", Duration::from_secs(5), || {
        fake.token_fetches() == 2
    })
    .await;
    let started = Instant::now();
    let on_b = http.get(&format!("{}{USER_INFO}", b.url)).await;
    let waited = started.elapsed();

    assert_unavailable(&on_b);
    // Without the bound, b waits for a's fetch to time out (1.5 s) and then
    // times out on its own (1.5 s more).
    assert!(
        waited < Duration::from_millis(2600),
        "b's request waited {waited:?}, beyond its token_timeout_ms of 1.5 s"
    );
    assert_unavailable(&on_a.await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_waiting_for_a_token_on_every_replica_answers_within_the_token_timeout() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    // min_refresh_interval_ms stays at its default, 5 s: longer than the wait.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .upstream_line("token_timeout_ms = 2000");
    let a = replica(&config, &redis, &http).await;
    let b = replica(&config, &redis, &http).await;
    fake.revoke(MP_APPID);
    // The token endpoint hangs: whoever holds the lease holds it until its
    // fetch times out.
    fake.set_token_delay(Duration::from_secs(60));

    // A first request on each replica starts a fetch (or waits for the
    // holder's); a second arrives while the first still waits.
    let first: Vec<_> = [&a, &b]
        .iter()
        .map(|p| {
            let (http, url) = (http.clone(), format!("{}{USER_INFO}", p.url));
            tokio::spawn(async move { http.get(&url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second: Vec<_> = [&a, &b]
        .iter()
        .map(|p| {
            let (http, url) = (http.clone(), format!("{}{USER_INFO}", p.url));
            tokio::spawn(async move {
                let started = Instant::now();
                let r = http.get(&url).await;
                (r, started.elapsed())
            })
        })
        .collect();
    for (replica, (r, waited)) in ["a", "b"].into_iter().zip(futures(second).await) {
        assert_unavailable(&r);
        assert!(
            waited < Duration::from_millis(3000),
            "a second request on {replica} waited {waited:?}, beyond its token_timeout_ms of 2 s"
        );
    }
    for r in futures(first).await {
        assert_unavailable(&r);
    }
}

/// The results of `tasks`, in order.
async fn futures<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn token_errors_inside_the_flood_window_wait_for_the_next_fetch_and_succeed() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 1500");
    let h = Harness::start(fake, config).await;
    h.fake.revoke(MP_APPID);
    h.http.get(&h.url(USER_INFO)).await.assert_ok();
    assert_eq!(h.fake.token_fetches(), 2);

    // The new token dies at once too, inside the window.
    h.fake.revoke(MP_APPID);
    let answers = common::concurrently(&h.http, &h.url(USER_INFO), 20).await;

    for r in &answers {
        r.assert_ok();
    }
    assert_eq!(
        h.fake.token_fetches(),
        3,
        "one fetch for the second window, whoever waited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_rejects_every_token_costs_at_most_two_fetches_and_no_fight() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 100");
    let h = Harness::start(fake, config).await;
    let at_start = h.fake.token_fetches();

    // A client loops on an API that answers 40001 whatever the token, while
    // other calls accept the token.
    for i in 0..40 {
        let r = h.http.get(&h.url("/test/errcode?code=40001")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["errcode"], 40001, "WeChat's errcode: {}", r.text());
        if i % 4 == 0 {
            h.http.get(&h.url(USER_INFO)).await.assert_ok();
        }
    }

    let fetches = h.fake.token_fetches() - at_start;
    assert!(
        fetches <= 2,
        "{fetches} token fetches for one API that rejects every token"
    );
    let apps = h.http.get(&h.admin("/apps")).await.json();
    assert_eq!(apps[0]["fights"], 0, "{}", apps[0]);
    assert_eq!(apps[0]["token"]["state"], "valid", "{}", apps[0]);
    assert_eq!(
        metric(&h, "wechat_proxy_token_fights_total{app=\"mp\"}").await,
        Some(0.0)
    );
    assert_eq!(h.http.get(&h.admin("/readyz")).await.status, 200);
    assert!(!h.proxy.has_log("another system"), "{:?}", h.proxy.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_that_cannot_be_replaced_shows_as_rejected_and_fails_readiness() {
    let h = Harness::mp("classic").await;
    h.fake.set_fetch_failure(Some(FetchFailure::Errcode(
        40164,
        "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist".into(),
    )));
    h.fake.revoke(MP_APPID);

    let r = h.http.get(&h.url(USER_INFO)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["errcode"], 40164);

    let ready = h.http.get(&h.admin("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let reason = ready.json()["apps"][0]["reason"].to_string();
    assert!(
        reason.contains("rejected") && reason.contains("40164"),
        "{reason}"
    );
    let apps = h.http.get(&h.admin("/apps")).await.json();
    assert_eq!(apps[0]["token"]["state"], "rejected");
    assert!(apps[0]["token"]["expires_in_s"].is_null());

    // Once WeChat lets the fetch through, the app is ready again by itself.
    h.fake.set_fetch_failure(None);
    h.wait_ready().await;
    let apps = h.http.get(&h.admin("/apps")).await.json();
    assert_eq!(apps[0]["token"]["state"], "valid");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_cuts_a_backoff_short_once_and_sixty_refreshes_never_make_sixty_fetches() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 300")
        .upstream_line("token_retry_min_ms = 60000")
        .upstream_line("token_retry_max_ms = 120000");
    let h = Harness::start(fake, config).await;
    let refresh = || async {
        h.http
            .post(&h.admin("/apps/mp/refresh"), "application/json", "")
            .await
    };
    h.fake.set_fetch_failure(Some(FetchFailure::Errcode(
        40164,
        "invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist".into(),
    )));
    // WeChat rejects the token and refuses a new one: a minute's backoff.
    h.fake.revoke(MP_APPID);
    let r = h.http.get(&h.url(USER_INFO)).await;
    assert_eq!(r.json()["errcode"], 40164, "{}", r.text());
    assert_eq!(h.fake.token_fetches(), 2);

    // The operator believes the whitelist fixed: one refresh goes through.
    let cut = refresh().await;
    assert_eq!(cut.status, 503, "{}", cut.text());
    assert_eq!(cut.json()["errcode"], 40164);
    assert_eq!(h.fake.token_fetches(), 3);

    // It was not: sixty more, spread past the interval, make no fetch and
    // say when the next may be.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..60 {
        let r = refresh().await;
        assert_eq!(r.status, 429, "{}", r.text());
        let body = r.json();
        assert_eq!(body["refreshed"], false);
        assert_eq!(body["errcode"], 40164, "{body}");
        assert!(
            body["errmsg"].as_str().unwrap().contains("no refresh made"),
            "{body}"
        );
        let retry_in = body["retry_in_s"].as_u64().unwrap();
        assert!((1..=150).contains(&retry_in), "{body}");
        assert_eq!(r.header("retry-after"), Some(retry_in.to_string().as_str()));
    }
    assert_eq!(h.fake.token_fetches(), 3, "a declined refresh fetched");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_refreshes_make_one_fetch_per_interval_while_fetches_fail() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 2000");
    let h = Harness::start(fake, config).await;
    h.fake.set_fetch_failure(Some(FetchFailure::Http500));
    // WeChat rejects the token and fetches fail: no token to stand on.
    h.fake.revoke(MP_APPID);
    assert_eq!(h.http.get(&h.url(USER_INFO)).await.status, 503);
    let posts: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (h.http.clone(), h.admin("/apps/mp/refresh"));
            tokio::spawn(async move { http.post(&url, "application/json", "").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for post in posts {
        statuses.push(post.await.expect("post").status);
    }
    let failed = statuses.iter().filter(|&&s| s == 503).count();
    let declined = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((failed, declined), (1, 19), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_system_fetching_the_same_appids_tokens_is_reported_as_a_fight() {
    let h = Harness::mp("classic").await;
    let before = metric(&h, "wechat_proxy_token_fights_total{app=\"mp\"}").await;
    assert_eq!(before, Some(0.0), "the counter exists before any fight");

    // Another system fetches a classic token: ours dies with hours of life left.
    h.fake.revoke(MP_APPID);
    h.http.get(&h.url(USER_INFO)).await.assert_ok();

    h.proxy
        .wait_for_log("another system is probably fetching tokens")
        .await;
    assert_eq!(
        metric(&h, "wechat_proxy_token_fights_total{app=\"mp\"}").await,
        Some(1.0)
    );
    let apps = h.http.get(&h.admin("/apps")).await.json();
    assert_eq!(apps[0]["fights"], 1);
    assert!(apps[0]["last_fight_unix"].as_u64().unwrap() > 1_700_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_replaced_by_another_replica_of_the_fleet_is_no_fight() {
    let fake = Harness::fake_with(FakeOptions {
        classic_grace: Duration::from_millis(300),
        ..FakeOptions::default()
    })
    .await;
    let redis = RedisServer::start();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake).mp("classic");
    let a = replica(&config, &redis, &http).await;
    let b = replica(&config, &redis, &http).await;

    // a meets a token error and fetches a new token for the fleet; b's
    // token dies when the classic grace period ends, and b finds a's
    // token in Redis.
    let r = http
        .get(&format!("{}/test/errcode?code=40001", a.url))
        .await;
    assert_eq!(r.json()["errcode"], 40001);
    tokio::time::sleep(Duration::from_millis(500)).await;
    http.get(&format!("{}{USER_INFO}", b.url)).await.assert_ok();

    assert_eq!(fake.token_fetches(), 2, "b took a's token from Redis");
    assert!(!b.has_log("another system"), "{:?}", b.logs());
    let apps = http.get(&format!("{}/apps", b.admin_url)).await.json();
    assert_eq!(apps[0]["fights"], 0);
}

/// A ready proxy sharing `redis`.
async fn replica(config: &ConfigBuilder, redis: &RedisServer, http: &Http) -> Proxy {
    let text = format!(
        "{}[store]\nkind = \"redis\"\nurl = {:?}\n",
        config.render(),
        redis.url()
    );
    let proxy = Proxy::start(&text, &env());
    let url = format!("{}/readyz", proxy.admin_url);
    wait_until_async("the replica to be ready", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.status == 200 }
    })
    .await;
    proxy
}

/// A proxy's own 503 for want of a token, in WeChat's shape.
fn assert_unavailable(r: &Resp) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    assert_eq!(r.json()["errcode"], -1, "{}", r.text());
}

/// One sample's value from `/metrics`.
async fn metric(h: &Harness, series: &str) -> Option<f64> {
    let text = h.http.get(&h.admin("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}
