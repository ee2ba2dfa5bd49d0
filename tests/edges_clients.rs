//! Early answers (413, 431) reach clients that write their whole request before reading:
//! Python's `http.client` and Node's `http`, run as child processes with their standard
//! libraries only. The proxy must read and discard the rest of the request before closing.

mod common;

use std::process::Command;

use common::raw::RawConn;
use common::setup::{ConfigBuilder, Harness};

/// POSTs `size` bytes with an `X-Pad` header of `pad` bytes; prints one JSON line:
/// `{"status":…,"body":…}` or `{"error":…}`.
const PYTHON: &str = r#"
import http.client, json, sys
port, path, size, pad = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
headers = {"Content-Type": "application/octet-stream"}
if pad:
    headers["X-Pad"] = "a" * pad
try:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST", path, body=b"x" * size, headers=headers)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode()}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"#;

/// The same for Node.
const NODE: &str = r#"
const http = require('http');
const [port, path, size, pad] = process.argv.slice(1);
const headers = {'content-type': 'application/octet-stream', 'content-length': size};
if (+pad) headers['x-pad'] = 'a'.repeat(+pad);
let out = null;
const req = http.request({host: '127.0.0.1', port: +port, path, method: 'POST', headers}, res => {
  let body = '';
  res.setEncoding('utf8');
  res.on('data', d => body += d);
  res.on('end', () => { out = out || {status: res.statusCode, body}; });
});
req.on('error', e => { out = out || {error: e.code + ': ' + e.message}; });
req.setTimeout(20000, () => { out = out || {error: 'timeout'}; req.destroy(); });
req.end(Buffer.alloc(+size, 120));
process.on('exit', () => console.log(JSON.stringify(out || {error: 'no answer'})));
"#;

/// Runs one client on a thread (it blocks) and parses its line.
async fn run(
    program: &'static str,
    args: [&'static str; 2],
    port: u16,
    size: usize,
    pad: usize,
) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(args)
            .args([
                port.to_string(),
                "/cgi-bin/media/upload".into(),
                size.to_string(),
                pad.to_string(),
            ])
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{program}: {e}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn python(port: u16, size: usize, pad: usize) -> serde_json::Value {
    run("python3", ["-c", PYTHON], port, size, pad).await
}

async fn node(port: u16, size: usize, pad: usize) -> serde_json::Value {
    run("node", ["-e", NODE], port, size, pad).await
}

async fn limited() -> Harness {
    let fake = Harness::fake_with(Default::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .proxy_line("max_request_body_bytes = 1048576")
        .proxy_line("max_request_header_bytes = 10000");
    Harness::start(fake, config).await
}

/// The answer is the proxy's JSON with `status`.
fn assert_answer(who: &str, got: &serde_json::Value, status: u64, says: &str) {
    assert_eq!(got["status"], status, "{who}: {got}");
    let body: serde_json::Value = serde_json::from_str(got["body"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{who}: JSON body ({e}): {got}"));
    assert_eq!(body["errcode"], -1, "{who}: {got}");
    assert!(
        body["errmsg"].as_str().unwrap().contains(says),
        "{who}: {got}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_32_mib_upload_over_a_1_mib_limit_gets_its_413() {
    let h = limited().await;
    let port = h.proxy.addr.port();

    let (py, js) = tokio::join!(python(port, 32 << 20, 0), node(port, 32 << 20, 0));

    assert_answer("python", &py, 413, "max_request_body_bytes");
    assert_answer("node", &js, 413, "max_request_body_bytes");
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_the_limit_gets_a_json_431_even_with_a_body_behind_it() {
    let h = limited().await;
    let port = h.proxy.addr.port();

    let (py, js) = tokio::join!(python(port, 4 << 20, 20_000), node(port, 4 << 20, 20_000));

    assert_answer("python", &py, 431, "max_request_header_bytes");
    assert_answer("node", &js, 431, "max_request_header_bytes");
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_431_is_json_and_the_connection_then_closes() {
    let h = limited().await;
    let mut conn = RawConn::connect(h.proxy.addr).await;

    let padding = format!("X-Padding: {}\r\n", "a".repeat(12_000));
    conn.send(&common::raw::get("/cgi-bin/user/info", &padding))
        .await
        .unwrap();

    let r = conn.read_response().await;
    assert_eq!(r.status, 431);
    assert_eq!(r.header("x-wechat-token-proxy"), Some("error"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.json()["errmsg"].as_str().unwrap().contains("10000"));
    assert!(h.fake.requests().is_empty());
}
