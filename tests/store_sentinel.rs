//! The Redis store behind Sentinel: real `redis-server` primary and replica and a real
//! sentinel (`redis-server … --sentinel`). The primary is killed (SIGKILL); held tokens
//! keep serving while it is gone, and after the sentinel promotes the replica the fleet
//! lock works on the new primary: a token error across the replicas is one fetch.

mod common;

use std::time::{Duration, Instant};

use common::fake_wechat::FakeOptions;
use common::redis::{dead_port, RedisServer, Sentinel};
use common::setup::{env, ConfigBuilder, Harness, MP_APPID};
use common::{assert_all_ok, spread, wait_ready, wait_until_async, Http, Proxy};

/// The key the proxy keeps the mp app's classic token under, with the default prefix.
fn token_key() -> String {
    format!("wechat-token-proxy:{MP_APPID}:classic:token")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_follows_a_sentinel_failover_with_one_fetch() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = Sentinel::start(&primary, 1);
    assert_eq!(sentinel.primary_port(), Some(primary.port));
    let http = Http::new();

    // An unreachable sentinel first: the list is walked.
    let url = format!(
        "redis-sentinel://127.0.0.1:{},127.0.0.1:{}/0#{}",
        dead_port(),
        sentinel.port,
        Sentinel::MASTER
    );
    let config = ConfigBuilder::new(&fake).mp("classic");
    let text = format!(
        "{}[store]\nkind = \"redis\"\nurl = {url:?}\n",
        config.render()
    );
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::start(&text, &env())).collect();
    for proxy in &proxies {
        wait_ready(proxy, &http).await;
    }
    assert_all_ok(&spread(&http, &proxies, 40, "/cgi-bin/user/info").await);
    assert_eq!(fake.token_fetches(), 1, "one fetch for the fleet");
    assert!(primary.get(&token_key()).is_some(), "saved on the primary");

    primary.stop();
    let killed = Instant::now();

    // While no primary is named, held tokens serve.
    assert_all_ok(&spread(&http, &proxies, 40, "/cgi-bin/user/info").await);
    assert_eq!(fake.token_fetches(), 1);

    let mut promoted = None;
    while promoted.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the sentinel promoted no replica"
        );
        if sentinel.primary_port() == Some(replica.port) {
            promoted = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = promoted.unwrap();
    wait_until_async(
        "the replica to take writes",
        Duration::from_secs(10),
        || {
            let role = replica.info("replication");
            async move { role.contains("role:master") }
        },
    )
    .await;
    println!("sentinel failover gap: {promoted:?} from kill -9 to promotion");

    // A token error on both replicas: one fetch, coordinated on the new primary.
    fake.revoke(MP_APPID);
    assert_all_ok(&spread(&http, &proxies, 60, "/cgi-bin/user/info").await);
    assert_eq!(
        fake.token_fetches(),
        2,
        "60 token errors on 2 replicas after the failover: one fetch"
    );
    let stored = replica.get(&token_key()).expect("saved on the new primary");
    let fresh = fake.current_token(MP_APPID).unwrap();
    assert!(
        stored.contains(&fresh),
        "the new primary holds the fresh token"
    );
    for proxy in &proxies {
        let logs = proxy.logs().join("\n");
        assert!(!logs.contains(&fresh), "a token in the log");
    }
}
