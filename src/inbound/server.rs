//! Accept loops and graceful shutdown, shared by the proxy and admin
//! listeners.
//!
//! The shape follows hyper-util's `server_graceful` example: accept until
//! told to stop, then let every open connection finish its request, up to a
//! grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::error::with_causes;
use crate::forward::body::ProxyBody;
use crate::inbound::limits::Limits;
use crate::inbound::linger::Linger;
use crate::inbound::watchdog::{Timeouts, Tracked, Tracker, Watched};

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` flips, then
/// drains for at most `grace`. `limits` bounds heads, timings and the
/// number of connections.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // The watchdog answers heads over the limit with a JSON 431 before
        // hyper sees them; hyper's own (bodiless) 431 is only a backstop.
        .max_header_size(limits.max_header_bytes.saturating_mul(2))
        // The watchdog times heads and idle connections apart; hyper's one
        // timer would cut idle keep-alive connections at the head limit.
        .header_read_timeout(None);
    let timeouts = Timeouts {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
        max_head: limits.max_header_bytes,
    };
    let graceful = GracefulShutdown::new();
    // Beyond max_connections the loop stops accepting: new connections wait
    // in the kernel's listen backlog until one closes.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned_full: Option<Instant> = None;

    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned_full.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = stop.changed() => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, usually: wait instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Disable Nagle: answers are small and latency-bound.
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let tracker = Tracker::new();
                let io = Watched::new(stream, tracker.clone(), timeouts);
                let service = service_fn(move |request| {
                    tracker.handling();
                    // Boxed: hyper keeps a box sized for the service future
                    // for the whole life of every connection, so an unboxed
                    // future would cost each idle keep-alive connection its
                    // full size (~3.7 KiB; see bench/idle.sh).
                    let answer = Box::pin(handler(request));
                    let tracker = tracker.clone();
                    async move {
                        let answer = answer.await;
                        if Linger::is_marked(&answer) {
                            tracker.linger();
                        }
                        tracker.sending();
                        Ok::<_, Infallible>(answer.map(|body| Tracked::new(body, tracker)))
                    }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(listener = name, error = %with_causes(&e), "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(listener = name, "all connections drained"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, grace_s = grace.as_secs(), "grace period over; closing the remaining connections");
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
