//! Who may call: the inbound keys of the proxy and admin listeners, the refusal to start
//! exposed without one, and each app's path policy.

mod common;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use common::setup::{ConfigBuilder, Harness, SECRET, SECRET_VAR};
use common::{run_binary, write_temp, Resp};

const CLIENT_KEY: &str = "client-key-5b8e2f0c9d174a63";
const ADMIN_KEY: &str = "admin-key-1f6a9c3e7b2d4058";

/// A proxy whose listeners require [`CLIENT_KEY`] and [`ADMIN_KEY`] (read from files).
async fn with_keys() -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let client = write_temp("client.key", &format!("{CLIENT_KEY}\n"));
    let admin = write_temp("admin.key", ADMIN_KEY);
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .proxy_line(&format!(
            "client_key_file = {:?}",
            client.display().to_string()
        ))
        .proxy_line(&format!(
            "admin_key_file = {:?}",
            admin.display().to_string()
        ));
    Harness::start(fake, config).await
}

/// A proxy whose app has `rules` (TOML lines for the app table).
async fn with_policy(rules: &[&str]) -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let mut config = ConfigBuilder::new(&fake).mp("stable");
    for rule in rules {
        config = config.app_line(rule);
    }
    Harness::start(fake, config).await
}

async fn get_with(h: &Harness, url: &str, header: Option<(&str, &str)>) -> Resp {
    let mut req = Request::get(url);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    h.http
        .send(req.body(Full::<Bytes>::default()).unwrap())
        .await
}

fn assert_refused(r: &Resp, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    let body = r.json();
    assert_eq!(body["errcode"], -1, "{body}");
    let msg = body["errmsg"].as_str().unwrap();
    assert!(msg.contains(says), "{msg:?} should say {says:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_without_the_key_is_401_json_and_never_forwarded() {
    let h = with_keys().await;

    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;

    assert_refused(&r, 401, "Authorization: Bearer");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"wechat-token-proxy\"")
    );
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_is_401() {
    let h = with_keys().await;
    let wrong = format!("{CLIENT_KEY}x");
    for header in [
        ("authorization", format!("Bearer {wrong}")),
        ("x-wechat-proxy-key", wrong.clone()),
        ("x-wechat-proxy-key", ADMIN_KEY.to_owned()),
        ("authorization", format!("Basic {CLIENT_KEY}")),
    ] {
        let r = get_with(
            &h,
            &h.url("/cgi-bin/user/info"),
            Some((header.0, &header.1)),
        )
        .await;
        assert_refused(&r, 401, "key");
    }
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_in_either_header_is_accepted_and_stripped_before_wechat() {
    let h = with_keys().await;
    let bearer = format!("Bearer {CLIENT_KEY}");
    for header in [
        ("authorization", bearer.as_str()),
        ("x-wechat-proxy-key", CLIENT_KEY),
    ] {
        let r = get_with(&h, &h.url("/cgi-bin/user/info"), Some(header)).await;
        r.assert_ok();
    }
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 2);
    for request in seen {
        assert!(request.token_ok);
        assert!(request.headers.get("authorization").is_none());
        assert!(request.headers.get("x-wechat-proxy-key").is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_need_the_admin_key_but_probes_do_not() {
    let h = with_keys().await;

    assert_eq!(h.http.get(&h.admin("/healthz")).await.status, 200);
    assert_eq!(h.http.get(&h.admin("/readyz")).await.status, 200);
    let r = h.http.get(&h.admin("/apps")).await;
    assert_refused(&r, 401, "key");
    let client_key = format!("Bearer {CLIENT_KEY}");
    let r = get_with(&h, &h.admin("/apps"), Some(("authorization", &client_key))).await;
    assert_refused(&r, 401, "key");
    let refresh = h
        .http
        .post(&h.admin("/apps/mp/refresh"), "application/json", "")
        .await;
    assert_refused(&refresh, 401, "key");

    let r = get_with(
        &h,
        &h.admin("/apps"),
        Some(("x-wechat-proxy-key", ADMIN_KEY)),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["name"], "mp");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_never_reach_the_log() {
    let fake = Harness::fake_with(Default::default()).await;
    let client = write_temp("client.key", CLIENT_KEY);
    let config = ConfigBuilder::new(&fake).mp("stable").proxy_line(&format!(
        "client_key_file = {:?}",
        client.display().to_string()
    ));
    let proxy = common::Proxy::start_with_log(&config.render(), &common::setup::env(), "trace");
    let h = Harness {
        fake,
        proxy,
        http: common::Http::new(),
    };
    h.wait_ready().await;
    let bearer = format!("Bearer {CLIENT_KEY}");
    let r = get_with(
        &h,
        &h.url("/cgi-bin/user/info"),
        Some(("authorization", &bearer)),
    )
    .await;
    assert_eq!(r.status, 200);
    let wrong = format!("Bearer {CLIENT_KEY}-wrong");
    let r = get_with(
        &h,
        &h.url("/cgi-bin/user/info"),
        Some(("authorization", &wrong)),
    )
    .await;
    assert_eq!(r.status, 401);

    let logs = h.proxy.logs();
    assert!(
        logs.len() > 10,
        "trace logging produced {} lines",
        logs.len()
    );
    for line in logs {
        assert!(!line.contains(CLIENT_KEY), "the key is in the log: {line}");
    }
}

/// Runs `check` on a config with `proxy_lines` (and a valid app); returns success and
/// stderr.
fn check(proxy_lines: &str, env: &[(&str, &str)]) -> (bool, String) {
    let config = format!(
        "[proxy]\n{proxy_lines}\n[apps.mp]\nkind = \"mp\"\nappid = \"wx1234567890abcdef\"\nsecret_env = \"{SECRET_VAR}\"\n"
    );
    let path = write_temp("inbound.toml", &config);
    let path = path.to_str().unwrap();
    let mut all_env = vec![(SECRET_VAR, SECRET)];
    all_env.extend_from_slice(env);
    let (status, _, err) = run_binary(&["check", "--config", path], &all_env);
    (status.success(), err)
}

#[test]
fn a_listener_reachable_from_other_hosts_without_a_key_refuses_to_start() {
    let (ok, err) = check("listen = \"0.0.0.0:8080\"", &[]);
    assert!(!ok);
    for part in [
        "proxy.listen",
        "0.0.0.0:8080",
        "proxy.client_key_env",
        "allow_unauthenticated",
    ] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }

    let (ok, err) = check("admin_listen = \"[::]:8079\"", &[]);
    assert!(!ok);
    for part in ["proxy.admin_listen", "proxy.admin_key_env"] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
}

#[test]
fn a_key_or_allow_unauthenticated_lets_an_exposed_listener_start() {
    let (ok, err) = check(
        "listen = \"0.0.0.0:8080\"\nclient_key_env = \"PROXY_KEY\"",
        &[("PROXY_KEY", CLIENT_KEY)],
    );
    assert!(ok, "{err}");
    let (ok, err) = check(
        "listen = \"0.0.0.0:8080\"\nadmin_listen = \"0.0.0.0:8079\"\nallow_unauthenticated = true",
        &[],
    );
    assert!(ok, "{err}");
}

#[test]
fn a_short_or_missing_key_is_refused_naming_the_key_but_not_showing_it() {
    let (ok, err) = check(
        "client_key_env = \"PROXY_KEY\"",
        &[("PROXY_KEY", "hunter2")],
    );
    assert!(!ok);
    assert!(err.contains("proxy.client_key_env"), "{err}");
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains("hunter2"), "the key is shown: {err}");

    let (ok, err) = check("admin_key_env = \"NOT_SET_ANYWHERE\"", &[]);
    assert!(!ok);
    assert!(err.contains("NOT_SET_ANYWHERE"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_path_is_403_naming_the_rule() {
    let h = with_policy(&[r#"deny_paths = ["/cgi-bin/message/mass/*", "/cgi-bin/menu"]"#]).await;

    let r = h.http.get(&h.url("/cgi-bin/message/mass/sendall")).await;
    assert_refused(&r, 403, "deny_paths rule \"/cgi-bin/message/mass/*\"");
    let r = h.http.get(&h.url("/cgi-bin/menu/delete")).await;
    assert_refused(&r, 403, "deny_paths rule \"/cgi-bin/menu\"");
    assert!(h.fake.requests().is_empty());

    let r = h.http.get(&h.url("/cgi-bin/user/info")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_outside_allow_paths_is_403_and_deny_wins_over_allow() {
    let h = with_policy(&[
        r#"allow_paths = ["/cgi-bin/message/*", "/cgi-bin/user/info"]"#,
        r#"deny_paths = ["/cgi-bin/message/mass/*"]"#,
    ])
    .await;

    assert_eq!(h.http.get(&h.url("/cgi-bin/user/info")).await.status, 200);
    let r = h
        .http
        .post(
            &h.url("/cgi-bin/message/custom/send"),
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h.http.get(&h.url("/cgi-bin/user/get")).await;
    assert_refused(&r, 403, "matches no allow_paths rule");
    let r = h.http.get(&h.url("/cgi-bin/message/mass/send")).await;
    assert_refused(&r, 403, "deny_paths rule");
    assert_eq!(h.fake.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_a_policy_other_spellings_of_a_path_are_refused() {
    let h = with_policy(&[r#"deny_paths = ["/cgi-bin/menu"]"#]).await;
    for path in [
        "/cgi-bin//menu/delete",
        "/cgi-bin/./menu/delete",
        "/cgi-bin/%6Denu/delete",
    ] {
        let r = h.http.get(&h.url(path)).await;
        assert_refused(&r, 403, "not in plain form");
    }
    // Case does not dodge a rule either.
    let r = h.http.get(&h.url("/CGI-BIN/MENU/delete")).await;
    assert_refused(&r, 403, "deny_paths rule");
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn placeholder_token_answers_stay_reachable_under_a_policy() {
    let h = with_policy(&[r#"allow_paths = ["/cgi-bin/user/"]"#]).await;

    let r = h
        .http
        .get(&h.url("/cgi-bin/token?grant_type=client_credential&appid=x&secret=y"))
        .await;

    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-wechat-token-proxy"), Some("placeholder"));
}

#[test]
fn a_path_rule_that_is_not_an_absolute_path_is_refused_naming_it() {
    let config = format!(
        "[apps.mp]\nkind = \"mp\"\nappid = \"wx1234567890abcdef\"\nsecret_env = \"{SECRET_VAR}\"\nallow_paths = [\"/cgi-bin/user/\", \"cgi-bin/menu\"]\n"
    );
    let path = write_temp("policy.toml", &config);
    let (status, _, err) = run_binary(
        &["check", "--config", path.to_str().unwrap()],
        &[(SECRET_VAR, SECRET)],
    );
    assert!(!status.success());
    assert!(err.contains("apps.mp.allow_paths[1]"), "{err}");
    assert!(err.contains("must start with '/'"), "{err}");
}
