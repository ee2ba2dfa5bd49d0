//! A web page cannot drive the proxy: a browser's request (it carries `Origin`, or
//! `Sec-Fetch-Site` other than `none`) is refused on the app listener and never forwarded,
//! and a loopback listener serves only loopback `Host` names (no DNS rebinding).

mod common;

use common::raw::RawConn;
use common::setup::Harness;

/// One raw request with `head_lines` (each ending in `\r\n`) to `addr`.
async fn raw(
    addr: std::net::SocketAddr,
    request_line: &str,
    head_lines: &str,
) -> common::raw::RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(format!("{request_line}\r\n{head_lines}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    conn.read_response().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_post_from_a_page_is_refused_and_never_forwarded() {
    let h = Harness::mp("stable").await;
    let mut conn = RawConn::connect(h.proxy.addr).await;
    let body = r#"{"filter":{"is_to_all":true},"text":{"content":"spam"},"msgtype":"text"}"#;
    conn.send(
        format!(
            "POST /cgi-bin/message/mass/sendall HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = conn.read_response().await;

    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(r.json()["errcode"], -1);
    assert!(h.fake.requests().is_empty(), "{:?}", h.fake.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn any_origin_or_fetch_site_but_none_is_refused_and_sdk_requests_pass() {
    let h = Harness::mp("stable").await;
    let addr = h.proxy.addr;

    for lines in [
        "Host: localhost\r\nOrigin: null\r\n",
        "Host: localhost\r\nSec-Fetch-Site: same-origin\r\n",
        "Host: localhost\r\nSec-Fetch-Site: same-site\r\n",
    ] {
        let r = raw(addr, "GET /cgi-bin/user/info?openid=o1 HTTP/1.1", lines).await;
        assert_eq!(r.status, 403, "{lines:?}: {}", r.head);
    }
    assert!(h.fake.requests().is_empty());

    // A URL typed into the address bar says `none`; an SDK sends neither header.
    for lines in [
        "Host: localhost\r\nSec-Fetch-Site: none\r\n",
        "Host: 127.0.0.1\r\n",
    ] {
        let r = raw(addr, "GET /cgi-bin/user/info?openid=o1 HTTP/1.1", lines).await;
        assert_eq!(r.status, 200, "{lines:?}: {}", r.head);
    }
    assert_eq!(h.fake.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_host_gets_421_on_both_loopback_listeners() {
    let h = Harness::mp("stable").await;
    let admin: std::net::SocketAddr = h
        .proxy
        .admin_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    for addr in [h.proxy.addr, admin] {
        for host in [
            "evil.example",
            "evil.example:8080",
            "192.168.1.5",
            "localhost.evil.example",
        ] {
            let r = raw(addr, "GET /healthz HTTP/1.1", &format!("Host: {host}\r\n")).await;
            assert_eq!(r.status, 421, "{addr} {host}: {}", r.head);
            assert_eq!(r.json()["errcode"], -1);
        }
        for host in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:9090",
            "app.localhost",
        ] {
            let r = raw(addr, "GET /healthz HTTP/1.1", &format!("Host: {host}\r\n")).await;
            assert_ne!(r.status, 421, "{addr} {host}: {}", r.head);
        }
    }
    // On the proxy listener, the six loopback names were forwarded; no other.
    assert_eq!(h.fake.requests().len(), 6);
}
