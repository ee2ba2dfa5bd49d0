//! HTTP/1.1 spoken by hand over a plain TCP socket, for what a well-behaved client library
//! will not do: oversized heads, heads sent slowly, chunked bodies that never end, uploads
//! abandoned halfway, downloads never read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any answer a test waits for on purpose.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One hand-driven connection.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
}

/// An answer read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// The head as text, status line included.
    pub head: String,
    /// The body (by `Content-Length`, or up to the connection's end).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected JSON ({e}), got {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value (first of that name), compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl RawConn {
    /// Connects to `addr`; panics if it cannot.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        RawConn { stream }
    }

    /// Writes `bytes`; an error (the peer gave up) is returned, not panicked on.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one answer: the head, then a `Content-Length` body or everything up to the
    /// connection's end. Panics if no head arrives in 30 s.
    pub async fn read_response(&mut self) -> RawResponse {
        let exchange = async {
            let mut buf = Vec::new();
            let head_end = loop {
                if let Some(i) = find(&buf, b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => panic!(
                        "the connection ended before a whole head: {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status in {head:?}"));
            let mut response = RawResponse {
                status,
                head,
                body: buf[head_end..].to_vec(),
            };
            let length = response
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            let mut chunk = [0u8; 8192];
            while length.is_none_or(|n| response.body.len() < n) {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.body.extend_from_slice(&chunk[..n]),
                }
            }
            response
        };
        tokio::time::timeout(READ_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer within {READ_TIMEOUT:?}"))
    }

    /// Reads and discards until the peer closes or resets the connection; returns the bytes
    /// read, or `None` if it is still open after `within`.
    pub async fn read_until_closed(&mut self, within: Duration) -> Option<u64> {
        let drain = async {
            let mut total = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n as u64,
                }
            }
        };
        tokio::time::timeout(within, drain).await.ok()
    }

    /// Reads up to `n` bytes (fewer if the peer stops sending).
    pub async fn read_some(&mut self, n: usize) -> usize {
        let mut got = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        while got < n {
            let want = chunk.len().min(n - got);
            match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk[..want])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(k)) => got += k,
            }
        }
        got
    }
}

/// `GET path` with `Host` and any extra header lines (each ending in `\r\n`).
pub fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
