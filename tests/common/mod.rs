//! Shared harness for the black-box tests: a fake WeChat server ([`fake_wechat`]), the real
//! proxy binary as a child process ([`Proxy`]), and a small HTTP client ([`Http`]).
//!
//! A typical test starts a `FakeWeChat`, writes a config pointing the proxy at its
//! `base_url` and `ca_file` ([`setup`] knows the config format), starts the `Proxy`, sends
//! requests with `Http`, and checks what the fake recorded.
#![allow(dead_code)]

pub mod client;
pub mod connect_proxy;
pub mod fake_wechat;
pub mod proxy;
pub mod push;
pub mod raw;
pub mod redis;
pub mod relay;
pub mod setup;
pub mod tls;

use std::time::{Duration, Instant};

// Each test binary uses some of these; the rest would warn as unused.
#[allow(unused_imports)]
pub use client::{Download, Http, Resp};
#[allow(unused_imports)]
pub use proxy::{run_binary, write_temp, Proxy};

/// Polls `f` every 20 ms until it holds, for effects that happen in another process;
/// panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_until`], for conditions that need a request to check.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port from `range` for which `take` succeeds, tried in random
/// order. For servers the tests stop and start again on the same port: the
/// range must stay below the kernel's ephemeral range (32768 and up on
/// Linux), or an outgoing connection could take the port in between.
pub fn port_outside_ephemeral_range<T>(
    range: std::ops::Range<u16>,
    mut take: impl FnMut(u16) -> Option<T>,
) -> T {
    for _ in 0..200 {
        if let Some(taken) = take(fastrand::u16(range.clone())) {
            return taken;
        }
    }
    panic!("no free loopback port in {range:?}");
}

/// SHA-1 in hex by Python's hashlib: a computation independent of the
/// proxy's, for checking JS-SDK signatures.
pub fn sha1_by_python(text: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha1(sys.argv[1].encode()).hexdigest())",
            text,
        ])
        .output()
        .expect("run python3");
    assert!(out.status.success(), "python3 failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `n` GETs of `url` at once, each on its own task; their answers in order.
pub async fn concurrently(http: &Http, url: &str, n: usize) -> Vec<Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (http.clone(), url.to_owned());
            tokio::spawn(async move { http.get(&url).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

/// A file of the repository as committed (`git show HEAD:PATH`), not as the
/// working copy holds it: the README's steps may edit config.toml, and the
/// tests must still check what ships.
pub fn committed(path: &str) -> String {
    let out = std::process::Command::new("git")
        .args(["show", &format!("HEAD:{path}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git show HEAD:{path} failed (the tests read the committed file): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|_| panic!("{path} is not UTF-8"))
}

/// Waits (up to 10 s) until `proxy`'s `/readyz` answers 200.
pub async fn wait_ready(proxy: &Proxy, http: &Http) {
    let url = format!("{}/readyz", proxy.admin_url);
    wait_until_async("the proxy to be ready", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.status == 200 }
    })
    .await;
}

/// Starts the proxy and waits until it is ready: the proxy, and how long
/// that took from spawn (a figure the scale tests print).
pub async fn start_ready(
    config_toml: &str,
    env: &[(&str, &str)],
    http: &Http,
) -> (Proxy, Duration) {
    let started = Instant::now();
    let proxy = Proxy::start(config_toml, env);
    wait_ready(&proxy, http).await;
    (proxy, started.elapsed())
}

/// `n` concurrent GETs of `path`, request `i` to replica `i % len`.
pub async fn spread(http: &Http, replicas: &[Proxy], n: usize, path: &str) -> Vec<Resp> {
    spread_paths(http, replicas, &vec![path.to_owned(); n], n).await
}

/// GETs each of `paths`, at most `width` at a time, request `i` to replica
/// `i % len`; their answers in order. The bound keeps thousands of calls
/// from opening thousands of connections at once.
pub async fn spread_paths(
    http: &Http,
    replicas: &[Proxy],
    paths: &[String],
    width: usize,
) -> Vec<Resp> {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(width));
    let tasks: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let (http, limit) = (http.clone(), limit.clone());
            let url = format!("{}{path}", replicas[i % replicas.len()].url);
            tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("open");
                http.get(&url).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(paths.len());
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

/// The sum of the `/metrics` samples of `name` whose labels include all of
/// `labels`: a counter over the labels left out (reason, result …).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{')?.split_once("} "))
        .filter(|(found, _)| {
            labels
                .iter()
                .all(|(k, v)| found.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Asserts every answer is a 200 with errcode 0.
pub fn assert_all_ok(answers: &[Resp]) {
    for r in answers {
        r.assert_ok();
    }
}
