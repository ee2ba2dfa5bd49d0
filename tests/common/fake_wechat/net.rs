//! The fake's network side: the accept loop, optional TLS, one HTTP/1.1 connection per task,
//! and a TCP stream that can end with a reset instead of an orderly close.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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
    // For `idle_close`: requests being handled, and when the last one ended.
    let activity = Arc::new(Mutex::new((0usize, None::<Instant>)));
    let seen = activity.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        let reset = reset.clone();
        let earlier = served.fetch_add(1, Ordering::Relaxed);
        let activity = seen.clone();
        activity.lock().unwrap().0 += 1;
        async move {
            let answer = if earlier > 0 && lock(&state).close_reused {
                // A keep-alive timeout that fired as the request arrived: closed unanswered.
                lock(&state).dropped_reused += 1;
                Err(handler::DropConnection)
            } else {
                handler::handle(state, reset, req).await
            };
            let mut activity = activity.lock().unwrap();
            activity.0 -= 1;
            activity.1 = Some(Instant::now());
            answer
        }
    });
    // Errors here are the peer going away or a deliberate break: nothing to report.
    let connection = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let Some(idle) = idle_close else {
        let _ = connection.await;
        return;
    };
    // A server's keep-alive timeout: once a request was answered and none came for
    // `idle`, the connection is closed, whatever may be arriving on it just then.
    loop {
        let due = match *activity.lock().unwrap() {
            (0, Some(last)) => last + idle,
            _ => Instant::now() + Duration::from_millis(1),
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep_until(due.into()) => {
                let idle_now = matches!(*activity.lock().unwrap(), (0, Some(last)) if last.elapsed() >= idle);
                if idle_now {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    return;
                }
            }
        }
    }
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
