//! Logging: one access line per request, which config turns off, and no
//! secret or token in any line at any level.

mod common;

use std::time::Duration;

use common::fake_wechat::FetchFailure;
use common::setup::{env, ConfigBuilder, Harness, MP_APPID, SECRET};
use common::{wait_until, Proxy};

fn access_lines(proxy: &Proxy) -> Vec<String> {
    proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("wechat_token_proxy::access"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_gets_one_access_line() {
    let h = Harness::mp("stable").await;
    h.fake.revoke(MP_APPID);

    let r = h.http.get(&h.url("/cgi-bin/user/info?openid=o1")).await;
    assert_eq!(r.status, 200);

    wait_until("an access line", Duration::from_secs(5), || {
        !access_lines(&h.proxy).is_empty()
    })
    .await;
    let lines = access_lines(&h.proxy);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    for field in [
        "app=\"mp\"",
        "method=GET",
        "path=\"/cgi-bin/user/info\"",
        "status=200",
        "errcode=0",
        "retried=true",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    let refreshes: Vec<_> = h
        .proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("token refreshed"))
        .collect();
    assert_eq!(refreshes.len(), 2, "{refreshes:#?}");
    assert!(
        refreshes[1].contains("reason=\"token_error\"") && refreshes[1].contains("result=\"ok\"")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_false_turns_the_access_lines_off() {
    let fake = Harness::fake_with(Default::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .log_line("access_log = false");
    let h = Harness::start(fake, config).await;

    for _ in 0..3 {
        assert_eq!(h.http.get(&h.url("/cgi-bin/user/info")).await.status, 200);
    }

    assert!(access_lines(&h.proxy).is_empty());
    assert!(h.proxy.logs().iter().any(|l| l.contains("token refreshed")));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_token_reaches_the_log_even_at_trace() {
    let fake = Harness::fake_with(Default::default()).await;
    // The classic API puts the secret in the fetch URL.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 0");
    let proxy = Proxy::start_with_log(&config.render(), &env(), "trace");
    let h = Harness {
        fake,
        proxy,
        http: common::Http::new(),
    };
    h.wait_ready().await;

    h.fake.revoke(MP_APPID);
    let r = h
        .http
        .get(&h.url("/cgi-bin/user/info?access_token=client-sent-token"))
        .await;
    assert_eq!(r.json()["errcode"], 0);
    h.fake.set_fetch_failure(Some(FetchFailure::Errcode(
        40125,
        format!("invalid appsecret {SECRET}"),
    )));
    h.fake.revoke(MP_APPID);
    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.status, 503);
    assert!(
        !r.text().contains(SECRET),
        "an error answer echoed the secret: {}",
        r.text()
    );

    let logs = h.proxy.logs();
    assert!(
        logs.len() > 20,
        "trace logging produced only {} lines",
        logs.len()
    );
    let tokens = h.fake.issued_tokens();
    assert!(tokens.len() >= 2);
    for line in &logs {
        assert!(!line.contains(SECRET), "secret in log: {line}");
        assert!(
            !line.contains("client-sent-token"),
            "client token in log: {line}"
        );
        for token in &tokens {
            assert!(!line.contains(token.as_str()), "token in log: {line}");
        }
    }
}
