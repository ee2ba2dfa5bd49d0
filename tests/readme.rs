//! What the README says is true: every fenced snippet in README.md is run
//! here, in its language, so the README and the code cannot drift apart.
//!
//! - The demo: the README's command starts it, and the README's commands
//!   against it (curl) get what the README says, from the real binary over
//!   loopback.
//! - The run commands: `check` on the committed config.toml (`git show`:
//!   the working copy may be edited) passes with the README's variables set
//!   to an account's, and fails clearly with them as written.
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
/// The admin address the README's snippets call (the default admin_listen).
const README_ADMIN_ADDR: &str = "127.0.0.1:8079";
/// The variable the shipped config.toml reads the appid from.
const APPID_VAR: &str = "WECHAT_MP_APPID";
/// The README section whose snippets run against the demo, not the fake.
const DEMO_SECTION: &str = "### Try it: the demo";
/// What the proxy answers SDKs' token requests with.
const PLACEHOLDER_TOKEN: &str = "WECHAT_TOKEN_PROXY_PLACEHOLDER";
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
    /// The heading line the block is under.
    section: String,
}

fn snippets() -> Vec<Snippet> {
    let readme = read("README.md");
    let mut out = Vec::new();
    let mut open: Option<Snippet> = None;
    let mut section = String::new();
    for line in readme.lines() {
        if open.is_none() && line.starts_with('#') {
            section = line.trim().to_owned();
        }
        // Fences may be indented (a block inside a list item).
        match (line.trim_start().strip_prefix("```"), open.take()) {
            (Some(lang), None) => {
                open = Some(Snippet {
                    lang: lang.trim().to_owned(),
                    code: String::new(),
                    section: section.clone(),
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

/// The client snippets of one language, joined: what an application runs
/// (the demo's are run against the demo).
fn client_snippets(lang: &str) -> Vec<String> {
    let found: Vec<String> = snippets()
        .into_iter()
        .filter(|s| {
            s.lang == lang
                && s.code.contains(README_ADDR)
                && s.section != DEMO_SECTION
                && !is_platform_snippet(&s.code)
        })
        .map(|s| s.code)
        .collect();
    assert!(
        !found.is_empty(),
        "no {lang} snippet calling {README_ADDR} in README.md"
    );
    found
}

/// A WeCom suite's snippet or a platform's authorizer's: tests/wecom.rs
/// and tests/platforms.rs run them against a fake suite and platform.
fn is_platform_snippet(code: &str) -> bool {
    code.contains("wechatpy.enterprise") || code.contains("8080/saas/")
}

/// The login snippet: it logs a user in, which the fake sees without a token.
fn is_login_snippet(code: &str) -> bool {
    code.contains("code_to_session")
}

/// The JS-SDK snippet that runs in a page: it calls `wx.config`.
fn is_page_snippet(code: &str) -> bool {
    code.contains("wx.config(")
}

/// The one block with `cargo run` and `needle`.
fn cargo_run_block(needle: &str) -> String {
    let blocks: Vec<String> = snippets()
        .into_iter()
        .filter(|s| s.code.contains("cargo run") && s.code.contains(needle))
        .map(|s| s.code)
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "one README block with `cargo run` and {needle:?} expected, found {}",
        blocks.len()
    );
    blocks.into_iter().next().unwrap()
}

/// The block with the real run's commands.
fn run_block() -> String {
    cargo_run_block("--config")
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
                    // Needs a cluster: tests/deploy.rs checks it against
                    // the Deployment's Secret volume.
                    || snippet.code.contains("kubectl create secret generic")
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
fn run_commands(block: &str) -> (Vec<(String, String)>, Vec<Vec<String>>) {
    let mut env = Vec::new();
    let mut commands = Vec::new();
    for line in block.lines() {
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

/// Runs the README's `check` line in a directory holding the committed
/// config.toml (its fixed ports made free ones: a shared test machine may
/// have them taken, and check binds them), with the README's variables,
/// `appid` put in for the appid variable's value when given.
fn readme_check(appid: Option<&str>) -> Output {
    let (mut env, commands) = run_commands(&run_block());
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
    let exported = env.iter_mut().find(|(name, _)| name == APPID_VAR);
    let exported = exported.unwrap_or_else(|| panic!("the run block does not export {APPID_VAR}"));
    if let Some(appid) = appid {
        exported.1 = appid.to_owned();
    }

    let config = common::committed("config.toml");
    for addr in [README_ADDR, README_ADMIN_ADDR] {
        assert!(
            config.contains(&format!("\"{addr}\"")),
            "the committed config.toml does not listen on {addr}, the address the README calls"
        );
    }
    let config = config
        .replace(README_ADDR, "127.0.0.1:0")
        .replace(README_ADMIN_ADDR, "127.0.0.1:0");
    // A fresh directory, named like the harness's temp files.
    let dir = common::write_temp("readme-run", "");
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(check)
        .current_dir(&dir)
        .env_remove(APPID_VAR)
        .envs(env);
    let output = run(command);
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[test]
fn check_passes_on_the_committed_config_with_the_readmes_variables_set_to_an_account() {
    let readme = read("README.md");
    let run_at = readme.find("cargo run --release -- check").unwrap();
    assert!(
        readme[..run_at].contains(&format!("`{APPID_VAR}`")),
        "the README does not say, before the run commands, to set {APPID_VAR} to your appid"
    );

    let output = readme_check(Some(MP_APPID));

    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "check should accept the committed config.toml with {APPID_VAR}={MP_APPID} and the README's secret variable, but said: {err}"
    );
    assert!(
        out.contains("OK (1 app: mp)"),
        "check should report the one app, mp: {out}"
    );
}

#[test]
fn check_refuses_the_readmes_run_commands_as_written_and_says_what_to_set() {
    let output = readme_check(None);

    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "check should refuse the README's placeholder appid (exit 2): {err}"
    );
    for part in [
        "config.toml",
        "apps.mp.appid_env",
        APPID_VAR,
        "wx and 16 hex digits",
    ] {
        assert!(
            err.contains(part),
            "the refusal should name {part:?}: {err}"
        );
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
    let stdout = run_snippet(&world, command).await;

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

/// The README's demo command's arguments, and its commands to try.
fn demo_commands() -> (Vec<String>, Vec<String>) {
    let (env, commands) = run_commands(&cargo_run_block(" demo"));
    assert!(env.is_empty(), "the demo needs no variable");
    assert_eq!(commands.len(), 1, "one demo command expected");
    let tries: Vec<Snippet> = snippets()
        .into_iter()
        .filter(|s| s.section == DEMO_SECTION && s.code.contains(README_ADDR))
        .collect();
    assert_eq!(
        tries.len(),
        1,
        "one block of commands to try on the demo expected"
    );
    let lines = tries[0]
        .code
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    (commands[0].clone(), lines)
}

/// An HTTP answer as `curl -i` prints it: the status line and the body.
fn curl_answer(printed: &str) -> (Option<String>, serde_json::Value) {
    let (status, body) = match printed.split_once("\r\n\r\n") {
        Some((head, body)) if printed.starts_with("HTTP/") => {
            (head.lines().next().map(str::to_owned), body)
        }
        _ => (None, printed),
    };
    let body = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("not a JSON answer ({e}):\n{printed}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_demo_answers_the_quick_start_commands_as_the_readme_says() {
    let (mut args, tries) = demo_commands();
    assert_eq!(
        args,
        ["demo"],
        "the README starts the demo with its defaults"
    );
    // The README's ports may be taken on a shared machine: the demo's own
    // flags move it, and the README's addresses are replaced by the real ones.
    args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut demo = common::Proxy::spawn(&args, &[], "info");
    let (proxy, admin) = (demo.addr.to_string(), demo.admin.to_string());
    common::wait_until(
        "the demo to print what to try",
        Duration::from_secs(5),
        || demo.stdout().iter().any(|l| l.contains("in a browser")),
    )
    .await;
    let printed = demo.stdout().join("\n");

    let mut answers = Vec::new();
    for line in &tries {
        let line = line
            .replace(README_ADDR, &proxy)
            .replace(README_ADMIN_ADDR, &admin);
        assert!(
            printed.contains(&line),
            "the demo does not print the README's command {line:?}; it printed:\n{printed}"
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(&line);
        let output = tokio::task::spawn_blocking(move || run(command))
            .await
            .unwrap();
        assert!(output.status.success(), "{line} failed");
        answers.push((line, String::from_utf8_lossy(&output.stdout).into_owned()));
    }

    let paths: Vec<&str> = answers
        .iter()
        .map(|(line, _)| {
            [
                "/cgi-bin/user/info",
                "/cgi-bin/token",
                "/simulated-wechat/revoke-token",
                "/apps",
            ]
            .into_iter()
            .find(|p| line.contains(p))
            .unwrap_or_else(|| panic!("a demo command this test does not know: {line}"))
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/cgi-bin/user/info",
            "/cgi-bin/token",
            "/simulated-wechat/revoke-token",
            "/cgi-bin/user/info",
            "/apps"
        ],
        "the README's demo commands: a call, a token request, a revocation, the call again, the status"
    );
    for i in [0, 3] {
        let (status, user) = curl_answer(&answers[i].1);
        assert_eq!(
            status.as_deref().map(|s| s.split_whitespace().nth(1)),
            Some(Some("200")),
            "{} should answer 200 ({}):\n{}",
            answers[i].0,
            if i == 0 {
                "the token swapped in"
            } else {
                "the revocation healed"
            },
            answers[i].1
        );
        assert_eq!(user["openid"], "OPENID", "{}", answers[i].1);
        assert!(user["errcode"].is_null(), "{}", answers[i].1);
        assert!(
            user["simulated"]
                .as_str()
                .is_some_and(|s| s.contains("simulated WeChat")),
            "the answer should say its WeChat is simulated: {}",
            answers[i].1
        );
        assert!(
            answers[i].1.to_lowercase().contains("x-simulated-wechat:"),
            "the answer should carry the simulated WeChat's header: {}",
            answers[i].1
        );
    }
    let (_, token) = curl_answer(&answers[1].1);
    assert_eq!(token["access_token"], PLACEHOLDER_TOKEN, "{}", answers[1].1);
    let (_, revoked) = curl_answer(&answers[2].1);
    assert_eq!(revoked["errcode"], 0, "{}", answers[2].1);
    assert!(revoked["revoked"].is_string(), "{}", answers[2].1);
    let (_, apps) = curl_answer(&answers[4].1);
    let mp = &apps[0];
    assert_eq!(mp["token"]["state"], "valid", "{}", answers[4].1);
    assert_eq!(
        mp["refreshes"], 2,
        "one fetch at start and one after the revocation: {}",
        answers[4].1
    );
    assert_eq!(
        mp["fights"], 1,
        "a token revoked with most of its life left is a fight: {}",
        answers[4].1
    );

    demo.wait_for_log("errcode=40001").await;
    demo.signal("INT");
    let status = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "Ctrl-C stops the demo cleanly"
    );
    let logs = demo.logs();
    let unmarked: Vec<&String> = logs
        .iter()
        .filter(|l| !l.contains("simulated WeChat"))
        .collect();
    assert!(
        unmarked.is_empty(),
        "every log line of the demo should say its WeChat is simulated: {unmarked:#?}"
    );
    let all = format!("{}\n{}", logs.join("\n"), demo.stdout().join("\n"));
    for answer in &answers {
        assert!(
            !answer.1.contains("SIMULATED_"),
            "an answer shows a token: {}",
            answer.1
        );
    }
    assert!(
        !all.contains("SIMULATED_"),
        "the demo's output shows a token"
    );
}

#[test]
fn the_demo_refuses_addresses_other_hosts_reach() {
    for (flag, addr) in [("--listen", "0.0.0.0:0"), ("--admin-listen", "[::]:0")] {
        let (status, _, err) = common::run_binary(&["demo", flag, addr], &[]);
        assert_eq!(
            status.code(),
            Some(2),
            "demo {flag} {addr} should be refused (exit 2): {err}"
        );
        assert!(
            err.contains(flag) && err.contains("loopback"),
            "the refusal should name {flag} and say loopback: {err}"
        );
    }
}

/// The endpoints of the README's admin table, as `METHOD /path`.
fn readme_admin_endpoints() -> Vec<String> {
    let readme = read("README.md");
    let table = &readme[readme
        .find("## Admin endpoints")
        .expect("an Admin endpoints section")..];
    let endpoints: Vec<String> = table
        .lines()
        .take_while(|l| !l.starts_with("Metrics:"))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .map(str::to_owned)
        .collect();
    assert!(endpoints.len() >= 8, "the admin table lists {endpoints:?}");
    endpoints
}

#[test]
fn help_and_the_config_comments_list_every_admin_endpoint_the_readme_does() {
    let (status, help, _) = common::run_binary(&["--help"], &[]);
    assert!(status.success());
    let help: String = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let config = common::committed("config.toml");
    let admin_comment: String = config
        .lines()
        .skip_while(|l| !l.starts_with("admin_listen"))
        .take_while(|l| l.starts_with("admin_listen") || l.trim_start().starts_with('#'))
        .collect();
    for endpoint in readme_admin_endpoints() {
        assert!(
            help.contains(&endpoint),
            "--help does not list {endpoint}, which the README's admin table has"
        );
        let path = endpoint.split_whitespace().last().unwrap();
        let shown = match path.rsplit('/').next().unwrap() {
            "" => "/,",
            last => last,
        };
        assert!(
            admin_comment.contains(shown),
            "config.toml's admin_listen comment does not mention {endpoint}"
        );
    }
}
