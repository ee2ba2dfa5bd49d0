//! Failover between WeChat hosts: the app's `base_url` is a relay in front of the fake
//! that refuses, resets, never accepts or goes silent; its fallback is the fake itself.
//! Calls and token fetches must reach the fallback without the client seeing an error,
//! and come back to the primary once it heals.

mod common;

use std::time::{Duration, Instant};

use common::relay::{Mode, Relay};
use common::setup::{ConfigBuilder, Harness};
use common::Http;

/// The proxy's connect timeout in these tests, and so how long a silent host may
/// keep a request waiting before later ones go elsewhere.
const CONNECT_TIMEOUT_MS: u64 = 500;

/// A proxy whose app's primary host is a relay (in `mode` from the start) and whose
/// fallback is the fake.
async fn with_relay_primary(mode: Mode) -> (Harness, Relay, String) {
    let fake = Harness::fake_with(Default::default()).await;
    let relay = Relay::start(fake.addr).await;
    relay.set(mode).await;
    let primary = format!("https://localhost:{}", relay.addr.port());
    let fallback = fake.base_url.clone();
    let config = ConfigBuilder::new(&fake)
        .base_url(&primary)
        .upstream_line(&format!("connect_timeout_ms = {CONNECT_TIMEOUT_MS}"))
        .upstream_line("request_timeout_ms = 3000")
        .mp("stable")
        .app_line(&format!("fallback_base_urls = [{fallback:?}]"));
    let h = Harness::start(fake, config).await;
    (h, relay, primary)
}

/// The host `/apps` says the app's calls go to now.
async fn upstream(h: &Harness) -> String {
    let apps = h.http.get(&h.admin("/apps")).await.json();
    apps[0]["upstream"].as_str().expect("upstream").to_owned()
}

/// `wechat_proxy_upstream_failovers_total{app="mp"}`.
async fn failovers(h: &Harness) -> u64 {
    let text = h.http.get(&h.admin("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(r#"wechat_proxy_upstream_failovers_total{app="mp"} "#))
        .expect("the failover counter is exported")
        .trim()
        .parse()
        .unwrap()
}

/// Sends `n` calls one after another; each must succeed. Returns the slowest.
async fn all_succeed(h: &Harness, n: usize) -> Duration {
    let http = Http::new();
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let r = if i % 2 == 0 {
            http.get(&h.url("/cgi-bin/user/info?openid=o1")).await
        } else {
            http.post(
                &h.url("/cgi-bin/message/custom/send"),
                "application/json",
                r#"{"touser":"o1"}"#,
            )
            .await
        };
        assert_eq!(r.status, 200, "call {i}: {} {}", r.status, r.text());
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Waits (up to 30 s, the promise) until calls go to `host` again; returns how long.
async fn returns_to(h: &Harness, host: &str) -> Duration {
    let started = Instant::now();
    while upstream(h).await != host {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "traffic did not return to {host} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// The primary fails from the start with `mode`: the startup token fetch and every call
/// go to the fallback without an error; the switch is shown, counted and logged once;
/// once the primary serves again, traffic returns to it.
async fn fails_over_and_back(mode: Mode) {
    let (h, relay, primary) = with_relay_primary(mode).await;
    let fallback = h.fake.base_url.clone();

    // The token was fetched at startup, through the fallback.
    assert_eq!(h.fake.token_fetches(), 1);
    let slowest = all_succeed(&h, 20).await;
    println!("{mode:?}: slowest call after the switch {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    assert_eq!(upstream(&h).await, fallback);
    assert_eq!(failovers(&h).await, 1);
    let warn = h.proxy.wait_for_log("switched WeChat host").await;
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains(&primary) && warn.contains(&fallback),
        "{warn}"
    );
    assert!(h.fake.requests().iter().all(|r| r.token_ok));

    relay.set(Mode::Forward).await;
    let back = returns_to(&h, &primary).await;
    println!("{mode:?}: back on the primary {back:?} after it healed");
    all_succeed(&h, 4).await;
    assert_eq!(failovers(&h).await, 2, "the return is a switch too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_primary_fails_over_and_back_without_an_error() {
    fails_over_and_back(Mode::Refuse).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resetting_primary_fails_over_and_back_without_an_error() {
    fails_over_and_back(Mode::Reset).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_accepts_no_connection_fails_over_within_the_connect_timeout() {
    fails_over_and_back(Mode::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_fails_tls_fails_over() {
    // A plain-HTTP server where TLS is expected: the handshake fails.
    let plain = Harness::fake_with(common::fake_wechat::FakeOptions {
        tls: false,
        ..Default::default()
    })
    .await;
    let fake = Harness::fake_with(Default::default()).await;
    let fallback = fake.base_url.clone();
    let config = ConfigBuilder::new(&fake)
        .base_url(&format!("https://localhost:{}", plain.addr.port()))
        .mp("stable")
        .app_line(&format!("fallback_base_urls = [{fallback:?}]"));
    let h = Harness::start(fake, config).await;

    all_succeed(&h, 4).await;
    assert_eq!(upstream(&h).await, fallback);
    assert!(plain.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_that_hangs_costs_only_the_calls_already_waiting_on_it() {
    let (h, relay, primary) = with_relay_primary(Mode::Forward).await;
    let fallback = h.fake.base_url.clone();
    all_succeed(&h, 4).await;
    assert_eq!(upstream(&h).await, primary);

    // Pooled connections stay open and go silent; new ones get nothing either.
    relay.set(Mode::Stall).await;
    let http = Http::new();
    let waiting = {
        let (http, url) = (http.clone(), h.url("/cgi-bin/user/info?openid=early"));
        tokio::spawn(async move { http.get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(CONNECT_TIMEOUT_MS + 300)).await;

    // Silent for the connect timeout under a waiting call: later calls go elsewhere.
    let slowest = all_succeed(&h, 20).await;
    println!("hang: slowest later call {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    assert_eq!(upstream(&h).await, fallback);
    assert_eq!(failovers(&h).await, 1);

    // The call that was waiting on the silent host gets its timeout, not a hang.
    let early = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(early.status, 504, "{}", early.text());

    relay.set(Mode::Forward).await;
    returns_to(&h, &primary).await;
    all_succeed(&h, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fallbacks_a_refused_host_is_still_a_502() {
    let fake = Harness::fake_with(Default::default()).await;
    let relay = Relay::start(fake.addr).await;
    let config = ConfigBuilder::new(&fake)
        .base_url(&format!("https://localhost:{}", relay.addr.port()))
        .mp("stable");
    let h = Harness::start(fake, config).await;
    relay.set(Mode::Refuse).await;

    let r = Http::new().get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(failovers(&h).await, 0);
    assert_eq!(
        upstream(&h).await,
        format!("https://localhost:{}", relay.addr.port())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_upload_is_not_taken_for_a_silent_host() {
    let fake = Harness::fake_with(Default::default()).await;
    let relay = Relay::start(fake.addr).await;
    let fallback = format!("https://localhost:{}", relay.addr.port());
    let config = ConfigBuilder::new(&fake)
        .upstream_line(&format!("connect_timeout_ms = {CONNECT_TIMEOUT_MS}"))
        .proxy_line("max_replay_body_bytes = 1024")
        .mp("stable")
        .app_line(&format!("fallback_base_urls = [{fallback:?}]"));
    let h = Harness::start(fake, config).await;
    let primary = h.fake.base_url.clone();

    // A streamed upload that takes four connect timeouts to go out.
    let mut conn = common::raw::RawConn::connect(h.proxy.addr).await;
    conn.send(
        b"POST /cgi-bin/media/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b'u'; 4096];
    for i in 0..20 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        conn.send(&framed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(CONNECT_TIMEOUT_MS / 5)).await;
        if i == 10 {
            // Calls meanwhile stay on the primary.
            all_succeed(&h, 2).await;
        }
    }
    conn.send(b"0\r\n\r\n").await.unwrap();
    let r = conn.read_response().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    assert_eq!(upstream(&h).await, primary);
    assert_eq!(failovers(&h).await, 0);
}
