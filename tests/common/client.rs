//! A minimal HTTP/1.1 client for talking to the proxy the way an application would:
//! plain HTTP, keep-alive, answers collected whole (or counted, for large downloads).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::fake_wechat::pattern_byte;

/// Longer than any answer a test waits for on purpose; a hung proxy fails the test instead
/// of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A keep-alive HTTP client; clones share the connection pool.
#[derive(Clone)]
pub struct Http {
    /// hyper-util's pooled client over plain TCP.
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A complete answer.
#[derive(Debug)]
pub struct Resp {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as far as it arrived.
    pub body: Bytes,
    /// Why the body ended early (connection dropped mid-body), if it did.
    pub body_error: Option<String>,
}

/// A large answer, counted and checked as it streams instead of kept in memory.
#[derive(Debug)]
pub struct Download {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body bytes received.
    pub len: u64,
    /// Offset of the first byte differing from the fake's pattern
    /// ([`pattern_byte`]), if any.
    pub first_mismatch: Option<u64>,
    /// Why the body ended early, if it did.
    pub body_error: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A client with its own connection pool.
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET url`; panics if no answer arrives.
    pub async fn get(&self, url: &str) -> Resp {
        self.send(request("GET", url, None, Bytes::new())).await
    }

    /// `POST url` with a body; panics if no answer arrives.
    pub async fn post(&self, url: &str, content_type: &str, body: impl Into<Bytes>) -> Resp {
        self.send(request("POST", url, Some(content_type), body.into()))
            .await
    }

    /// Sends any request; panics if no answer arrives (see [`Http::try_send`]).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(resp) => resp,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Sends a request; `Err` when no response head arrives (refused, reset, timed out),
    /// for tests that expect exactly that.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| chain(&e))?;
            let (parts, mut body) = resp.into_parts();
            let mut bytes = Vec::new();
            let mut body_error = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            bytes.extend_from_slice(data);
                        }
                    }
                    Err(e) => {
                        body_error = Some(chain(&e));
                        break;
                    }
                }
            }
            Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: Bytes::from(bytes),
                body_error,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer in {REQUEST_TIMEOUT:?}")))
    }

    /// `GET url`, streaming the body: counts it and compares it with the fake's generated
    /// pattern, so a 64 MiB download costs the test no 64 MiB buffer.
    pub async fn download(&self, url: &str) -> Download {
        let exchange = async {
            let req = request("GET", url, None, Bytes::new());
            let resp = self.client.request(req).await.map_err(|e| chain(&e))?;
            let (parts, mut body) = resp.into_parts();
            let mut download = Download {
                status: parts.status.as_u16(),
                headers: parts.headers,
                len: 0,
                first_mismatch: None,
                body_error: None,
            };
            while let Some(frame) = body.frame().await {
                let data = match frame {
                    Ok(frame) => frame.into_data().unwrap_or_default(),
                    Err(e) => {
                        download.body_error = Some(chain(&e));
                        break;
                    }
                };
                if download.first_mismatch.is_none() {
                    let start = download.len;
                    download.first_mismatch = (0u64..)
                        .zip(data.iter())
                        .find(|(i, b)| **b != pattern_byte(start + i))
                        .map(|(i, _)| start + i);
                }
                download.len += data.len() as u64;
            }
            Ok::<_, String>(download)
        };
        match tokio::time::timeout(Duration::from_secs(120), exchange).await {
            Ok(Ok(download)) => download,
            Ok(Err(e)) => panic!("GET {url}: {e}"),
            Err(_) => panic!("GET {url}: download not finished in 120 s"),
        }
    }
}

impl Resp {
    /// The body as JSON; panics with the body text if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected JSON ({e}), got status {} body: {}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts WeChat's success: HTTP 200 and `errcode` 0, showing the body
    /// otherwise.
    #[track_caller]
    pub fn assert_ok(&self) {
        let errcode = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["errcode"].as_i64());
        assert_eq!(
            (self.status, errcode),
            (200, Some(0)),
            "not a WeChat success: {}",
            self.text()
        );
    }

    /// The body as text (lossy), for messages and substring checks.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Builds a request; the URLs come from the test itself, so a bad one is a test bug.
fn request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(content_type) = content_type {
        builder = builder.header(http::header::CONTENT_TYPE, content_type);
    }
    builder
        .body(Full::new(body))
        .unwrap_or_else(|e| panic!("bad test request {method} {url}: {e}"))
}

/// An error with its causes, since hyper's top-level messages alone say little.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
