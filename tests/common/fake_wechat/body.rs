//! Response bodies the fake sends: small buffers, large generated streams (so a 64 MiB
//! download costs no 64 MiB buffer) and a stream that breaks halfway on purpose.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Length of the repeating byte pattern: 251 is prime, so the pattern does not line up with
/// power-of-two buffer sizes and a shifted or dropped chunk shows.
const PERIOD: usize = 251;

/// One chunk of the pattern, a whole number of periods so chunks join seamlessly.
static PATTERN: [u8; PERIOD * 256] = pattern();

/// Builds [`PATTERN`] at compile time.
const fn pattern() -> [u8; PERIOD * 256] {
    let mut out = [0u8; PERIOD * 256];
    let mut i = 0;
    while i < out.len() {
        out[i] = (i % PERIOD) as u8;
        i += 1;
    }
    out
}

/// The byte at `offset` of every generated body (`media/get`, the image's tail, the broken
/// download), so tests can check content without keeping a copy.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % PERIOD as u64) as u8
}

/// Why a generated body ended early; hyper then drops the connection.
#[derive(Debug)]
pub struct BrokenOnPurpose;

impl std::fmt::Display for BrokenOnPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake WeChat breaks this body on purpose")
    }
}

impl std::error::Error for BrokenOnPurpose {}

/// Every kind of body the fake answers with.
pub enum Payload {
    /// A buffer sent in one frame (`None` once sent).
    Full(Option<Bytes>),
    /// `left` more pattern bytes, streamed chunk by chunk from offset `sent`.
    Pattern { sent: u64, left: u64 },
    /// `left` pattern bytes, then a pause (so they leave the socket), then an error. The
    /// caller announces a larger `Content-Length`, so the peer sees a truncated body.
    BreakAfter {
        /// Offset of the next byte to send.
        sent: u64,
        /// Bytes still to send before breaking.
        left: u64,
        /// The pause before the error, created on first need.
        pause: Option<Pin<Box<Sleep>>>,
    },
    /// These bytes, then nothing ever again: the connection stays open (an upstream that
    /// stalls mid-body).
    Stall(Option<Bytes>),
}

impl Payload {
    /// A body with exactly these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Payload {
        Payload::Full(Some(bytes.into()))
    }

    /// `len` pattern bytes, generated as they are sent.
    pub fn pattern(len: u64) -> Payload {
        Payload::Pattern { sent: 0, left: len }
    }

    /// `len` pattern bytes, then the connection drops.
    pub fn break_after(len: u64) -> Payload {
        Payload::BreakAfter {
            sent: 0,
            left: len,
            pause: None,
        }
    }
}

/// The next pattern chunk at `*sent`, at most `*left` bytes; advances both.
fn next_chunk(sent: &mut u64, left: &mut u64) -> Bytes {
    let start = (*sent % PATTERN.len() as u64) as usize;
    let len = (PATTERN.len() - start).min(usize::try_from(*left).unwrap_or(usize::MAX));
    *sent += len as u64;
    *left -= len as u64;
    Bytes::from_static(&PATTERN[start..start + len])
}

impl Body for Payload {
    type Data = Bytes;
    type Error = BrokenOnPurpose;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BrokenOnPurpose>>> {
        match self.get_mut() {
            Payload::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Payload::Pattern { left: 0, .. } => Poll::Ready(None),
            Payload::Pattern { sent, left } => {
                Poll::Ready(Some(Ok(Frame::data(next_chunk(sent, left)))))
            }
            Payload::Stall(first) => match first.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            },
            Payload::BreakAfter { sent, left, pause } => {
                if *left > 0 {
                    return Poll::Ready(Some(Ok(Frame::data(next_chunk(sent, left)))));
                }
                let pause = pause.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep(Duration::from_millis(100)))
                });
                pause.as_mut().poll(cx).map(|()| Some(Err(BrokenOnPurpose)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Payload::Full(None) | Payload::Pattern { left: 0, .. })
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Payload::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Payload::Full(None) => SizeHint::with_exact(0),
            Payload::Pattern { left, .. } => SizeHint::with_exact(*left),
            // The announced Content-Length is a lie on purpose; the header carries it.
            Payload::BreakAfter { .. } | Payload::Stall(_) => SizeHint::default(),
        }
    }
}

/// `data` in gzip's format, its deflate stream made of stored blocks: what a
/// client must decode before it can read a byte, without a compression crate.
pub fn gzip(data: &[u8]) -> Bytes {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Bytes::from(out)
}

/// CRC-32 as gzip checks it (IEEE, reflected).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
