//! Lingering close: after answering a request whose body was not read (413,
//! an early refusal) or whose head was too large (431), read and discard what
//! the client still sends before closing, as nginx does.
//!
//! Closing a socket with unread bytes makes the kernel send RST, which
//! destroys the answer in the client's receive buffer. Clients that write
//! the whole request before reading (Python's `http.client`, Node's `http`)
//! then see a broken pipe instead of the 413. Reading on is bounded in time,
//! not bytes, like nginx: a 32 MiB upload over a 1 MiB limit still gets its
//! answer, and a client that never stops is cut off after
//! [`LINGERING_TIME`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Response};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The longest a lingering close reads on in total (nginx's
/// `lingering_time`; a config key would add little: it only bounds how long
/// a closing connection's slot stays taken).
pub const LINGERING_TIME: Duration = Duration::from_secs(30);

/// The longest a lingering close waits for the client's next bytes (nginx's
/// `lingering_timeout`).
pub const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks an answer after which the connection closes lingering (a response
/// extension the accept loop reads; it never goes on the wire).
#[derive(Debug, Clone, Copy)]
pub struct Linger;

impl Linger {
    /// Marks `response`, and tells the client the connection closes after it.
    pub fn mark<B>(response: &mut Response<B>) {
        response.extensions_mut().insert(Linger);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    /// Whether `response` was marked.
    pub fn is_marked<B>(response: &Response<B>) -> bool {
        response.extensions().get::<Linger>().is_some()
    }
}

/// Reading on after the answer: until the client closes, pauses longer
/// than [`LINGERING_TIMEOUT`], or [`LINGERING_TIME`] has passed.
pub struct Draining {
    /// The end of [`LINGERING_TIME`].
    until: Instant,
    /// The current wait for the client's next bytes.
    pause: Pin<Box<Sleep>>,
    /// Where discarded bytes go.
    scratch: Box<[u8]>,
}

impl Draining {
    /// Starts the clock.
    pub fn new() -> Draining {
        let now = Instant::now();
        Draining {
            until: now + LINGERING_TIME,
            pause: Box::pin(tokio::time::sleep(LINGERING_TIMEOUT)),
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Reads and discards from `io`; ready once it is time to close.
    pub fn poll_drain<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        // A fast client could keep this loop busy for its whole upload: yield
        // now and then so other connections on this worker get their turn.
        for _ in 0..64 {
            let mut buf = ReadBuf::new(&mut self.scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let next = (Instant::now() + LINGERING_TIMEOUT).min(self.until);
                    self.pause.as_mut().reset(next);
                }
                // The client closed, or the connection broke.
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => {
                    ready!(self.pause.as_mut().poll(cx));
                    return Poll::Ready(());
                }
            }
            if Instant::now() >= self.until {
                return Poll::Ready(());
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Default for Draining {
    fn default() -> Draining {
        Draining::new()
    }
}

/// The 431 answer, written by the connection itself: hyper's own has no
/// body, and clients should get WeChat-shaped JSON like every other error.
pub fn head_too_large(limit: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "errcode": -1,
        "errmsg": format!("the request head is larger than max_request_header_bytes = {limit}"),
    })
    .to_string();
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json; charset=utf-8\r\n{}: error\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::error::LOCAL_ANSWER,
        body.len()
    )
    .into_bytes()
}

/// An error for hyper once a too-large head was answered: the connection
/// ends here.
pub fn head_refused() -> io::Error {
    io::Error::other("the request head was over the limit; answered 431")
}
