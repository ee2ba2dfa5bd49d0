//! Per-connection timers: slow request heads, idle keep-alive connections
//! and clients that stop reading their answer are cut off.
//!
//! hyper 1.x has one server timer, `header_read_timeout`, and it starts
//! whenever the connection waits for a head: right after accept and right
//! after each answer. So it cannot tell a keep-alive connection resting
//! between requests from a client trickling a head byte by byte, and
//! nothing bounds a client that stops reading a download. This module keeps
//! the connection's phase and one timer per connection:
//!
//! | phase | entered when | cut off after |
//! |---|---|---|
//! | head | accept; the first byte after an idle spell | `header_read_timeout` from entering |
//! | handling | hyper hands the request to the service | never: the proxy's own timeouts bound it |
//! | sending | the service returns the answer | `idle_timeout` without a byte written |
//! | idle | the answer's body is done | `idle_timeout` |
//!
//! The [`Tracker`] holds the phase; the service and the answer's body
//! ([`Tracked`]) move it, and the IO wrapper ([`Watched`]) arms its timer
//! for it and fails the connection's IO when it fires.
//!
//! The IO wrapper also ends connections properly where hyper cannot: it
//! counts each request head's bytes and answers a head over
//! `max_request_header_bytes` with a JSON 431 itself, and it closes
//! lingering ([`crate::inbound::linger`]) after that and after answers the service
//! marked with [`crate::inbound::linger::Linger`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::inbound::linger::{self, Draining};

/// What a connection is doing, as far as its timers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head = 0,
    Handling = 1,
    Sending = 2,
    Idle = 3,
}

/// One connection's phase, shared by its IO, its service and its answer.
#[derive(Debug)]
pub struct Tracker {
    /// The [`Phase`].
    phase: AtomicU8,
    /// Set when an answer went out before its request was read: the
    /// connection closes lingering.
    linger: AtomicBool,
}

impl Tracker {
    /// A tracker for a connection just accepted: waiting for a head.
    pub fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            phase: AtomicU8::new(Phase::Head as u8),
            linger: AtomicBool::new(false),
        })
    }

    /// The connection must read on before closing.
    pub fn linger(&self) {
        self.linger.store(true, Ordering::Release);
    }

    /// A request head arrived and is being served.
    pub fn handling(&self) {
        self.set(Phase::Handling);
    }

    /// The answer's head is ready; its body goes out.
    pub fn sending(&self) {
        self.set(Phase::Sending);
    }

    /// The answer is out; the connection waits for the next request.
    fn done(&self) {
        self.set(Phase::Idle);
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn get(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Head,
            1 => Phase::Handling,
            2 => Phase::Sending,
            _ => Phase::Idle,
        }
    }
}

/// The limits a connection's IO enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a whole request head.
    pub header_read: Duration,
    /// Between requests, and without write progress while sending.
    pub idle: Duration,
    /// The longest request head, in bytes.
    pub max_head: usize,
}

/// How far a connection has got in reading the current request head.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    /// Bytes of it so far.
    seen: usize,
    /// 1 after a `\n`, 2 after `\n\r`: one more `\n` ends the head.
    newlines: u8,
    /// The head has ended; bytes after it are the body's.
    done: bool,
}

impl Head {
    /// Counts `bytes`; `Err` once the head passes `max` bytes. Jumps from
    /// line end to line end (memchr) rather than looking at every byte: this
    /// runs on every read of every request.
    fn count(&mut self, bytes: &[u8], max: usize) -> Result<(), ()> {
        let mut from = 0;
        while !self.done && from < bytes.len() {
            let Some(at) = memchr::memchr(b'\n', &bytes[from..]).map(|n| from + n) else {
                // No line end: what stays open is a lone "\r" after one.
                self.newlines = match (&bytes[from..], self.newlines) {
                    (b"\r", 1) => 2,
                    _ => 0,
                };
                from = bytes.len();
                break;
            };
            // The head ends at "\n\n" or "\n\r\n".
            self.done = match at - from {
                0 => matches!(self.newlines, 1 | 2),
                1 => bytes[from] == b'\r' && self.newlines == 1,
                _ => false,
            };
            self.newlines = if self.done { 0 } else { 1 };
            from = at + 1;
        }
        self.seen += from;
        if self.seen > max {
            return Err(());
        }
        Ok(())
    }
}

/// A connection that is ending on the IO wrapper's own terms.
enum Closing {
    /// Writing the 431 answer: bytes left from this offset.
    Answer(Vec<u8>, usize),
    /// Sending FIN, so the client sees the answer end.
    Shutdown,
    /// Reading on until the client is done.
    Drain(Draining),
    /// Done; the connection's IO now fails.
    Closed,
}

/// A connection's IO with its timer: reads and writes fail with
/// `TimedOut` once the timer for the current phase fires, which makes hyper
/// close the connection.
pub struct Watched<T> {
    /// The socket.
    io: T,
    /// The phase, moved by the service and the answer's body.
    tracker: Arc<Tracker>,
    /// The limits.
    timeouts: Timeouts,
    /// The phase the timer is set for.
    armed: Option<Phase>,
    /// The deadline of the current phase.
    timer: Pin<Box<Sleep>>,
    /// The current request head's size so far.
    head: Head,
    /// Set once the connection ends on the wrapper's terms.
    closing: Option<Closing>,
}

impl<T> Watched<T> {
    /// Wraps a just-accepted connection.
    pub fn new(io: T, tracker: Arc<Tracker>, timeouts: Timeouts) -> Watched<T> {
        Watched {
            io,
            tracker,
            timeouts,
            armed: None,
            timer: Box::pin(tokio::time::sleep(timeouts.header_read)),
            head: Head::default(),
            closing: None,
        }
    }

    fn limit(&self, phase: Phase) -> Option<Duration> {
        match phase {
            Phase::Head => Some(self.timeouts.header_read),
            Phase::Handling => None,
            Phase::Sending | Phase::Idle => Some(self.timeouts.idle),
        }
    }

    fn restart(&mut self, phase: Phase) {
        self.armed = Some(phase);
        if phase == Phase::Head {
            self.head = Head::default();
        }
        if let Some(limit) = self.limit(phase) {
            self.timer.as_mut().reset(Instant::now() + limit);
        }
    }

    /// Re-arms the timer on a phase change; fails once it fired.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let phase = self.tracker.get();
        if self.armed != Some(phase) {
            self.restart(phase);
        }
        let Some(limit) = self.limit(phase) else {
            return Ok(());
        };
        if self.timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let what = match phase {
            Phase::Head => "no complete request head",
            Phase::Sending => "the client read nothing of its answer",
            _ => "idle keep-alive connection",
        };
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} in {} ms", limit.as_millis()),
        ))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Watched<T> {
    /// Drives a close on the wrapper's terms: answer (for 431), FIN, drain.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(closing) = &mut self.closing else {
                return Poll::Ready(());
            };
            let next = match closing {
                Closing::Answer(bytes, at) => {
                    match ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*at..])) {
                        Ok(n) if n > 0 && *at + n < bytes.len() => {
                            *at += n;
                            continue;
                        }
                        Ok(n) if n > 0 => Closing::Shutdown,
                        _ => Closing::Closed,
                    }
                }
                Closing::Shutdown => match ready!(Pin::new(&mut self.io).poll_shutdown(cx)) {
                    Ok(()) => Closing::Drain(Draining::new()),
                    Err(_) => Closing::Closed,
                },
                Closing::Drain(draining) => {
                    ready!(draining.poll_drain(&mut self.io, cx));
                    Closing::Closed
                }
                Closing::Closed => return Poll::Ready(()),
            };
            self.closing = Some(next);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_some() {
            ready!(this.poll_close(cx));
            return Poll::Ready(Err(linger::head_refused()));
        }
        this.check(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if buf.filled().len() > before && this.tracker.get() == Phase::Idle {
            // The first byte of the next request: its head is now on the clock.
            this.tracker.set(Phase::Head);
            this.restart(Phase::Head);
        }
        // After an answer marked to linger, what comes is the rest of the
        // unread body, not a new head.
        let closing = this.tracker.linger.load(Ordering::Acquire);
        if this.tracker.get() == Phase::Head
            && !closing
            && this
                .head
                .count(&buf.filled()[before..], this.timeouts.max_head)
                .is_err()
        {
            // hyper never sees these bytes; the wrapper answers and closes.
            buf.set_filled(before);
            let answer = linger::head_too_large(this.timeouts.max_head);
            this.closing = Some(Closing::Answer(answer, 0));
            ready!(this.poll_close(cx));
            return Poll::Ready(Err(linger::head_refused()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check(cx)?;
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if written > 0 && this.armed == Some(Phase::Sending) {
            // Progress: a slow reader is fine, a stopped one is not.
            this.restart(Phase::Sending);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() && this.tracker.linger.load(Ordering::Acquire) {
            this.closing = Some(Closing::Shutdown);
        }
        if this.closing.is_some() {
            ready!(this.poll_close(cx));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check(cx)?;
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        if written > 0 && this.armed == Some(Phase::Sending) {
            this.restart(Phase::Sending);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// An answer's body that moves its connection to "idle" once hyper is done
/// with it (sent, or dropped with the connection).
pub struct Tracked<B> {
    /// The answer's body.
    body: B,
    /// Its connection's phase.
    tracker: Arc<Tracker>,
}

impl<B> Tracked<B> {
    /// Wraps the body of the answer to a request on `tracker`'s connection.
    pub fn new(body: B, tracker: Arc<Tracker>) -> Tracked<B> {
        Tracked { body, tracker }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.tracker.done();
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::Head;
    use proptest::prelude::*;

    /// The rule, a byte at a time: the head ends at "\n\n" or "\n\r\n".
    fn by_byte(head: &mut Head, bytes: &[u8], max: usize) -> Result<(), ()> {
        for &b in bytes {
            if head.done {
                return Ok(());
            }
            head.seen += 1;
            if head.seen > max {
                return Err(());
            }
            head.newlines = match (b, head.newlines) {
                (b'\n', 1 | 2) => {
                    head.done = true;
                    0
                }
                (b'\n', _) => 1,
                (b'\r', 1) => 2,
                _ => 0,
            };
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn counting_by_line_ends_agrees_with_the_byte_rule(
            chunks in prop::collection::vec(prop::collection::vec(prop::sample::select(b"\r\nab".to_vec()), 0..12), 0..8),
            max in 0usize..40,
        ) {
            let (mut fast, mut slow) = (Head::default(), Head::default());
            for chunk in &chunks {
                let (a, b) = (fast.count(chunk, max), by_byte(&mut slow, chunk, max));
                prop_assert_eq!(a, b);
                if a.is_err() {
                    break;
                }
                prop_assert_eq!((fast.seen, fast.done, fast.newlines), (slow.seen, slow.done, slow.newlines));
            }
        }
    }
}
