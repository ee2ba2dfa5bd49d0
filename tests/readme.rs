//! What the README says is true: every fenced snippet in README.md is run
//! here, in its language, so the README and the code cannot drift apart.
//!
//! - The run commands: `check` passes on the shipped config.toml once the
//!   README's first edits are made, and fails clearly before.
//! - The client snippets (curl, wechatpy, co-wechat-api: the real SDKs,
//!   pinned in tests/readme/ and installed by `.ci/test`) run against a proxy
//!   in front of the fake WeChat, its real address put in for
//!   `127.0.0.1:8080`. The fake must see each call with the real token (each
//!   login with the app's own secret, given none), and a guard loaded before
//!   the snippet fails any connection off this host, so a snippet that goes
//!   around the proxy fails.
//! - The JS-SDK page snippet runs in Node with the page's world stood in: a
//!   `location`, a `fetch` that plays the application's backend relaying to
//!   the proxy's `/jssdk/config`, and a `wx` that reports what it was given,
//!   whose signature is checked against the fake's ticket.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::setup::{Harness, MP_APPID};

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_wechat-token-proxy");
/// The address the README's snippets call.
const README_ADDR: &str = "127.0.0.1:8080";
/// The appid placeholder of the shipped config.toml, which the README says to replace.
const PLACEHOLDER: &str = "REPLACE_WITH_YOUR_APPID";
/// How long one snippet may run.
const SNIPPET_TIMEOUT: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// One fenced block of README.md.
struct Snippet {
    /// The word after the opening fence: `sh`, `python`, `js`.
    lang: String,
    /// The lines between the fences.
    code: String,
}

fn snippets() -> Vec<Snippet> {
    let readme = read("README.md");
    let mut out = Vec::new();
    let mut open: Option<Snippet> = None;
    for line in readme.lines() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(lang), None) => {
                open = Some(Snippet {
                    lang: lang.trim().to_owned(),
                    code: String::new(),
                })
            }
            (Some(_), Some(done)) => out.push(done),
            (None, Some(mut snippet)) => {
                snippet.code.push_str(line);
                snippet.code.push('\n');
                open = Some(snippet);
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md has an unclosed fence");
    out
}

/// The client snippets of one language, joined: what an application runs.
fn client_snippets(lang: &str) -> Vec<String> {
    let found: Vec<String> = snippets()
        .into_iter()
        .filter(|s| s.lang == lang && s.code.contains(README_ADDR) && !is_suite_snippet(&s.code))
        .map(|s| s.code)
        .collect();
    assert!(
        !found.is_empty(),
        "no {lang} snippet calling {README_ADDR} in README.md"
    );
    found
}

/// A WeCom suite's snippet: tests/wecom.rs runs it against a fake suite.
fn is_suite_snippet(code: &str) -> bool {
    code.contains("wechatpy.enterprise")
}

/// The login snippet: it logs a user in, which the fake sees without a token.
fn is_login_snippet(code: &str) -> bool {
    code.contains("code_to_session")
}

/// The JS-SDK snippet that runs in a page: it calls `wx.config`.
fn is_page_snippet(code: &str) -> bool {
    code.contains("wx.config(")
}

/// The block with the run commands (the one with `cargo run`).
fn run_block() -> String {
    let blocks: Vec<String> = snippets()
        .into_iter()
        .filter(|s| s.code.contains("cargo run"))
        .map(|s| s.code)
        .collect();
    assert_eq!(blocks.len(), 1, "one block of run commands expected");
    blocks.into_iter().next().unwrap()
}

#[test]
fn every_readme_snippet_is_one_this_file_runs() {
    for snippet in snippets() {
        let runs_here = match snippet.lang.as_str() {
            "sh" => {
                snippet.code.contains(README_ADDR)
                    || snippet.code.contains("cargo run")
                    // The test command, which runs this file.
                    || snippet.code.trim() == ".ci/test"
            }
            "python" => snippet.code.contains(README_ADDR),
            "js" => snippet.code.contains(README_ADDR) || is_page_snippet(&snippet.code),
            _ => false,
        };
        assert!(
            runs_here,
            "a README snippet no test runs (```{}):\n{}",
            snippet.lang, snippet.code
        );
    }
}

/// The variables the run block exports, and the argument lists of its
/// `cargo run --release -- …` lines.
fn run_commands() -> (Vec<(String, String)>, Vec<Vec<String>>) {
    let mut env = Vec::new();
    let mut commands = Vec::new();
    for line in run_block().lines() {
        if let Some(assignment) = line.strip_prefix("export ") {
            let (name, value) = assignment.split_once('=').expect("export NAME=value");
            env.push((name.to_owned(), value.to_owned()));
        } else if let Some(args) = line.strip_prefix("cargo run --release -- ") {
            commands.push(args.split_whitespace().map(str::to_owned).collect());
        } else {
            panic!("a line in the run block this test does not know: {line}");
        }
    }
    (env, commands)
}

/// Runs `command` to its end, bounded.
fn run(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let deadline = Instant::now() + SNIPPET_TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the output")
}

/// Runs the README's `check` line in a directory holding `config` as
/// config.toml, with the README's variables.
fn readme_check(config: &str) -> Output {
    let (env, commands) = run_commands();
    let check = commands
        .iter()
        .find(|args| args.first().map(String::as_str) == Some("check"))
        .expect("a check command in the run block");
    let serve = commands
        .iter()
        .find(|args| args.first().map(String::as_str) != Some("check"))
        .expect("a serve command in the run block");
    assert_eq!(
        check[1..],
        serve[..],
        "check and serve should name the same config"
    );

    // A fresh directory, named like the harness's temp files.
    let dir = common::write_temp("readme-run", "");
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut command = Command::new(BINARY);
    command.args(check).current_dir(&dir).envs(env);
    let output = run(command);
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// The shipped config.toml with its fixed ports made free ones: a shared
/// test machine may have 8080 or 9090 taken, and check binds them.
fn shipped_config() -> String {
    read("config.toml")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
}

#[test]
fn check_passes_on_the_shipped_config_after_the_edits_the_readme_asks_for() {
    let readme = read("README.md");
    let run_at = readme.find("cargo run").unwrap();
    assert!(
        readme[..run_at].contains(&format!("replace `{PLACEHOLDER}` with your")),
        "the README does not say to replace {PLACEHOLDER} before the run command"
    );
    let config = shipped_config();
    let placeholder = format!("\"{PLACEHOLDER}\"");
    assert_eq!(config.matches(&placeholder).count(), 1, "{config}");

    let output = readme_check(&config.replace(&placeholder, &format!("\"{MP_APPID}\"")));

    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{err}");
    assert!(out.contains("OK (1 app: mp)"), "{out}");
}

#[test]
fn check_refuses_the_shipped_config_unedited_and_says_what_to_change() {
    let output = readme_check(&shipped_config());

    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    for part in [
        "config.toml",
        "apps.mp.appid",
        PLACEHOLDER,
        "wx and 16 hex digits",
    ] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
}

/// Where `.ci/test` installs the SDKs; a clear failure when it has not run.
fn installed(path: &str) -> PathBuf {
    let path = repo(path);
    assert!(
        path.exists(),
        "{} is missing: run .ci/test (the README's test command), which installs the README's SDKs",
        path.display()
    );
    path
}

/// Runs `command`, a snippet's interpreter on the file holding `code`, and
/// returns what it printed; fails the test, showing both, if it fails.
async fn run_snippet(code: &str, command: Command) -> String {
    let output = tokio::task::spawn_blocking(move || run(command))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the snippet failed:\n{code}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs each snippet of `lang` with `interpreter` against a proxy in front of
/// the fake WeChat, and checks the fake saw `calls` (method, path), in order,
/// each with the real token.
async fn run_against_the_proxy(
    lang: &str,
    calls: &[(&str, &str)],
    interpreter: impl Fn(&Path) -> Command,
) {
    let h = Harness::mp("stable").await;
    let snippets = client_snippets(lang)
        .into_iter()
        .filter(|code| !is_login_snippet(code));
    for (i, code) in snippets.enumerate() {
        let code = code.replace(README_ADDR, &h.proxy.addr.to_string());
        let file = common::write_temp(&format!("snippet-{i}.{lang}"), &code);
        run_snippet(&code, interpreter(&file)).await;
    }

    let token = h.fake.current_token(MP_APPID).expect("the proxy's token");
    let seen: Vec<(String, String)> = h
        .fake
        .requests()
        .iter()
        .map(|r| {
            assert!(
                r.token_ok,
                "{} {} reached WeChat without a valid token",
                r.method, r.path
            );
            assert_eq!(
                r.access_tokens(),
                [token.as_str()],
                "{} {}",
                r.method,
                r.path
            );
            (r.method.to_string(), r.path.clone())
        })
        .collect();
    let wanted: Vec<(String, String)> = calls
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(seen, wanted, "the calls the fake WeChat saw");
    assert_eq!(h.fake.token_fetches(), 1, "only the proxy fetches a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_curl_snippets_reach_wechat_through_the_proxy() {
    run_against_the_proxy(
        "sh",
        &[
            ("GET", "/cgi-bin/user/info"),
            ("POST", "/cgi-bin/message/custom/send"),
        ],
        |file| {
            let mut command = Command::new("sh");
            command.arg("-e").arg(file);
            command
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wechatpy_snippet_reaches_wechat_through_the_proxy() {
    let python = installed("tests/readme/.venv/bin/python");
    let guard = repo("tests/readme/python");
    run_against_the_proxy(
        "python",
        &[
            ("GET", "/cgi-bin/user/info"),
            ("POST", "/wxa/getwxacodeunlimit"),
        ],
        move |file| {
            let mut command = Command::new(&python);
            command.arg(file).env("PYTHONPATH", &guard);
            command
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wechatpy_login_snippet_logs_users_in_with_a_dummy_secret() {
    let python = installed("tests/readme/.venv/bin/python");
    let guard = repo("tests/readme/python");
    let logins: Vec<String> = client_snippets("python")
        .into_iter()
        .filter(|code| is_login_snippet(code))
        .collect();
    assert_eq!(logins.len(), 1, "one wechatpy login snippet expected");
    let h = Harness::mp("stable").await;
    let code = logins[0].replace(README_ADDR, &h.proxy.addr.to_string());
    let file = common::write_temp("login.python", &code);
    let mut command = Command::new(&python);
    command.arg(&file).env("PYTHONPATH", &guard);
    let stdout = run_snippet(&code, command).await;

    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["o-user-1", "o-user-1"]);
    let seen: Vec<(String, bool)> = h
        .fake
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.token_ok))
        .collect();
    // token_ok: the app's own appid and secret, once each, and no token.
    assert_eq!(
        seen,
        [
            ("/sns/jscode2session".to_owned(), true),
            ("/sns/oauth2/access_token".to_owned(), true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_co_wechat_api_snippet_reaches_wechat_through_the_proxy() {
    let modules = installed("tests/readme/node_modules/co-wechat-api");
    let guard = repo("tests/readme/guard.js");
    run_against_the_proxy("js", &[("GET", "/cgi-bin/user/info")], move |file| {
        let mut command = Command::new("node");
        command
            .arg("--require")
            .arg(&guard)
            .arg(file)
            .env("NODE_PATH", modules.parent().unwrap());
        command
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jssdk_page_snippet_gets_a_signature_for_its_page() {
    let pages: Vec<String> = snippets()
        .into_iter()
        .filter(|s| s.lang == "js" && is_page_snippet(&s.code))
        .map(|s| s.code)
        .collect();
    assert_eq!(pages.len(), 1, "one JS-SDK page snippet expected");
    let h = Harness::mp("stable").await;
    let page = "https://shop.example.com/p?id=1&x=a%20b";
    // The page's world: its address (with a fragment the signature must
    // drop), the backend route relaying to the proxy, and wx.config.
    let world = format!(
        r#"globalThis.location = {{ href: {href:?} }};
const relay = globalThis.fetch;
globalThis.fetch = (path) => relay({proxy:?} + path.replace('/api/wx-config', '/jssdk/config'));
globalThis.wx = {{ config: (c) => console.log(JSON.stringify(c)) }};
(async () => {{
{code}
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#,
        href = format!("{page}#pay"),
        proxy = h.proxy.url,
        code = pages[0],
    );
    let file = common::write_temp("page.js", &world);
    let guard = repo("tests/readme/guard.js");
    let mut command = Command::new("node");
    command.arg("--require").arg(&guard).arg(&file);
    let output = tokio::task::spawn_blocking(move || run(command))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the page snippet failed:\n{world}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let config: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("wx.config got JSON");
    assert_eq!(config["appId"], MP_APPID);
    assert!(config["jsApiList"].is_array());
    let nonce = config["nonceStr"].as_str().unwrap();
    let timestamp = config["timestamp"].as_u64().unwrap();
    let tickets = h.fake.issued_tickets("jsapi");
    assert_eq!(tickets.len(), 1, "one ticket fetched for the page");
    let signed = format!(
        "jsapi_ticket={}&noncestr={nonce}&timestamp={timestamp}&url={page}",
        tickets[0]
    );
    let expected = common::sha1_by_python(&signed);
    assert_eq!(config["signature"], expected.as_str(), "signed: {signed}");
    assert!(
        !stdout.contains(&tickets[0]),
        "the page never sees the ticket"
    );
}
