//! The one body type the proxy sends both ways, and bounded buffering.
//!
//! A body is either held in memory (small enough to replay or inspect) or
//! streamed from the other side, possibly after a prefix that was already
//! read while deciding. Memory stays bounded: nothing reads past the limit it
//! was given.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::inbound::limits::Cap;

/// Errors a forwarded body can end with: the peer's (`hyper::Error`), or a
/// limit the proxy enforces ([`crate::inbound::limits::BodyTooLarge`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body as the proxy forwards it.
#[derive(Debug)]
pub enum ProxyBody {
    /// Entirely in memory; `None` once sent.
    Full(Option<Bytes>),
    /// The rest of a peer's body, after a prefix already read.
    Stream {
        /// Bytes read ahead of the stream (while buffering hit its limit).
        prefix: Option<Bytes>,
        /// What is still to come from the peer.
        rest: Incoming,
    },
    /// A client's body streamed under `max_request_body_bytes`: it fails
    /// (and so aborts the upstream request) once it passes the cap.
    Capped {
        /// Bytes still allowed.
        cap: Cap,
        /// The body being counted.
        inner: Box<ProxyBody>,
    },
    /// A body streamed from a peer, failing with [`Stalled`] when no frame
    /// comes for `gap`: a stream that stops flowing must not hold a request
    /// (and its connections) forever, while one that keeps flowing may take
    /// as long as it needs.
    Paced {
        /// The body being watched.
        inner: Box<ProxyBody>,
        /// The longest wait allowed for the next frame.
        gap: Duration,
        /// When the current wait runs out; set on the first poll.
        timer: Option<Pin<Box<Sleep>>>,
        /// Told once the body has ended, so the request timeout can start
        /// from the last byte sent.
        ended: Option<oneshot::Sender<()>>,
    },
}

/// A streamed body sent no frame for the allowed gap.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no data for {} ms", .0.as_millis())]
pub struct Stalled(pub Duration);

impl ProxyBody {
    /// A body with no bytes.
    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    /// A body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Full(None)
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }

    /// `self`, failing once no frame comes for `gap`; `ended` is told when
    /// it ends.
    pub fn paced(self, gap: Duration, ended: Option<oneshot::Sender<()>>) -> ProxyBody {
        ProxyBody::Paced {
            inner: Box::new(self),
            gap,
            timer: None,
            ended,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream { prefix, rest } => {
                if let Some(b) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
            ProxyBody::Capped { cap, inner } => {
                let frame = std::task::ready!(Pin::new(inner.as_mut()).poll_frame(cx));
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                    cap.take(data.len())?;
                }
                Poll::Ready(frame)
            }
            ProxyBody::Paced {
                inner,
                gap,
                timer,
                ended,
            } => {
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*gap)));
                match Pin::new(inner.as_mut()).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        // Told at the last frame too: a sender may stop polling
                        // once the body says it is at its end.
                        if frame.is_none() || inner.is_end_stream() {
                            if let Some(ended) = ended.take() {
                                let _ = ended.send(());
                            }
                        }
                        timer.as_mut().reset(Instant::now() + *gap);
                        Poll::Ready(frame)
                    }
                    Poll::Pending => match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Stalled(*gap).into()))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            ProxyBody::Capped { inner, .. } | ProxyBody::Paced { inner, .. } => {
                inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Stream { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            ProxyBody::Capped { inner, .. } | ProxyBody::Paced { inner, .. } => inner.size_hint(),
        }
    }
}

/// The outcome of reading a body up to a limit.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body, no longer than the limit.
    Complete(Bytes),
    /// The body is longer than the limit: what was read, and the rest.
    Partial(ProxyBody),
}

/// Reads `body` until it ends or more than `limit` bytes have come.
///
/// A declared length above the limit is not read at all. Trailers are
/// dropped: WeChat uses none.
pub async fn buffer_up_to(mut body: Incoming, limit: usize) -> Result<Buffered, hyper::Error> {
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Ok(Buffered::Partial(ProxyBody::Stream {
            prefix: None,
            rest: body,
        }));
    }
    if hint.exact() == Some(0) {
        return Ok(Buffered::Complete(Bytes::new()));
    }
    // The common case is one data frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        len += data.len();
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity(len.min(limit + 1));
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                first = None;
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
        if len > limit {
            let prefix = joined.map(BytesMut::freeze).or(first);
            return Ok(Buffered::Partial(ProxyBody::Stream { prefix, rest: body }));
        }
    }
    Ok(Buffered::Complete(
        joined.map(BytesMut::freeze).or(first).unwrap_or_default(),
    ))
}
