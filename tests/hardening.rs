//! Faults the proxy must survive without leaking or hanging: clients vanishing mid-upload
//! and mid-download, a thousand connections at once, and upstream connections refused or
//! never answered. After each, the proxy still serves a normal request.

mod common;

use std::time::{Duration, Instant};

use common::fake_wechat::FakeOptions;
use common::raw::{get, RawConn};
use common::relay::{Mode, Relay};
use common::setup::{ConfigBuilder, Harness};
use common::{wait_until, Http, Resp};

/// Memory a scenario may leave behind without it being a leak: allocator slack, not a
/// buffer per connection (each round below moves several MiB).
const RSS_SLACK_KIB: u64 = 12 * 1024;

async fn still_serves(h: &Harness) {
    let r = Http::new().get(&h.url("/cgi-bin/user/info")).await;
    r.assert_ok();
}

/// File descriptors and resident memory of the proxy once idle.
struct Level {
    fds: usize,
    rss_kib: u64,
}

fn level(h: &Harness) -> Level {
    Level {
        fds: h.proxy.open_fds(),
        rss_kib: h.proxy.rss_kib(),
    }
}

/// Waits until the proxy's descriptors and memory are back to `before`.
async fn back_to(h: &Harness, before: &Level) {
    wait_until(
        "the proxy's open file descriptors to return to their level",
        Duration::from_secs(20),
        || h.proxy.open_fds() <= before.fds,
    )
    .await;
    wait_until(
        "the proxy's memory to return to its level",
        Duration::from_secs(20),
        || h.proxy.rss_kib() <= before.rss_kib + RSS_SLACK_KIB,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_vanishing_mid_upload_leak_nothing() {
    let h = Harness::mp("stable").await;
    // Warm up with one whole upload of the same size, so pools and buffers exist.
    let size = 8 * 1024 * 1024;
    let r = h
        .http
        .post(
            &h.url("/cgi-bin/media/upload"),
            "application/octet-stream",
            vec![1u8; size],
        )
        .await;
    assert_eq!(r.status, 200);
    let before = level(&h);

    for _ in 0..20 {
        let mut conn = RawConn::connect(h.proxy.addr).await;
        let head = format!(
            "POST /cgi-bin/media/upload HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        );
        conn.send(head.as_bytes()).await.unwrap();
        // A quarter of the body, past the replay buffer, then the client is gone.
        let _ = conn.send(&vec![2u8; size / 4]).await;
        drop(conn);
    }

    back_to(&h, &before).await;
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_vanishing_mid_download_leak_nothing() {
    let h = Harness::mp("stable").await;
    let size = 64 * 1024 * 1024;
    let url = format!("/cgi-bin/media/get?size={size}");
    let whole = h.http.download(&h.url(&url)).await;
    assert_eq!((whole.len, whole.first_mismatch), (size, None));
    let before = level(&h);

    for _ in 0..20 {
        let mut conn = RawConn::connect(h.proxy.addr).await;
        conn.send(&get(&url, "")).await.unwrap();
        assert_eq!(conn.read_some(1024 * 1024).await, 1024 * 1024);
        drop(conn);
    }

    back_to(&h, &before).await;
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_connections_are_all_served() {
    // Two sockets per connection live in this process (client and fake server side).
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= 4096,
        "RLIMIT_NOFILE hard limit {limit} is too low for this test"
    );
    // Plain HTTP upstream: the scenario is about client connections, not TLS handshakes.
    let fake = Harness::fake_with(FakeOptions {
        tls: false,
        ..FakeOptions::default()
    })
    .await;
    let config = ConfigBuilder::new(&fake).mp("stable");
    let h = Harness::start(fake, config).await;
    still_serves(&h).await;
    let before = level(&h);

    let mut conns = Vec::with_capacity(1000);
    for _ in 0..1000 {
        conns.push(RawConn::connect(h.proxy.addr).await);
    }
    let exchanges: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                conn.send(&get("/cgi-bin/user/info", "Connection: close\r\n"))
                    .await
                    .unwrap();
                conn.read_response().await.status
            })
        })
        .collect();
    let mut served = 0;
    for exchange in exchanges {
        assert_eq!(exchange.await.unwrap(), 200);
        served += 1;
    }
    assert_eq!(served, 1000);

    // The client connections are closed; idle upstream connections may stay pooled.
    wait_until(
        "the proxy to close the thousand client connections",
        Duration::from_secs(20),
        || h.proxy.open_fds() <= before.fds + 1024,
    )
    .await;
    still_serves(&h).await;
}

/// A proxy whose app reaches the fake through a relay.
async fn behind_relay(upstream_lines: &[&str]) -> (Harness, Relay) {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let relay = Relay::start(fake.addr).await;
    let mut config =
        ConfigBuilder::new(&fake).base_url(&format!("https://localhost:{}", relay.addr.port()));
    for line in upstream_lines {
        config = config.upstream_line(line);
    }
    let h = Harness::start(fake, config.mp("stable")).await;
    still_serves(&h).await;
    (h, relay)
}

/// Sends requests until one is answered `status` with an errmsg containing `says`
/// (pooled connections the relay just cut may fail first, differently), and returns that
/// answer; panics after 20 s.
async fn until_answered(h: &Harness, status: u16, says: &str) -> Resp {
    let http = Http::new();
    let url = h.url("/cgi-bin/user/info");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(&url).await;
        if r.status == status && r.text().contains(says) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no answer {status} saying {says:?} in 20 s; the last: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upstream_connection_is_a_502_and_the_proxy_recovers() {
    let (h, relay) = behind_relay(&[]).await;

    relay.set(Mode::Refuse).await;
    let r = until_answered(&h, 502, "refused").await;
    let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
    assert!(msg.starts_with("mp: cannot reach WeChat"), "{msg}");
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));

    relay.set(Mode::Forward).await;
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_accepts_no_connection_is_a_504_after_the_connect_timeout() {
    let (h, relay) = behind_relay(&["connect_timeout_ms = 500"]).await;

    relay.set(Mode::Blackhole).await;
    let r = until_answered(&h, 504, "connect").await;
    assert_eq!(
        r.json()["errmsg"],
        "mp: cannot connect to WeChat within 500 ms"
    );

    relay.set(Mode::Forward).await;
    still_serves(&h).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_admin_bodies_are_timed_out_and_never_keep_healthz_from_answering() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .proxy_line("idle_timeout_ms = 1000");
    let h = Harness::start(fake, config).await;

    // Bodies announced and never sent, on the endpoints that read one.
    let mut stalled = Vec::new();
    for i in 0..60 {
        let mut conn = RawConn::connect(h.proxy.admin).await;
        let path = if i % 2 == 0 {
            "/platforms/saas/ticket"
        } else {
            "/platforms/saas/authorizers"
        };
        conn.send(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{").as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(conn);
    }

    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        Http::new().get(&h.admin("/healthz")),
    )
    .await
    .expect("/healthz answers while admin bodies stall");
    assert_eq!(r.status, 200);
    println!("/healthz answered in {:?}", started.elapsed());

    // Each stalled body is cut off as on the application listener: 408, then closed.
    for (i, conn) in stalled.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), conn.read_response())
            .await
            .unwrap_or_else(|_| panic!("stalled body {i} was never timed out"));
        assert_eq!(r.status, 408, "{r:?}");
        assert_eq!(r.json()["errcode"], -1, "{r:?}");
    }
}
