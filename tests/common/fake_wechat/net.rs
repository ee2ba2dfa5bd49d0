//! The fake's network side: the accept loop, optional TLS, one HTTP/1.1 connection per task,
//! and a TCP stream that can end with a reset instead of an orderly close.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{handler, lock, State};

/// Accepts connections until the task is dropped, counting each one (keep-alive tests
/// compare this count with the number of requests).
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<Mutex<State>>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            // Out of file descriptors or similar: do not spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        {
            let mut state = lock(&state);
            state.connections += 1;
            state.open_connections += 1;
            state.max_open_connections = state.max_open_connections.max(state.open_connections);
        }
        let open = OpenGuard(state.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            serve_connection(tcp, tls, open.0.clone()).await;
            drop(open);
        });
    }
}

/// Counts a connection out of `open_connections` when its task ends, however
/// it ends (the runtime dropping it at shutdown too).
struct OpenGuard(Arc<Mutex<State>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        lock(&self.0).open_connections -= 1;
    }
}

/// Runs TLS (if configured) and HTTP/1.1 on one accepted connection.
async fn serve_connection(tcp: TcpStream, tls: Option<TlsAcceptor>, state: Arc<Mutex<State>>) {
    // Small JSON answers should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let stream = ResettableStream {
        tcp,
        reset: reset.clone(),
    };
    match tls {
        None => serve_http(stream, state, reset).await,
        Some(acceptor) => {
            // A failed handshake (e.g. a client that does not trust the CA) just ends here.
            if let Ok(tls_stream) = acceptor.accept(stream).await {
                serve_http(tls_stream, state, reset).await;
            }
        }
    }
}

/// Serves requests on `io` until the peer leaves or a handler asks for a reset.
async fn serve_http<I>(io: I, state: Arc<Mutex<State>>, reset: Arc<AtomicBool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_close = lock(&state).idle_close;
    // Requests served on this connection so far, for `close_reused`.
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = service_fn(move |req| {
        let state = state.clone();
        let reset = reset.clone();
        let earlier = served.fetch_add(1, Ordering::Relaxed);
        async move {
            if earlier > 0 && lock(&state).close_reused {
                // A keep-alive timeout that fired as the request arrived: closed unanswered.
                lock(&state).dropped_reused += 1;
                return Err(handler::DropConnection);
            }
            handler::handle(state, reset, req).await
        }
    });
    // Errors here are the peer going away or a deliberate break: nothing to report.
    let mut http = http1::Builder::new();
    if let Some(idle) = idle_close {
        // hyper's head timer runs from each answer to the next head: an idle
        // keep-alive connection closes when it fires.
        http.timer(TokioTimer::new()).header_read_timeout(idle);
    }
    let _ = http.serve_connection(TokioIo::new(io), service).await;
}

/// A TCP stream that, once `reset` is set, refuses to write and closes with an RST
/// (SO_LINGER 0) when dropped: `FetchFailure::Reset` must look like a crashed peer, not an
/// orderly close.
struct ResettableStream {
    /// The accepted connection.
    tcp: TcpStream,
    /// Set by the request handler that wants this connection reset.
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    /// Whether a handler asked for a reset.
    fn resetting(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }
}

/// The error every write gets once a reset was asked for, so nothing more goes out.
fn broken_pipe() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "fake WeChat resets this connection",
    )
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.resetting() {
            return Poll::Ready(Err(broken_pipe()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.resetting() {
            return Poll::Ready(Err(broken_pipe()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.resetting() {
            return Poll::Ready(Err(broken_pipe()));
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.resetting() {
            // Linger 0 makes close() send RST at once; it never blocks.
            let _ = self.tcp.set_zero_linger();
        }
    }
}
