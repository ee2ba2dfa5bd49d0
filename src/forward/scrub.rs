//! Tokens never go back to callers: every token the proxy injected into a
//! request is replaced by the placeholder in the answer's headers and in
//! every body the proxy holds in memory anyway (small JSON it inspects).
//!
//! An upstream has many ways to echo the token it was sent: a `Location` or
//! `Set-Cookie` header, a URL in a small JSON answer, and WeChat's own
//! `rid/get`, whose `request_url` is the query of an earlier call. A caller
//! holding that token could use it without the proxy, after its key is
//! revoked. The check is one substring search per token over bytes already
//! in memory; nothing is copied unless a token is found.
//!
//! `rid/get` is scrubbed, not refused: its record is how callers debug a
//! failed call. Its `request_url` may carry an older token than the ones
//! this request used (a classic token stays valid for a while after a new
//! one is fetched), so there every `access_token=` value is replaced,
//! whatever it is.

use std::cell::RefCell;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use memchr::memmem;

use crate::wechat::PLACEHOLDER_TOKEN;

/// The path of WeChat's `rid/get`, whose answer quotes an earlier query.
pub const RID_GET: &str = "/cgi-bin/openapi/rid/get";

/// Replaces every token of `tokens` in header values.
pub fn headers(headers: &mut HeaderMap, tokens: &[&str]) {
    for value in headers.values_mut() {
        let Some(bytes) = replace(value.as_bytes(), tokens) else {
            continue;
        };
        // The placeholder is plain ASCII: the value stays valid.
        if let Ok(clean) = HeaderValue::from_bytes(&bytes) {
            *value = clean;
        }
    }
}

/// `body` with every token of `tokens` replaced; `None` when it held none
/// (the common case, with no copy).
pub fn body(body: &[u8], tokens: &[&str]) -> Option<Bytes> {
    replace(body, tokens).map(Bytes::from)
}

/// `body` with the value of every `access_token=` replaced, whatever token
/// it is: for answers that quote earlier requests ([`RID_GET`]).
pub fn quoted_queries(body: &[u8]) -> Option<Bytes> {
    const NAME: &[u8] = b"access_token=";
    let spans = memmem::find_iter(body, NAME).map(|at| {
        let value = at + NAME.len();
        // A query value ends at the next parameter, or where the quoting
        // JSON string or URL ends.
        let end = body[value..]
            .iter()
            .position(|b| matches!(b, b'&' | b'"' | b'\\' | b'#' | b' ' | b'\'' | b'<'))
            .map_or(body.len(), |n| value + n);
        (value, end)
    });
    splice(body, spans.collect()).map(Bytes::from)
}

/// `haystack` with every one of `needles` replaced by the placeholder, in
/// one pass over the original; `None` if there is none.
fn replace(haystack: &[u8], needles: &[&str]) -> Option<Vec<u8>> {
    let mut spans = Vec::new();
    for needle in needles.iter().map(|n| n.as_bytes()) {
        // Most header values, and many answers, are shorter than a token
        // (~140 bytes): they cannot hold one, and are not searched.
        if needle.is_empty() || haystack.len() < needle.len() {
            continue;
        }
        with_finder(needle, |finder| {
            spans.extend(finder.find_iter(haystack).map(|at| (at, at + needle.len())));
        });
    }
    splice(haystack, spans)
}

thread_local! {
    /// Searchers for the last few tokens. Building one for a 140-byte token
    /// cost about as much as the rest of a small request's path (callgrind:
    /// ~10,000 instructions, five per request), while a token lives two
    /// hours and every request looks for the same one or two.
    static FINDERS: RefCell<Vec<memmem::Finder<'static>>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with a searcher for `needle`, built once per thread and token.
fn with_finder<R>(needle: &[u8], f: impl FnOnce(&memmem::Finder<'_>) -> R) -> R {
    /// Tokens remembered per thread: the current and previous token of a
    /// couple of apps.
    const KEEP: usize = 4;
    FINDERS.with(|cell| {
        let mut finders = cell.borrow_mut();
        if let Some(at) = finders.iter().position(|x| x.needle() == needle) {
            return f(&finders[at]);
        }
        if finders.len() >= KEEP {
            finders.remove(0);
        }
        finders.push(memmem::Finder::new(needle).into_owned());
        f(finders.last().expect("just pushed"))
    })
}

/// `bytes` with each span (start, end) replaced by the placeholder;
/// overlapping spans count once. `None` if there are none.
fn splice(bytes: &[u8], mut spans: Vec<(usize, usize)>) -> Option<Vec<u8>> {
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for (start, end) in spans {
        if start < copied {
            copied = copied.max(end);
            continue;
        }
        out.extend_from_slice(&bytes[copied..start]);
        out.extend_from_slice(PLACEHOLDER_TOKEN.as_bytes());
        copied = end;
    }
    out.extend_from_slice(&bytes[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = PLACEHOLDER_TOKEN;

    #[test]
    fn bodies_without_a_token_are_not_copied() {
        assert!(body(br#"{"errcode":0}"#, &["TOK", "OLD"]).is_none());
        assert!(body(b"", &["TOK"]).is_none());
        assert!(body(b"abc", &[""]).is_none());
    }

    #[test]
    fn a_token_is_found_after_others_pushed_its_searcher_out() {
        for i in 0..6 {
            let token = format!("TOKEN-{i}");
            let got = body(format!("[{token}]").as_bytes(), &[&token]).unwrap();
            assert_eq!(got, format!("[{P}]"));
        }
        assert_eq!(body(b"[TOKEN-0]", &["TOKEN-0"]).unwrap(), format!("[{P}]"));
        assert!(
            body(b"TOKEN", &["TOKEN-0"]).is_none(),
            "shorter than the token"
        );
    }

    #[test]
    fn every_occurrence_of_every_token_is_replaced() {
        let got = body(b"TOK-OLD-TOKTOK", &["TOK", "OLD"]).unwrap();
        assert_eq!(got, format!("{P}-{P}-{P}{P}"));
    }

    #[test]
    fn header_values_are_replaced_in_place() {
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            "https://x/?access_token=TOK&a=1".parse().unwrap(),
        );
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "t=OLD".parse().unwrap());
        headers(&mut h, &["TOK", "OLD"]);
        assert_eq!(h["location"], format!("https://x/?access_token={P}&a=1"));
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", &format!("t={P}")]);
    }

    #[test]
    fn quoted_queries_lose_every_token_value() {
        let got = quoted_queries(
            br#"{"request_url":"a=1&access_token=ANY-old_1&b=2","x":"access_token=Z\"","y":"access_token="}"#,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            format!(
                r#"{{"request_url":"a=1&access_token={P}&b=2","x":"access_token={P}\"","y":"access_token={P}"}}"#
            )
        );
        assert!(quoted_queries(br#"{"errcode":0}"#).is_none());
    }
}
