//! Upstream faults at the edges of a request: an answer that stalls mid-body, an upload
//! that outlasts the request timeout while still flowing, and a pooled connection the
//! server closed as the request arrived.

mod common;

use std::time::Duration;

use common::raw::RawConn;
use common::setup::{ConfigBuilder, Harness};

/// Longer than any answer these tests wait for once fixed; today's hangs end here.
const BOUND: Duration = Duration::from_secs(15);

async fn with_lines(upstream: &[&str], proxy: &[&str]) -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let mut config = ConfigBuilder::new(&fake).mp("stable");
    for line in upstream {
        config = config.upstream_line(line);
    }
    for line in proxy {
        config = config.proxy_line(line);
    }
    Harness::start(fake, config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inspected_answer_that_stalls_mid_body_is_a_504() {
    let h = with_lines(&["request_timeout_ms = 500"], &[]).await;

    let r = tokio::time::timeout(BOUND, h.http.get(&h.url("/test/stall_json")))
        .await
        .expect("the stalled answer is bounded");

    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    assert_eq!(r.json()["errcode"], -1);
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_that_stalls_is_cut_off() {
    let h = with_lines(&["request_timeout_ms = 500"], &[]).await;

    let r = tokio::time::timeout(BOUND, h.http.get(&h.url("/test/stall_stream")))
        .await
        .expect("the stalled download is bounded");

    assert_eq!(r.status, 200);
    assert!(
        r.body_error.is_some(),
        "the client sees a broken body: {r:?}"
    );
    assert_eq!(r.body.len(), 4096);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_keeps_flowing_outlasts_the_request_timeout() {
    let h = with_lines(
        &["request_timeout_ms = 500"],
        &["max_replay_body_bytes = 1024"],
    )
    .await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    conn.send(
        b"POST /cgi-bin/media/upload HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // 2 s of upload, a chunk every 100 ms: four times the request timeout.
    let chunk = vec![b'u'; 4096];
    for _ in 0..20 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        conn.send(&framed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.send(b"0\r\n\r\n").await.unwrap();

    let r = conn.read_response().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body_len"], 20 * 4096);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_streamed_upload_is_still_cut_off() {
    let h = with_lines(
        &["request_timeout_ms = 500"],
        &["max_replay_body_bytes = 1024", "idle_timeout_ms = 1000"],
    )
    .await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    conn.send(
        b"POST /cgi-bin/media/upload HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    conn.send(&[b'u'; 8192]).await.unwrap();

    let r = tokio::time::timeout(BOUND, conn.read_response())
        .await
        .expect("a stalled upload is bounded");
    assert!(r.status >= 400, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_closed_unanswered_is_retried_on_a_fresh_one() {
    let h = with_lines(&[], &[]).await;
    h.fake.set_close_reused(true);

    for i in 0..6u32 {
        let r = if i.is_multiple_of(2) {
            h.http
                .post(
                    &h.url("/cgi-bin/message/custom/send"),
                    "application/json",
                    r#"{"touser":"o1"}"#,
                )
                .await
        } else {
            h.http.get(&h.url("/cgi-bin/user/info")).await
        };
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }

    assert!(h.fake.dropped_reused() >= 3, "the fault happened");
    // Each request reached the application once.
    assert_eq!(h.fake.requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_requests_racing_the_upstreams_idle_close_all_succeed() {
    // The proxy keeps pooled connections longer than the upstream does, so each
    // request spaced about the upstream's idle timeout after the last may find
    // its connection closing under it.
    const IDLE_MS: u64 = 10;
    const CLIENTS: usize = 8;
    const EACH: usize = 400;
    let h = with_lines(&["idle_timeout_ms = 60000"], &[]).await;
    h.fake.set_idle_close(Some(Duration::from_millis(IDLE_MS)));

    let started = std::time::Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let http = h.http.clone();
        let get = h.url("/cgi-bin/user/info");
        let post = h.url("/cgi-bin/message/custom/send");
        loops.spawn(async move {
            let mut failed = Vec::new();
            for i in 0..EACH {
                // Spaced across the close: a little before, at and after it.
                let gap = IDLE_MS * 1000 - 1000 + fastrand::u64(0..2000);
                tokio::time::sleep(Duration::from_micros(gap)).await;
                let r = if (client + i) % 2 == 0 {
                    http.post(&post, "application/json", r#"{"touser":"o1"}"#)
                        .await
                } else {
                    http.get(&get).await
                };
                if r.status != 200 {
                    failed.push(format!("{} {:?}", r.status, r.body));
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = loops.join_next().await {
        failed.extend(done.unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        CLIENTS * EACH,
        &failed[..failed.len().min(3)]
    );
    assert!(
        h.fake.connections() > CLIENTS * 10,
        "the upstream closed idle connections ({} opened)",
        h.fake.connections()
    );
}
