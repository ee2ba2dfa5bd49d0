//! A bad config is refused at start, naming the file and the key, with a
//! non-zero exit; `check` validates without serving.

mod common;

use common::setup::{SECRET, SECRET_VAR};
use common::{run_binary, write_temp};

use common::setup::APP_TOML as GOOD_APP;

/// Runs `check` on `config` (and, for the first cases, the server itself)
/// and returns stderr, asserting a non-zero exit.
fn refused(config: &str, env: &[(&str, &str)]) -> (String, String) {
    let path = write_temp("bad.toml", config);
    let path_str = path.to_str().unwrap().to_owned();
    for args in [
        vec!["check", "--config", &path_str],
        vec!["--config", &path_str],
    ] {
        let (status, _out, err) = run_binary(&args, env);
        assert!(!status.success(), "{args:?} accepted:\n{config}");
        assert!(
            err.contains(&path_str),
            "the message does not name the file: {err}"
        );
        assert!(!err.contains(SECRET), "the message shows the secret: {err}");
    }
    let (_, _, err) = run_binary(&["check", "--config", &path_str], env);
    (err, path_str)
}

fn assert_says(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
}

const ENV: &[(&str, &str)] = &[(SECRET_VAR, SECRET)];

#[test]
fn invalid_toml_names_the_line() {
    let (err, _) = refused("[proxy]\nlisten = \"127.0.0.1:8080\n", ENV);
    assert_says(&err, &["line 2"]);
}

#[test]
fn a_missing_appid_is_named() {
    let (err, _) = refused(
        "[apps.mp]\nkind = \"mp\"\nsecret_env = \"TEST_APP_SECRET\"\n",
        ENV,
    );
    assert_says(&err, &["apps.mp.appid", "missing"]);
}

#[test]
fn an_unknown_kind_is_named() {
    let (err, _) = refused(&GOOD_APP.replace("kind = \"mp\"", "kind = \"mpp\""), ENV);
    assert_says(&err, &["kind", "mpp", "`mp`", "`wecom`"]);
}

#[test]
fn an_unset_secret_env_names_the_variable() {
    let (err, _) = refused(GOOD_APP, &[]);
    assert_says(&err, &["apps.mp.secret_env", "TEST_APP_SECRET", "not set"]);
}

#[test]
fn an_unreadable_secret_file_names_the_path() {
    let config = GOOD_APP.replace(
        "secret_env = \"TEST_APP_SECRET\"",
        "secret_file = \"/nonexistent/wechat-secret\"",
    );
    let (err, _) = refused(&config, ENV);
    assert_says(&err, &["apps.mp.secret_file", "/nonexistent/wechat-secret"]);
}

#[test]
fn a_secret_written_inline_is_refused() {
    let config = GOOD_APP.replace(
        "secret_env = \"TEST_APP_SECRET\"",
        &format!("secret = \"{SECRET}\""),
    );
    let (err, _) = refused(&config, ENV);
    assert_says(&err, &["apps.mp.secret", "secret_env", "secret_file"]);
}

#[test]
fn an_address_that_does_not_parse_is_named() {
    let (err, _) = refused(
        &format!("[proxy]\nlisten = \"localhost:80:80\"\n{GOOD_APP}"),
        ENV,
    );
    assert_says(&err, &["proxy.listen", "localhost:80:80"]);
}

#[test]
fn an_unknown_key_is_named() {
    let (err, _) = refused(
        &format!("[proxy]\nlisen = \"127.0.0.1:8080\"\n{GOOD_APP}"),
        ENV,
    );
    assert_says(&err, &["unknown field `lisen`"]);
    let (err, _) = refused(&format!("{GOOD_APP}refresh_before_expiry = 300\n"), ENV);
    assert_says(&err, &["unknown field `refresh_before_expiry`"]);
}

#[test]
fn no_apps_is_refused() {
    let (err, _) = refused("[proxy]\nlisten = \"127.0.0.1:8080\"\n", ENV);
    assert_says(&err, &["apps", "no apps"]);
}

#[test]
fn a_base_url_that_is_not_http_is_named() {
    let (err, _) = refused(
        &format!("{GOOD_APP}base_url = \"ftp://api.weixin.qq.com\"\n"),
        ENV,
    );
    assert_says(
        &err,
        &["apps.mp.base_url", "ftp://api.weixin.qq.com", "http(s)"],
    );
}

#[test]
fn an_unknown_default_app_is_named() {
    let (err, _) = refused(&format!("[proxy]\ndefault_app = \"oa\"\n{GOOD_APP}"), ENV);
    assert_says(&err, &["proxy.default_app", "'oa'", "mp"]);
}

#[test]
fn a_missing_config_file_is_named() {
    let (status, _, err) = run_binary(&["check", "--config", "/nonexistent/config.toml"], ENV);
    assert!(!status.success());
    assert_says(&err, &["/nonexistent/config.toml", "cannot read"]);
}

#[test]
fn a_taken_listen_address_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = write_temp(
        "taken.toml",
        &format!("[proxy]\nlisten = \"{addr}\"\nadmin_listen = \"127.0.0.1:0\"\n{GOOD_APP}"),
    );
    let path = path.to_str().unwrap();
    let (status, _, err) = run_binary(&["--config", path], ENV);
    // 1, not 2: the config is fine, and a restart may find the port free.
    assert_eq!(status.code(), Some(1), "{err}");
    assert_says(
        &err,
        &[path, "proxy.listen", &addr.to_string(), "cannot listen"],
    );
}

#[test]
fn help_and_version_work() {
    let (status, out, _) = run_binary(&["--help"], &[]);
    assert!(status.success());
    assert_says(&out, &["--config", "check"]);
    let (status, out, _) = run_binary(&["--version"], &[]);
    assert!(status.success());
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

#[test]
fn a_bad_egress_proxy_is_named_without_its_password() {
    let config = format!("[upstream]\nproxy = \"socks5://user:hunter2@10.0.0.1:1080\"\n{GOOD_APP}");
    let (err, _) = refused(&config, ENV);
    assert_says(&err, &["upstream.proxy", "http://"]);
    assert!(!err.contains("hunter2"), "the password was printed: {err}");

    let config = format!("{GOOD_APP}proxy = \"http://user:hunter2@10.0.0.1\"\n");
    let (err, _) = refused(&config, ENV);
    assert_says(&err, &["apps.mp.proxy", "port"]);
    assert!(!err.contains("hunter2"), "the password was printed: {err}");
}

#[test]
fn a_bad_fallback_base_url_is_named() {
    let (err, _) = refused(
        &format!("{GOOD_APP}fallback_base_urls = [\"https://api2.weixin.qq.com\", \"api3\"]\n"),
        ENV,
    );
    assert_says(&err, &["apps.mp.fallback_base_urls", "'api3'", "http(s)"]);
    let (err, _) = refused(
        &format!("{GOOD_APP}fallback_base_urls = [\"https://api.weixin.qq.com\"]\n"),
        ENV,
    );
    assert_says(
        &err,
        &["apps.mp.fallback_base_urls", "api.weixin.qq.com", "twice"],
    );
}

#[test]
fn a_base_url_with_credentials_is_named_without_its_password() {
    for url in [
        "https://user:hunter2@api.weixin.qq.com",
        "https://user:hunter2@api.weixin.qq.com/x?y=1",
        "ftp://user:hunter2@api.weixin.qq.com",
    ] {
        let (err, _) = refused(&format!("{GOOD_APP}base_url = \"{url}\"\n"), ENV);
        assert_says(&err, &["apps.mp.base_url", "api.weixin.qq.com"]);
        assert!(!err.contains("hunter2"), "the password was printed: {err}");
    }
}

#[test]
fn an_egress_proxy_without_a_host_is_refused() {
    for url in ["http://:3128", "http://user:hunter2@:3128"] {
        let (err, _) = refused(&format!("[upstream]\nproxy = \"{url}\"\n{GOOD_APP}"), ENV);
        assert_says(&err, &["upstream.proxy", "host"]);
        assert!(!err.contains("hunter2"), "the password was printed: {err}");
    }
}

#[test]
fn a_bad_agentid_is_named() {
    let wecom = "[apps.work]\nkind = \"wecom\"\ncorpid = \"ww1234567890abcdef\"\nsecret_env = \"TEST_APP_SECRET\"\n";
    let (err, _) = refused(&format!("{wecom}agentid = 0\n"), ENV);
    assert_says(&err, &["apps.work.agentid", "positive integer"]);
    let (err, _) = refused(&format!("{wecom}agentid = \"1000002\"\n"), ENV);
    assert_says(&err, &["agentid"]);
    let (err, _) = refused(&format!("{GOOD_APP}agentid = 1000002\n"), ENV);
    assert_says(&err, &["apps.mp.agentid", "wecom"]);
}

/// An app table whose id comes from a variable.
fn app_with(id_line: &str, kind: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[apps.mp]\nkind = \"{kind}\"\n{id_line}\nsecret_env = \"{SECRET_VAR}\"\n"
    )
}

#[test]
fn an_appid_from_the_environment_is_read_and_checked() {
    let config = app_with("appid_env = \"TEST_APPID\"", "mp");
    let path = write_temp("appid-env.toml", &config);
    let path = path.to_str().unwrap();

    let (status, out, err) = run_binary(
        &["check", "--config", path],
        &[
            (SECRET_VAR, SECRET),
            ("TEST_APPID", " wx1234567890abcdef\n"),
        ],
    );
    assert!(
        status.success(),
        "an appid from the environment should pass: {err}"
    );
    assert!(out.contains("OK (1 app: mp)"), "{out}");

    let (err, _) = refused(&config, ENV);
    assert_says(&err, &["apps.mp.appid_env", "TEST_APPID", "not set"]);

    let (err, _) = refused(
        &config,
        &[(SECRET_VAR, SECRET), ("TEST_APPID", "your-appid")],
    );
    assert_says(
        &err,
        &[
            "apps.mp.appid_env",
            "'your-appid' (from TEST_APPID)",
            "wx and 16 hex digits",
        ],
    );
}

#[test]
fn an_id_given_twice_or_of_the_wrong_kind_is_named() {
    let both = app_with(
        "appid = \"wx1234567890abcdef\"\nappid_env = \"TEST_APPID\"",
        "mp",
    );
    let (err, _) = refused(&both, ENV);
    assert_says(&err, &["apps.mp.appid_env", "not both"]);

    let corp = app_with("corpid_env = \"TEST_CORPID\"", "mp");
    let (err, _) = refused(&corp, ENV);
    assert_says(&err, &["apps.mp.corpid_env", "kind = \"wecom\""]);
}

#[test]
fn a_corpid_and_a_component_appid_from_the_environment_are_read() {
    let wecom = app_with("corpid_env = \"TEST_CORPID\"", "wecom");
    let platform = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[platforms.saas]\ncomponent_appid_env = \"TEST_COMPONENT\"\nsecret_env = \"{SECRET_VAR}\"\n"
    );
    let env = [
        (SECRET_VAR, SECRET),
        ("TEST_CORPID", "ww1234567890abcdef"),
        ("TEST_COMPONENT", "wx1234567890abcdef"),
    ];
    for config in [&wecom, &platform] {
        let path = write_temp("id-env.toml", config);
        let (status, _, err) = run_binary(&["check", "--config", path.to_str().unwrap()], &env);
        assert!(status.success(), "{config}\nshould pass: {err}");
    }
    let (err, _) = refused(
        &platform,
        &[(SECRET_VAR, SECRET), ("TEST_COMPONENT", "nope")],
    );
    assert_says(
        &err,
        &[
            "platforms.saas.component_appid_env",
            "(from TEST_COMPONENT)",
        ],
    );
}

#[test]
fn a_secret_with_spaces_is_a_placeholder_and_refused() {
    let (err, _) = refused(GOOD_APP, &[(SECRET_VAR, "REPLACE WITH THE APPSECRET")]);
    assert_says(&err, &["apps.mp.secret_env", "placeholder"]);
    assert!(
        !err.contains("REPLACE WITH"),
        "the message shows the secret: {err}"
    );
}
