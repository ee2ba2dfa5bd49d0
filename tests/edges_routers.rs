//! Path rules cannot be dodged by `;` parameters or case, and both routers are total:
//! whatever the method and path, every request gets an answer.

mod common;

use std::time::Duration;

use common::raw::RawConn;
use common::setup::{ConfigBuilder, Harness};

#[tokio::test(flavor = "multi_thread")]
async fn path_parameters_and_case_do_not_pass_deny_paths() {
    let fake = Harness::fake_with(Default::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line(r#"deny_paths = ["/cgi-bin/menu"]"#);
    let h = Harness::start(fake, config).await;

    for path in [
        "/cgi-bin/menu/delete;x",
        "/cgi-bin/menu;/delete",
        "/cgi-bin;x/menu/delete",
        "/CGI-BIN/Menu/Delete",
        "/cgi-bin/MENU;jsessionid=1/delete",
    ] {
        let r = h.http.get(&h.url(path)).await;
        // A `;` parameter has no normal form (400); case matches the rule (403).
        let refused = if path.contains(';') { 400 } else { 403 };
        assert_eq!(r.status, refused, "{path}: {r:?}");
        assert_eq!(r.header("x-wechat-token-proxy"), Some("error"), "{path}");
    }
    assert!(h.fake.requests().is_empty(), "{:?}", h.fake.requests());
    h.http.get(&h.url("/cgi-bin/user/info")).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn post_apps_refresh_without_a_name_is_answered() {
    let h = Harness::mp("stable").await;

    for path in [
        "/apps/refresh",
        "/apps//refresh",
        "/apps/",
        "/apps/clear-quota",
        "/apps//clear-quota",
    ] {
        let r = h.http.post(&h.admin(path), "application/json", "").await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert_eq!(r.json()["errcode"], -1);
    }
    assert_eq!(h.http.get(&h.admin("/healthz")).await.status, 200);
}

/// A small deterministic generator (xorshift), so a failure names a reproducible seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[(self.next() % options.len() as u64) as usize]
    }
}

/// A random request line's method and target, from pieces routers trip over.
fn random_request(rng: &mut Rng) -> (String, String) {
    let method = rng
        .pick(&[
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FOO", "M-SEARCH",
        ])
        .to_owned();
    let pieces = [
        "apps",
        "refresh",
        "mp",
        "healthz",
        "readyz",
        "metrics",
        "",
        "/",
        "cgi-bin",
        "token",
        "stable_token",
        "gettoken",
        "%2F",
        "%",
        ";",
        "..",
        ".",
        "é",
        "a;b",
        "?",
        "?x=1&",
        "*",
        "~",
        "%00",
        "apps/refresh",
        "/refresh",
        "/clear-quota",
        "//",
    ];
    // Now and then a whole path that routers split by prefix and suffix.
    if rng.next().is_multiple_of(8) {
        let whole = rng.pick(&[
            "/apps/refresh",
            "/apps/",
            "/refresh",
            "/apps",
            "/apps//refresh",
            "/apps/clear-quota",
            "/apps/mp/clear-quota",
        ]);
        let method = if rng.next().is_multiple_of(2) {
            "POST".into()
        } else {
            method
        };
        return (method, whole.to_owned());
    }
    let mut path = String::from("/");
    for _ in 0..(rng.next() % 6) {
        path.push_str(rng.pick(&pieces));
        if rng.next().is_multiple_of(2) {
            path.push('/');
        }
    }
    let path: String = path
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                "%C3%A9".into()
            }
        })
        .collect();
    (method, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_on_either_listener_is_answered() {
    let h = Harness::mp("stable").await;
    let seed = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut rng = Rng(seed);

    for i in 0..300u32 {
        let (method, path) = random_request(&mut rng);
        let addr = if i.is_multiple_of(2) {
            h.proxy.admin
        } else {
            h.proxy.addr
        };
        let mut conn = RawConn::connect(addr).await;
        let body = if method == "POST" { "{}" } else { "" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.send(request.as_bytes()).await.unwrap();
        let head = tokio::time::timeout(Duration::from_secs(10), async {
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            use tokio::io::AsyncReadExt;
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        })
        .await
        .unwrap_or_default();
        assert!(
            head.starts_with("HTTP/1.1 "),
            "seed {seed:#x}, request {i}: {method} {path} got no answer: {head:?}"
        );
    }
    assert!(
        h.proxy.logs().iter().all(|l| !l.contains("panicked")),
        "a handler panicked"
    );
    assert_eq!(h.http.get(&h.admin("/healthz")).await.status, 200);
}
