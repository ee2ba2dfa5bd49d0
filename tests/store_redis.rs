//! The Redis store: replicas sharing one Redis make one token fetch for the fleet, at start,
//! after a token error and ahead of expiry; a Redis outage never stops requests.
//!
//! Every test runs a real `redis-server` (see `common::redis`) and the fake WeChat server on
//! classic tokens, where an uncoordinated fetch by one replica kills the others' tokens.

mod common;

use std::time::{Duration, Instant};

use common::fake_wechat::FakeOptions;
use common::redis::RedisServer;
use common::setup::{env, ConfigBuilder, Harness, MP_APPID, SECRET};
use common::{assert_all_ok, spread, wait_ready, Http, Proxy};

/// The key the proxy keeps the mp app's classic token under, with the default prefix.
fn token_key() -> String {
    format!("wechat-token-proxy:{MP_APPID}:classic:token")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_sharing_redis_serve_300_requests_with_one_token_fetch() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();

    let replicas = replicas(3, &ConfigBuilder::new(&fake).mp("classic"), &redis, &http).await;
    let answers = spread(&http, &replicas, 300, "/cgi-bin/user/info").await;

    assert_all_ok(&answers);
    assert_eq!(fake.token_fetches(), 1, "one fetch for the whole fleet");
    let token = fake.current_token(MP_APPID).unwrap();
    let seen = fake.requests();
    assert_eq!(seen.len(), 300, "no request needed a retry");
    assert!(seen
        .iter()
        .all(|r| r.token_ok && r.access_tokens() == [token.clone()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_revoke_90_token_errors_across_three_replicas_cause_one_fetch() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    let replicas = replicas(3, &ConfigBuilder::new(&fake).mp("classic"), &redis, &http).await;
    assert_eq!(fake.token_fetches(), 1);

    fake.revoke(MP_APPID);
    let answers = spread(&http, &replicas, 90, "/cgi-bin/user/info").await;

    assert_all_ok(&answers);
    assert_eq!(
        fake.token_fetches(),
        2,
        "90 token errors on 3 replicas: one fetch"
    );
    let fresh = fake.current_token(MP_APPID).unwrap();
    assert_eq!(stored_token(&redis).as_deref(), Some(fresh.as_str()));
    let later = spread(&http, &replicas, 30, "/cgi-bin/user/info").await;
    assert_all_ok(&later);
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_stopped_requests_keep_flowing_and_coordination_resumes_when_it_is_back() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let mut redis = RedisServer::start();
    let http = Http::new();
    let replicas = replicas(3, &ConfigBuilder::new(&fake).mp("classic"), &redis, &http).await;

    redis.stop();
    let during = spread(&http, &replicas, 60, "/cgi-bin/user/info").await;
    assert_all_ok(&during);
    assert_eq!(
        fake.token_fetches(),
        1,
        "the held token serves during the outage"
    );

    // Back, and empty: the next token error is again one fetch for the fleet.
    redis.restart();
    fake.revoke(MP_APPID);
    let after = spread(&http, &replicas, 90, "/cgi-bin/user/info").await;

    assert_all_ok(&after);
    assert_eq!(fake.token_fetches(), 2, "after Redis came back: one fetch");
    let fresh = fake.current_token(MP_APPID).unwrap();
    assert_eq!(stored_token(&redis).as_deref(), Some(fresh.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_starts_and_fetches_alone_while_redis_is_down_and_saves_once_it_is_back() {
    const PASSWORD: &str = "redis-password-do-not-log-5e1c";
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let mut redis = RedisServer::start_with_password(PASSWORD);
    redis.stop();
    let http = Http::new();

    // Token errors moments apart must each be allowed a fetch here.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 0");
    let replica = replica(&config, &redis, &http).await;
    assert_eq!(fake.token_fetches(), 1);
    assert!(replica.has_log("token store unreachable"));
    assert_all_ok(&[http
        .get(&format!("{}/cgi-bin/user/info", replica.url))
        .await]);

    // A token error during the outage is served by a fetch of its own.
    fake.revoke(MP_APPID);
    assert_all_ok(&[http
        .get(&format!("{}/cgi-bin/user/info", replica.url))
        .await]);
    assert_eq!(fake.token_fetches(), 2);

    // Once Redis is back, the next fetch is saved there for the fleet.
    redis.restart();
    fake.revoke(MP_APPID);
    assert_all_ok(&[http
        .get(&format!("{}/cgi-bin/user/info", replica.url))
        .await]);
    assert_eq!(fake.token_fetches(), 3);
    let fresh = fake.current_token(MP_APPID).unwrap();
    assert_eq!(stored_token(&redis).as_deref(), Some(fresh.as_str()));

    let logs = replica.logs().join("\n");
    assert!(logs.contains("redis://:***@127.0.0.1"), "{logs}");
    assert!(!logs.contains(PASSWORD), "the Redis password was logged");
    assert!(!logs.contains(SECRET) && !logs.contains(&fresh));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_keys_name_appid_and_api_and_hold_the_token_for_its_life_but_never_the_secret() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake).mp("classic");
    let store = format!(
        "kind = \"redis\"\nurl = {:?}\nkey_prefix = \"team-a:\"",
        redis.url()
    );
    let _replica = start(&config, &store, &http).await;

    let key = format!("team-a:{MP_APPID}:classic:token");
    assert_eq!(redis.keys("*"), vec![key.clone()], "no lock is left behind");
    let value = redis.get(&key).unwrap();
    assert!(value.contains(&fake.current_token(MP_APPID).unwrap()));
    assert!(!value.contains(SECRET));
    let ttl = Duration::from_millis(redis.pttl(&key) as u64);
    assert!(
        ttl > Duration::from_secs(7100) && ttl <= Duration::from_secs(7200),
        "the key lives as long as the token: {ttl:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_left_by_a_dead_replica_expires_and_then_the_token_is_fetched() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    let replica = replica(&ConfigBuilder::new(&fake).mp("classic"), &redis, &http).await;

    let lock = format!("wechat-token-proxy:{MP_APPID}:classic:lock");
    redis.set_px(&lock, "a-replica-that-died", Duration::from_millis(1500));
    fake.revoke(MP_APPID);
    let started = Instant::now();
    let r = http
        .get(&format!("{}/cgi-bin/user/info", replica.url))
        .await;

    assert_all_ok(&[r]);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the replica waited for the lock to expire ({:?})",
        started.elapsed()
    );
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(redis.keys("*"), [token_key()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_ahead_of_expiry_is_one_fetch_per_lifetime_for_the_fleet() {
    let fake = Harness::fake_with(FakeOptions {
        expires_in: 4,
        ..FakeOptions::default()
    })
    .await;
    let redis = RedisServer::start();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("refresh_before_expiry_s = 2");
    let started = Instant::now();
    let replicas = replicas(3, &config, &redis, &http).await;

    // 5 s or more of steady traffic while 4 s tokens are renewed 2 s after each fetch.
    for i in 0..50 {
        let r = http
            .get(&format!("{}/cgi-bin/user/info", replicas[i % 3].url))
            .await;
        assert_eq!(r.json()["errcode"], 0, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One fetch at start and one per renewal (plus one of slack); three replicas each
    // renewing by themselves would make three per renewal.
    let renewals = (started.elapsed().as_secs_f64() / 2.0).floor() as usize;
    let fetches = fake.token_fetches();
    assert!(
        (3..=2 + renewals).contains(&fetches),
        "{fetches} fetches in {:?}",
        started.elapsed()
    );
    let seen = fake.requests();
    assert_eq!(seen.len(), 50, "no request met a dead token");
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_connects_over_tls_and_checks_the_servers_certificate() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start_tls();
    let http = Http::new();
    let text = format!(
        "{}[store]\n{}\n",
        ConfigBuilder::new(&fake).mp("stable").render(),
        store_lines(&redis)
    );
    let ca_file = redis.ca_file().display().to_string();
    let (var, secret) = env()[0];

    // Trusting the server's CA (through the system trust store's SSL_CERT_FILE): shared.
    let trusting = Proxy::start(&text, &[(var, secret), ("SSL_CERT_FILE", &ca_file)]);
    wait_ready(&trusting, &http).await;
    assert!(!trusting.has_log("token store unreachable"));
    let key = format!("wechat-token-proxy:{MP_APPID}:stable:token");
    assert_eq!(redis.keys("*"), vec![key]);

    // Not trusting it: the certificate is refused, so Redis counts as unreachable.
    let distrusting = Proxy::start(&text, &env());
    wait_ready(&distrusting, &http).await;
    assert!(distrusting.has_log("token store unreachable"));
    assert_eq!(fake.token_fetches(), 2);
}

/// The `[store]` lines for `redis`.
fn store_lines(redis: &RedisServer) -> String {
    format!("kind = \"redis\"\nurl = {:?}", redis.url())
}

/// One proxy using `redis`, ready.
async fn replica(config: &ConfigBuilder, redis: &RedisServer, http: &Http) -> Proxy {
    start(config, &store_lines(redis), http).await
}

/// `n` proxies sharing `redis`, all started before any is waited for, so their startup
/// fetches race.
async fn replicas(
    n: usize,
    config: &ConfigBuilder,
    redis: &RedisServer,
    http: &Http,
) -> Vec<Proxy> {
    let text = format!("{}[store]\n{}\n", config.render(), store_lines(redis));
    let proxies: Vec<Proxy> = (0..n).map(|_| Proxy::start(&text, &env())).collect();
    for proxy in &proxies {
        wait_ready(proxy, http).await;
    }
    proxies
}

/// A proxy with `config` and the `[store]` table `store`, ready.
async fn start(config: &ConfigBuilder, store: &str, http: &Http) -> Proxy {
    let proxy = Proxy::start(&format!("{}[store]\n{store}\n", config.render()), &env());
    wait_ready(&proxy, http).await;
    proxy
}

/// The token string in the mp app's Redis entry (the value is JSON naming it).
fn stored_token(redis: &RedisServer) -> Option<String> {
    let value = redis.get(&token_key())?;
    let json: serde_json::Value = serde_json::from_str(&value).expect("the entry is JSON");
    json["token"].as_str().map(str::to_owned)
}
