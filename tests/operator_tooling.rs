//! What operators get besides the binary, checked with the ecosystem's own
//! tools: the Prometheus alert rules (promtool), the Grafana dashboard (its
//! JSON and PromQL, and every metric it names against the running proxy),
//! and the admin status page in a real headless Chromium.
//!
//! promtool and chromium are installed by `.ci/test` where missing; a test
//! that cannot find them fails and says so rather than passing unchecked.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use common::fake_wechat::{AppKind, FetchFailure};
use common::setup::{ConfigBuilder, Harness, MP_APPID, SECRET};
use common::{wait_until_async, write_temp, Resp};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts_test.yml";
const DASHBOARD: &str = "deploy/grafana/wechat-token-proxy.json";

/// Metrics the rules and the dashboard already use but the proxy does not
/// export yet. Remove a name once the proxy exports it: the test fails
/// while a listed name is exported, so the list cannot go stale.
const NOT_YET_EXPORTED: &[&str] = &[];

const ADMIN_KEY: &str = "admin-key-7c1d9e2a4b6f3085";

/// How long one promtool or chromium run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The first of `names` in tests/tools/bin (where `.ci/test` unpacks
/// promtool) or on the PATH; panics naming the installer otherwise.
fn tool(names: &[&str], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::iter::once(repo("tests/tools/bin"))
        .chain(std::env::split_paths(&path))
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} not found on PATH: run .ci/test, which takes it from Debian's `{package}` package where missing",
                names.join(" or ")
            )
        })
}

/// Runs `command` to completion within [`TOOL_TIMEOUT`]; returns whether it
/// succeeded and its stdout and stderr.
fn run(command: &mut Command) -> (bool, String, String) {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    // Read both pipes while waiting, or a full pipe would block the child.
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = p.expect("piped").read_to_string(&mut text);
            text
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran over {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

fn promtool(args: &[&str]) {
    let (ok, out, err) = run(Command::new(tool(&["promtool"], "prometheus"))
        .args(args)
        .current_dir(repo(".")));
    assert!(ok, "promtool {args:?} failed:\n{out}\n{err}");
}

/// Every `wechat_proxy_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("wechat_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every sample name `/metrics` can hold, from its `# TYPE` lines (so a
/// family counts before its first sample) and from the samples.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut words = decl.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The alerts `alerts.yml` defines, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", ALERTS]);
    promtool(&["test", "rules", ALERT_TESTS]);
}

#[test]
fn every_alert_says_what_to_do_and_has_a_firing_and_a_quiet_test() {
    let rules = read(ALERTS);
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 6, "{alerts:?}");
    assert_eq!(rules.matches("summary:").count(), alerts.len());
    assert_eq!(rules.matches("description:").count(), alerts.len());

    // In the test file each `alertname:` is followed by its `exp_alerts:`,
    // either `[]` (must stay quiet) or a list (must fire).
    let tests = read(ALERT_TESTS);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            if expected.trim() == "[]" {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for alert in &alerts {
        assert!(fires.contains(alert), "no test fires {alert}");
        assert!(quiet.contains(alert), "no test keeps {alert} quiet");
    }
}

/// The dashboard, parsed.
fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

#[test]
fn the_dashboard_is_grafana_json_with_a_datasource_variable() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    assert_eq!(d["uid"], "wechat-token-proxy");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let datasource = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable, so import and provisioning both work");
    assert_eq!(datasource["query"], "prometheus");
    let ds_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        assert!(
            matches!(p["type"].as_str(), Some("timeseries" | "stat")),
            "{title}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId");
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
}

/// Every query in the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"].as_array().unwrap().iter().map(move |t| {
                let expr = t["expr"].as_str().unwrap();
                let filled = expr
                    .replace("$__rate_interval", "5m")
                    .replace("$app", ".*")
                    .replace("$instance", ".*");
                (title.clone(), filled)
            })
        })
        .collect()
}

#[test]
fn the_dashboard_queries_are_valid_promql_covering_each_topic() {
    // promtool parses PromQL in rule files: one recording rule per query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file = write_temp("dashboard-rules.yml", &rules);
    promtool(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);

    // The topics an operator looks for, by the metric each needs.
    let used: String = dashboard_queries().into_iter().map(|(_, e)| e).collect();
    for (topic, needle) in [
        ("request rate by app and status", "wechat_proxy_requests_total"),
        (
            "upstream latency quantiles",
            "histogram_quantile(0.99, sum by (app, le) (rate(wechat_proxy_upstream_duration_seconds_bucket",
        ),
        ("errcodes", "wechat_proxy_upstream_errcode_total"),
        ("retries", "wechat_proxy_retries_total"),
        ("token life left", "wechat_proxy_token_expires_in_seconds"),
        (
            "refreshes by reason and result",
            "sum by (app, reason, result) (increase(wechat_proxy_token_refreshes_total",
        ),
        ("fights", "wechat_proxy_token_fights_total"),
        ("quota", "wechat_proxy_token_quota_remaining"),
    ] {
        assert!(used.contains(needle), "no panel shows {topic}");
    }
}

/// A proxy whose admin listener requires [`ADMIN_KEY`], in front of a fake
/// that knows the mp app.
fn keyed_config(fake: &common::fake_wechat::FakeWeChat) -> ConfigBuilder {
    let key = write_temp("admin.key", ADMIN_KEY);
    ConfigBuilder::new(fake)
        .mp("stable")
        .proxy_line(&format!("admin_key_file = {:?}", key.display().to_string()))
}

async fn get_with(h: &Harness, path: &str, authorization: Option<&str>) -> Resp {
    let mut req = Request::get(h.admin(path));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    h.http
        .send(req.body(Full::<Bytes>::default()).unwrap())
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_and_dashboard_use_only_metrics_the_proxy_exports() {
    let h = Harness::mp("stable").await;
    // Give every family a sample: the first quota reading, a call, an
    // errcode, a failed refresh.
    let (http, metrics) = (h.http.clone(), h.admin("/metrics"));
    common::wait_until_async("a quota reading", Duration::from_secs(10), || {
        let (http, metrics) = (http.clone(), metrics.clone());
        async move {
            http.get(&metrics)
                .await
                .text()
                .contains("wechat_proxy_token_quota_remaining{")
        }
    })
    .await;
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
    h.http.get(&h.url("/test/errcode?code=45009")).await;
    h.fake.set_fetch_failure(Some(FetchFailure::Http500));
    let r = h.http.get(&h.url("/test/errcode?code=40001")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let exposition = h.http.get(&h.admin("/metrics")).await.text();
    let exported = exported_names(&exposition);

    let mut used = BTreeSet::new();
    for file in [ALERTS, ALERT_TESTS, DASHBOARD] {
        used.extend(metric_names(&read(file)));
    }
    println!("used by the rules and dashboard but not exported yet: {NOT_YET_EXPORTED:?}");
    for name in &used {
        assert!(
            exported.contains(name) || NOT_YET_EXPORTED.contains(&name.as_str()),
            "{name} is used by the rules or the dashboard but the proxy does not export it;\n/metrics:\n{exposition}"
        );
    }
    for name in NOT_YET_EXPORTED {
        assert!(
            !exported.contains(*name),
            "{name} is exported now: remove it from NOT_YET_EXPORTED"
        );
        assert!(used.contains(*name), "{name} is listed but used nowhere");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_takes_the_admin_key_as_a_basic_password_and_asks_for_it() {
    let fake = Harness::fake_with(Default::default()).await;
    let config = keyed_config(&fake);
    let h = Harness::start(fake, config).await;

    let refused = get_with(&h, "/", None).await;
    assert_eq!(refused.status, 401);
    let challenges: Vec<&str> = refused
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "a browser only asks for a password on a Basic challenge: {challenges:?}"
    );
    let wrong = basic("admin", "admin-key-but-not-the-right-one");
    assert_eq!(get_with(&h, "/", Some(&wrong)).await.status, 401);

    let page = get_with(&h, "/", Some(&basic("anyone", ADMIN_KEY))).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.starts_with("default-src 'none'")));
    assert!(page.text().contains(r#"data-app="mp""#), "{}", page.text());
    let bearer = format!("Bearer {ADMIN_KEY}");
    assert_eq!(get_with(&h, "/", Some(&bearer)).await.status, 200);
    // The same credentials open the JSON endpoints a browser may follow.
    let apps = get_with(&h, "/apps", Some(&basic("admin", ADMIN_KEY))).await;
    assert_eq!(apps.json()[0]["name"], "mp");
}

/// An `Authorization: Basic …` value.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let credentials = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// Headless Chromium with a fresh profile, as a user would open `url`;
/// `args` say what to produce (`--dump-dom`, `--screenshot=…`).
fn chromium(url: &str, args: &[&str]) -> String {
    let binary = tool(&["chromium", "chromium-browser"], "chromium");
    let profile = write_temp("chromium-profile", "");
    std::fs::remove_file(&profile).unwrap();
    std::fs::create_dir(&profile).unwrap();
    let (ok, out, err) = run(Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(ok, "chromium failed:\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn headless_chromium_shows_each_apps_token_state() {
    let fake = Harness::fake_with(Default::default()).await;
    fake.add_app(AppKind::WeCom, common::setup::CORP_ID, SECRET);
    // `stale` names an appid WeChat does not know: it never gets a token.
    let config = keyed_config(&fake)
        .wecom("corp")
        .mp_app("stale", "wx00000000000000ff", "stable");
    let h = Harness::start_unready(fake, config);
    let auth = format!("Bearer {ADMIN_KEY}");
    wait_until_async(
        "mp and corp to hold tokens and stale to fail",
        Duration::from_secs(10),
        || {
            let h = &h;
            let auth = auth.clone();
            async move {
                let apps = get_with(h, "/apps", Some(&auth)).await.json();
                let app = |name: &str| {
                    let all = apps.as_array().unwrap();
                    all.iter().find(|a| a["name"] == name).cloned().unwrap()
                };
                app("mp")["token"]["state"] == "valid"
                    && app("corp")["token"]["state"] == "valid"
                    && !app("stale")["last_error"].is_null()
            }
        },
    )
    .await;

    let url = format!("http://admin:{ADMIN_KEY}@{}/", h.proxy.admin);
    let dom = chromium(&url, &["--dump-dom"]);

    assert!(dom.contains("2 of 3 apps hold a valid token"), "{dom}");
    assert!(
        dom.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "{dom}"
    );
    for (app, class, kind) in [
        ("mp", "ok", "mp"),
        ("corp", "ok", "wecom"),
        ("stale", "bad", "mp"),
    ] {
        let head = format!(r#"<section class="app {class}" data-app="{app}">"#);
        let at = dom
            .find(&head)
            .unwrap_or_else(|| panic!("no {head} in\n{dom}"));
        let card = &dom[at..at + dom[at..].find("</section>").unwrap()];
        assert!(
            card.contains(&format!(r#"<span class="kind">{kind}</span>"#)),
            "{card}"
        );
        if class == "ok" {
            assert!(card.contains("<meter"), "{card}");
            assert!(
                card.contains("h 59m left") || card.contains("2h 0m left"),
                "{card}"
            );
            assert!(
                card.contains(r#"data-field="last_refresh_unix">20"#),
                "{card}"
            );
        } else {
            assert!(card.contains("no valid token"), "{card}");
            assert!(card.contains(r#"<span class="error">40013: "#), "{card}");
        }
    }
    assert!(dom.contains(MP_APPID));
    assert!(!dom.contains(SECRET), "the page shows the AppSecret");
    assert!(!dom.contains(ADMIN_KEY), "the page shows the admin key");
    for token in h.fake.issued_tokens() {
        assert!(!dom.contains(&token), "the page shows a token");
    }
}

/// The demo after the README's quick start (a call, a revocation, the call
/// again) and a page signature: every part of the status page has
/// something to show. The README's picture is taken here.
#[tokio::test(flavor = "multi_thread")]
async fn the_demos_status_page_shows_its_token_fight_quota_and_ticket() {
    let demo = common::Proxy::spawn(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        "info",
    );
    let http = common::Http::new();
    let call = format!("{}/cgi-bin/user/info?openid=OPENID", demo.url);
    assert_eq!(http.get(&call).await.status, 200);
    let revoked = http
        .post(
            &format!("{}/simulated-wechat/revoke-token", demo.url),
            "application/json",
            "{}",
        )
        .await;
    revoked.assert_ok();
    assert_eq!(http.get(&call).await.status, 200, "the revocation healed");
    let page = "https%3A%2F%2Fshop.example.com%2F";
    let signed = http
        .get(&format!("{}/jssdk/config?url={page}", demo.url))
        .await;
    assert!(signed.json()["signature"].is_string(), "{}", signed.text());
    let apps_url = format!("{}/apps", demo.admin_url);
    wait_until_async(
        "the demo's quota reading and ticket",
        Duration::from_secs(10),
        || {
            let (http, apps_url) = (http.clone(), apps_url.clone());
            async move {
                let apps = http.get(&apps_url).await.json();
                !apps[0]["quota"].is_null() && apps[0]["tickets"]["jsapi"]["state"] == "valid"
            }
        },
    )
    .await;

    let url = format!("{}/", demo.admin_url);
    let dom = chromium(&url, &["--dump-dom"]);
    assert!(dom.contains("1 of 1 apps hold a valid token"), "{dom}");
    for field in [
        r#"data-field="fights">1<"#,
        r#"data-field="refreshes">2<"#,
        r#"data-field="quota">"#,
        r#"data-field="jsapi">"#,
    ] {
        assert!(dom.contains(field), "the page should show {field}:\n{dom}");
    }
    assert!(
        dom.contains("wxd000000000000de0"),
        "the demo's appid: {dom}"
    );
    assert!(
        !dom.contains("SIMULATED_"),
        "the page shows a token or ticket"
    );

    // The README's picture, from the same browser: kept when asked for.
    let png = write_temp("status-page.png", "");
    chromium(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=720,650",
        ],
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if let Some(keep) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    let _ = std::fs::remove_file(png);
}
