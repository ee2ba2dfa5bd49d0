//! What the binary says and does before it serves: `check` proves both
//! listeners can be bound, exit codes tell a config error (2) from a bind
//! error (1), `--help` explains the defaults, and the first log lines say
//! what is running with which config.

mod common;

use std::time::Duration;

use common::fake_wechat::AppKind;
use common::setup::{ConfigBuilder, Harness, APP_TOML, CORP_ID, MP_APPID, SECRET, SECRET_VAR};
use common::{run_binary, wait_until, write_temp};

const ENV: &[(&str, &str)] = &[(SECRET_VAR, SECRET)];

/// Runs `check` on `config`; returns the exit code and stderr.
fn check(config: &str) -> (Option<i32>, String, String) {
    let path = write_temp("check.toml", config);
    let (status, out, err) = run_binary(&["check", "--config", path.to_str().unwrap()], ENV);
    assert!(!err.contains(SECRET), "the secret was printed: {err}");
    (status.code(), out, err)
}

#[test]
fn check_refuses_a_port_that_is_taken_with_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for (listen, admin, key) in [
        (addr.to_string(), "127.0.0.1:0".to_owned(), "proxy.listen"),
        (
            "127.0.0.1:0".to_owned(),
            addr.to_string(),
            "proxy.admin_listen",
        ),
    ] {
        let (code, out, err) = check(&format!(
            "[proxy]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{APP_TOML}"
        ));
        assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
        for part in [key, &addr.to_string(), "cannot listen"] {
            assert!(err.contains(part), "{part:?} missing in: {err}");
        }
    }
}

#[test]
fn check_releases_the_ports_it_tried() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n{APP_TOML}"
    );
    let (code, out, err) = check(&config);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("OK"), "{out}");
    // Twice: the first run did not keep the port.
    let (code, _, err) = check(&config);
    assert_eq!(code, Some(0), "{err}");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("check left the port bound");
}

#[test]
fn the_same_port_for_both_listeners_is_a_config_error() {
    for (listen, admin) in [
        ("127.0.0.1:18080", "127.0.0.1:18080"),
        ("0.0.0.0:18080", "127.0.0.1:18080"),
    ] {
        let (code, _, err) = check(&format!(
            "[proxy]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nallow_unauthenticated = true\n{APP_TOML}"
        ));
        assert_eq!(code, Some(2), "{listen} / {admin}: {err}");
        assert!(err.contains("proxy.admin_listen"), "{err}");
    }
}

#[test]
fn a_config_error_exits_with_code_2_from_check_and_from_serving() {
    let path = write_temp("bad.toml", "[proxy]\nlisen = 1\n");
    let path = path.to_str().unwrap();
    for args in [vec!["check", "--config", path], vec!["--config", path]] {
        let (status, _, err) = run_binary(&args, ENV);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
    }
}

#[test]
fn help_says_what_no_subcommand_does_and_what_the_exit_codes_mean() {
    let (status, out, _) = run_binary(&["--help"], &[]);
    assert!(status.success());
    for part in [
        "Without a subcommand",
        "serves",
        "RUST_LOG",
        "admin_listen",
        "Exit codes",
        "2 ",
        "1 ",
    ] {
        assert!(out.contains(part), "{part:?} missing in --help:\n{out}");
    }
}

#[test]
fn each_zero_that_would_break_serving_is_refused() {
    for (section, line, key) in [
        ("[proxy]", "shutdown_grace_s = 0", "proxy.shutdown_grace_s"),
        (
            "",
            "refresh_before_expiry_s = 0",
            "apps.mp.refresh_before_expiry_s",
        ),
        (
            "",
            "refresh_before_expiry_s = 7201",
            "apps.mp.refresh_before_expiry_s",
        ),
    ] {
        let config = if section.is_empty() {
            format!("{APP_TOML}{line}\n")
        } else {
            format!("{section}\n{line}\n{APP_TOML}")
        };
        let (code, _, err) = check(&config);
        assert_eq!(code, Some(2), "{line} accepted: {err}");
        assert!(
            err.contains(key) && err.contains("between"),
            "{line}: {err}"
        );
    }
}

#[test]
fn an_appid_of_the_wrong_shape_is_refused() {
    for (app, id, key) in [
        (APP_TOML, "wx0000", "apps.mp.appid"),
        (APP_TOML, "REPLACE_WITH_YOUR_APPID", "apps.mp.appid"),
        (APP_TOML, "ww1234567890abcdef", "apps.mp.appid"),
    ] {
        let config = app.replace(MP_APPID, id);
        let (code, _, err) = check(&config);
        assert_eq!(code, Some(2), "{id} accepted: {err}");
        assert!(err.contains(key) && err.contains("16 hex digits"), "{err}");
    }
    let wecom = format!(
        "[apps.work]\nkind = \"wecom\"\ncorpid = \"wa1234567890abcdef\"\nsecret_env = \"{SECRET_VAR}\"\n"
    );
    let (code, _, err) = check(&wecom);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("apps.work.corpid") || err.contains("apps.work.appid"),
        "{err}"
    );
    let (code, _, err) = check(&wecom.replace("wa1234567890abcdef", CORP_ID));
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_log_lines_say_what_runs_with_which_config() {
    let fake = Harness::fake_with(Default::default()).await;
    fake.add_app(AppKind::WeCom, CORP_ID, SECRET);
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .wecom("work")
        .proxy_line(r#"default_app = "mp""#);
    let h = Harness::start(fake, config).await;
    let path = h.proxy.config_path.display().to_string();

    let wanted = [
        vec!["starting", env!("CARGO_PKG_VERSION"), path.as_str()],
        vec![
            "app",
            "mp",
            "kind=\"mp\"",
            MP_APPID,
            "token_api=\"classic\"",
        ],
        vec![
            "app",
            "work",
            "kind=\"wecom\"",
            CORP_ID,
            "token_api=\"wecom\"",
        ],
        vec!["client_key=false", "admin_key=false"],
    ];
    wait_until("the startup lines", Duration::from_secs(5), || {
        let logs = h.proxy.logs();
        wanted
            .iter()
            .all(|parts| logs.iter().any(|l| parts.iter().all(|p| l.contains(p))))
    })
    .await;
    // The allocator's built-in settings are read before main: one it does
    // not take is only a line of its own on stderr, and silently ignored.
    let refused: Vec<String> = h
        .proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("<jemalloc>"))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_line_gives_latency_to_the_microsecond() {
    let h = Harness::mp("stable").await;
    for _ in 0..5 {
        assert_eq!(
            h.http
                .get(&h.url("/cgi-bin/user/info?openid=o1"))
                .await
                .status,
            200
        );
    }
    let latencies = || -> Vec<String> {
        h.proxy
            .logs()
            .iter()
            .filter_map(|l| l.split("latency_ms=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
            .collect()
    };
    wait_until("five access lines", Duration::from_secs(5), || {
        latencies().len() == 5
    })
    .await;
    for latency in latencies() {
        let decimals = latency.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3,
            "latency_ms={latency}: finer than a microsecond"
        );
        assert!(latency.parse::<f64>().is_ok(), "latency_ms={latency}");
    }
}
