//! Running it in production: metrics, the refresh endpoint, graceful
//! shutdown, egress through a CONNECT proxy, secret rotation, JSON logs.

mod common;

use std::time::Duration;

use common::connect_proxy::ConnectProxy;
use common::fake_wechat::{FakeOptions, FakeWeChat};
use common::setup::{env, ConfigBuilder, Harness, MP_APPID, SECRET};
use common::{wait_until, wait_until_async, write_temp, Http, Proxy};

/// The value of the sample `name{…}` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels_part, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let all = labels.iter().all(|(k, v)| {
            labels_part
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        all.then(|| value.trim().parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_traffic_errcodes_retries_and_refreshes() {
    let h = Harness::mp("classic").await;
    let scrape = || async { h.http.get(&h.admin("/metrics")).await.text() };

    let before = scrape().await;
    assert_eq!(
        sample(
            &before,
            "wechat_proxy_requests_total",
            &[("app", "mp"), ("status", "200")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &before,
            "wechat_proxy_token_refreshes_total",
            &[("app", "mp"), ("reason", "startup"), ("result", "ok")]
        ),
        Some(1.0)
    );
    let left = sample(
        &before,
        "wechat_proxy_token_expires_in_seconds",
        &[("app", "mp")],
    )
    .unwrap();
    assert!((7000.0..=7200.0).contains(&left), "{left}");

    for _ in 0..3 {
        h.http.get(&h.url("/cgi-bin/user/info")).await;
    }
    h.fake.revoke(MP_APPID);
    h.http.get(&h.url("/cgi-bin/user/info")).await;
    h.http.get(&h.url("/test/errcode?code=45011")).await;

    let after = scrape().await;
    let get = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels);
    assert_eq!(
        get(
            "wechat_proxy_requests_total",
            &[("app", "mp"), ("status", "200")]
        ),
        Some(5.0)
    );
    assert_eq!(
        get("wechat_proxy_retries_total", &[("app", "mp")]),
        Some(1.0)
    );
    assert_eq!(
        get(
            "wechat_proxy_upstream_errcode_total",
            &[("app", "mp"), ("errcode", "40001")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "wechat_proxy_upstream_errcode_total",
            &[("app", "mp"), ("errcode", "45011")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "wechat_proxy_token_refreshes_total",
            &[("app", "mp"), ("reason", "token_error"), ("result", "ok")]
        ),
        Some(1.0)
    );
    // Six upstream calls: three, the rejected one, its retry, the 45011.
    assert_eq!(
        get(
            "wechat_proxy_upstream_duration_seconds_count",
            &[("app", "mp")]
        ),
        Some(6.0)
    );
    assert!(!after.contains(SECRET));
    for token in h.fake.issued_tokens() {
        assert!(!after.contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_refresh_endpoint_fetches_at_most_once_per_ten_seconds() {
    let h = Harness::mp("classic").await;
    let refresh = || async {
        h.http
            .post(&h.admin("/apps/mp/refresh"), "application/json", "")
            .await
    };

    // Within 10 s of the startup fetch: the current state, no fetch.
    let r = refresh().await;
    assert_eq!(
        (r.status, r.json()["refreshed"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(h.fake.token_fetches(), 1);

    // Poll until the window has passed; declined calls fetch nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let body = loop {
        let body = refresh().await.json();
        if body["refreshed"] == true {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never refreshed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(body["expires_in"].as_u64().unwrap() > 7000, "{body}");
    assert_eq!(h.fake.token_fetches(), 2);

    let again = refresh().await;
    assert_eq!(again.json()["refreshed"], false);
    assert_eq!(h.fake.token_fetches(), 2);
    let metrics = h.http.get(&h.admin("/metrics")).await.text();
    assert_eq!(
        sample(
            &metrics,
            "wechat_proxy_token_refreshes_total",
            &[("reason", "admin"), ("result", "ok")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_fails_readiness() {
    let Harness {
        fake,
        mut proxy,
        http,
    } = Harness::mp("stable").await;
    let slow = slow_request_under_way(&fake, &proxy, &http, 2000).await;

    proxy.signal("TERM");

    let ready_url = format!("{}/readyz", proxy.admin_url);
    wait_until_async("readiness to fail", Duration::from_secs(2), || async {
        Http::new().get(&ready_url).await.status == 503
    })
    .await;
    let fresh = Http::new()
        .try_send(get(&format!("{}/cgi-bin/user/info", proxy.url)))
        .await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted while draining"
    );
    slow.await
        .unwrap()
        .expect("the in-flight request is answered")
        .assert_ok();
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits after draining");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_gives_up_after_the_grace_period() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .proxy_line("shutdown_grace_s = 1");
    let Harness {
        fake,
        mut proxy,
        http,
    } = Harness::start(fake, config).await;
    let slow = slow_request_under_way(&fake, &proxy, &http, 30000).await;

    proxy.signal("TERM");

    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits after the grace period");
    assert!(status.success(), "{status}");
    assert!(
        slow.await.unwrap().is_err(),
        "the cut-off request cannot have an answer"
    );
    assert!(proxy.logs().iter().any(|l| l.contains("grace period over")));
}

/// Sends `/test/slow?ms=` through the proxy and returns once WeChat has it,
/// so a shutdown that follows meets it in flight.
async fn slow_request_under_way(
    fake: &FakeWeChat,
    proxy: &Proxy,
    http: &Http,
    ms: u64,
) -> tokio::task::JoinHandle<Result<common::Resp, String>> {
    let seen = fake.requests().len();
    let (http, url) = (http.clone(), format!("{}/test/slow?ms={ms}", proxy.url));
    let slow = tokio::spawn(async move { http.try_send(get(&url)).await });
    wait_until(
        "the slow request to reach WeChat",
        Duration::from_secs(5),
        || fake.requests().len() > seen,
    )
    .await;
    slow
}

/// A fake, a CONNECT proxy, and a proxy whose upstream traffic goes through
/// it (`app_proxy` overrides the global one).
async fn through_egress(
    auth_in_url: Option<&str>,
    expect_auth: Option<&str>,
) -> (Harness, ConnectProxy) {
    let egress = ConnectProxy::start(expect_auth).await;
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let url = match auth_in_url {
        Some(userinfo) => egress
            .url()
            .replace("http://", &format!("http://{userinfo}@")),
        None => egress.url(),
    };
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .upstream_line(&format!("proxy = {url:?}"));
    (Harness::start(fake, config).await, egress)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_connection_goes_through_the_egress_proxy() {
    let (h, egress) = through_egress(None, None).await;

    for _ in 0..5 {
        let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
        assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    }

    assert!(egress.tunnels() >= 1);
    assert_eq!(
        h.fake.connections(),
        egress.tunnels(),
        "a connection bypassed the egress proxy"
    );
    let port = h.fake.addr.port();
    assert!(
        egress
            .targets()
            .iter()
            .all(|t| *t == format!("localhost:{port}")),
        "{:?}",
        egress.targets()
    );
    assert!(egress.auths().iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_credentials_are_sent_as_basic_proxy_authorization() {
    // user "wechat", password "p@ss:word" (escaped in the URL).
    let (h, egress) = through_egress(
        Some("wechat:p%40ss%3Aword"),
        Some("Basic d2VjaGF0OnBAc3M6d29yZA=="),
    )
    .await;

    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;

    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert!(egress.tunnels() >= 1);
    assert!(h
        .proxy
        .logs()
        .iter()
        .all(|l| !l.contains("p@ss") && !l.contains("d2VjaGF0")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_tunnel_is_a_clear_502() {
    let (h, egress) = through_egress(None, None).await;
    assert_eq!(h.http.get(&h.url("/cgi-bin/user/info")).await.status, 200);

    egress.refuse_all().await;

    // The pooled tunnel is cut; a request may still race its closing and
    // fail on it. Once the proxy has noticed, every new tunnel is refused
    // and the answer names the egress proxy.
    let mut seen = Vec::new();
    let named = loop {
        let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
        assert_eq!(r.status, 502, "{}", r.text());
        let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
        if msg.contains(&format!("through egress proxy {}", egress.addr)) {
            break msg;
        }
        seen.push(msg);
        assert!(
            seen.len() < 5,
            "no answer named the egress proxy: {seen:#?}"
        );
    };
    assert!(named.contains("tunnel"), "{named}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_proxy_overrides_the_global_one() {
    let global = ConnectProxy::start(None).await;
    global.refuse_all().await;
    let own = ConnectProxy::start(None).await;
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .upstream_line(&format!("proxy = {:?}", global.url()))
        .mp("stable")
        .app_line(&format!("proxy = {:?}", own.url()));
    let h = Harness::start(fake, config).await;

    assert_eq!(
        h.http.get(&h.url("/cgi-bin/user/info")).await.json()["errcode"],
        0
    );
    assert_eq!(global.targets().len(), 0);
    assert_eq!(h.fake.connections(), own.tunnels());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_file_is_picked_up_after_a_40125() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let secret_file = write_temp("secret", SECRET);
    let config = ConfigBuilder::new(&fake)
        .mp_file_secret("classic", &secret_file)
        .app_line("min_refresh_interval_ms = 0");
    let h = Harness::start(fake, config).await;

    // The secret is reset in the console and the mounted file updated.
    h.fake.set_secret(MP_APPID, "rotated-secret-1234");
    std::fs::write(&secret_file, "rotated-secret-1234\n").unwrap();
    h.fake.revoke(MP_APPID);

    // The fetch with the old secret fails (40125); the file is re-read and
    // the next fetch, right away, uses the new one.
    wait_until_async(
        "a call to succeed with the rotated secret",
        Duration::from_secs(5),
        || async { h.http.get(&h.url("/cgi-bin/user/info")).await.status == 200 },
    )
    .await;
    assert!(h.proxy.logs().iter().any(|l| l.contains("secret changed")));
    assert!(h
        .proxy
        .logs()
        .iter()
        .all(|l| !l.contains("rotated-secret-1234")));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_secret_file() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let secret_file = write_temp("secret", "stale-secret");
    // A long backoff: only SIGHUP can make it recover within the test.
    let config = ConfigBuilder::new(&fake)
        .upstream_line("token_retry_min_ms = 60000")
        .upstream_line("token_retry_max_ms = 60000")
        .mp_file_secret("stable", &secret_file);
    let h = Harness::start_unready(fake, config);
    wait_until("the first fetch to fail", Duration::from_secs(5), || {
        h.fake.token_fetches() >= 1
    })
    .await;
    assert_eq!(h.http.get(&h.url("/cgi-bin/user/info")).await.status, 503);

    std::fs::write(&secret_file, SECRET).unwrap();
    h.proxy.signal("HUP");

    h.wait_ready().await;
    assert_eq!(h.http.get(&h.url("/cgi-bin/user/info")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let fake = FakeWeChat::start().await;
    fake.add_app(common::fake_wechat::AppKind::Mp, MP_APPID, SECRET);
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .log_line("format = \"json\"");
    let proxy = Proxy::start_with_log(&config.render(), &env(), "debug");
    let h = Harness {
        fake,
        proxy,
        http: Http::new(),
    };
    h.wait_ready().await;
    h.fake.revoke(MP_APPID);
    assert_eq!(
        h.http
            .get(&h.url("/cgi-bin/user/info?access_token=from-client"))
            .await
            .status,
        200
    );

    wait_until("an access line", Duration::from_secs(5), || {
        h.proxy.has_log("wechat_token_proxy::access")
    })
    .await;
    let logs = h.proxy.logs();
    let mut access = 0;
    for line in &logs {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v.get(field).is_some(), "{field} missing: {line}");
        }
        if v["target"] == "wechat_token_proxy::access" {
            access += 1;
            assert_eq!(v["status"], 200);
            assert_eq!(v["retried"], true);
        }
        assert!(!line.contains(SECRET) && !line.contains("from-client"));
        for token in h.fake.issued_tokens() {
            assert!(!line.contains(&token), "token in: {line}");
        }
    }
    assert_eq!(access, 1);
}

fn get(url: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(url).body(Default::default()).unwrap()
}
