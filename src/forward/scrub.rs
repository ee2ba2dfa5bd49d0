//! Credentials never go back to callers.
//!
//! Every answer: each credential the proxy placed in the request (a token,
//! an AppSecret) is replaced by the placeholder in the headers and in every
//! body the proxy holds in memory anyway (small JSON it inspects). An
//! upstream has many ways to echo what it was sent: a `Location` or
//! `Set-Cookie` header, a URL in a small JSON answer. The check is one
//! substring search per credential over bytes already in memory; nothing is
//! copied unless one is found.
//!
//! Answers on routes that can hold credentials the proxy never placed (the
//! route table marks them: a platform's component APIs, `rid/get`) are read
//! whole, whatever their size, and lose the value of every credential field
//! ([`FIELDS`], also inside JSON quoted in a string) and every credential in
//! a quoted query (`rid/get`'s `request_url` is the query of an earlier
//! call, which may carry an older token than this request used). They are
//! scrubbed, not refused: `rid/get`'s record is how callers debug a failed
//! call, the authorizer list how a platform learns its accounts.

use std::cell::RefCell;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use memchr::memmem;

use crate::wechat::PLACEHOLDER_TOKEN;

/// JSON fields whose string value is a credential, in WeChat's answers and
/// requests (a request's body is quoted in `rid/get`'s record).
pub const FIELDS: [&str; 14] = [
    "access_token",
    "authorizer_access_token",
    "authorizer_refresh_token",
    "refresh_token",
    "component_access_token",
    "component_verify_ticket",
    "component_appsecret",
    "appsecret",
    "secret",
    "corpsecret",
    "suite_access_token",
    "suite_ticket",
    "provider_access_token",
    "permanent_code",
];

/// Query parameters whose value is a credential, found by their ending
/// (`access_token=` finds `component_access_token=` too).
const QUERY_PARAMS: [&[u8]; 5] = [
    b"access_token=",
    b"refresh_token=",
    b"secret=",
    b"component_verify_ticket=",
    b"permanent_code=",
];

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

/// `body` with every token of `tokens`, every credential field's value and
/// every credential in a quoted query replaced; `None` when it held none.
pub fn credentials(body: &[u8], tokens: &[&str]) -> Option<Bytes> {
    let mut spans = token_spans(body, tokens);
    field_spans(body, &mut spans);
    query_spans(body, &mut spans);
    splice(body, spans).map(Bytes::from)
}

/// The value spans of every credential field, as a JSON member
/// (`"name": "value"`) or as one inside JSON quoted in a string
/// (`\"name\": \"value\"`).
fn field_spans(body: &[u8], spans: &mut Vec<(usize, usize)>) {
    for quote in [&b"\""[..], &b"\\\""[..]] {
        for name in FIELDS {
            let mut needle = quote.to_vec();
            needle.extend_from_slice(name.as_bytes());
            needle.extend_from_slice(quote);
            for at in memmem::find_iter(body, &needle) {
                if let Some(span) = string_value(body, at + needle.len(), quote) {
                    spans.push(span);
                }
            }
        }
    }
}

/// The span of the string value after a member name ending at `at`
/// (whitespace, `:`, whitespace, `quote`, the value, `quote`); `None` when
/// the name is not a member's or its value is not a string.
fn string_value(body: &[u8], at: usize, quote: &[u8]) -> Option<(usize, usize)> {
    let skip_ws = |mut i: usize| {
        while body.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let colon = skip_ws(at);
    if body.get(colon) != Some(&b':') {
        return None;
    }
    let open = skip_ws(colon + 1);
    let start = open + quote.len();
    if body.get(open..start) != Some(quote) {
        return None;
    }
    let mut i = start;
    while i < body.len() {
        if body[i..].starts_with(quote) {
            return Some((start, i));
        }
        // An escape is skipped whole, so an escaped quote does not end a
        // plain string (a quoted one ends at its escaped quote).
        i += if quote.len() == 1 && body[i] == b'\\' {
            2
        } else {
            1
        };
    }
    None
}

/// The value spans of every credential parameter in a query quoted
/// anywhere in `body`.
fn query_spans(body: &[u8], spans: &mut Vec<(usize, usize)>) {
    for name in QUERY_PARAMS {
        spans.extend(memmem::find_iter(body, name).map(|at| {
            let value = at + name.len();
            // A query value ends at the next parameter, or where the quoting
            // JSON string or URL ends.
            let end = body[value..]
                .iter()
                .position(|b| matches!(b, b'&' | b'"' | b'\\' | b'#' | b' ' | b'\'' | b'<'))
                .map_or(body.len(), |n| value + n);
            (value, end)
        }));
    }
}

/// `haystack` with every one of `needles` replaced by the placeholder, in
/// one pass over the original; `None` if there is none.
fn replace(haystack: &[u8], needles: &[&str]) -> Option<Vec<u8>> {
    splice(haystack, token_spans(haystack, needles))
}

/// Where each of `needles` occurs in `haystack`.
fn token_spans(haystack: &[u8], needles: &[&str]) -> Vec<(usize, usize)> {
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
    spans
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
/// overlapping spans count once, empty ones replace nothing. `None` if
/// there are none.
fn splice(bytes: &[u8], mut spans: Vec<(usize, usize)>) -> Option<Vec<u8>> {
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for (start, end) in spans {
        if start == end {
            continue;
        }
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
    fn quoted_queries_lose_every_credential_value() {
        let got = credentials(
            br#"{"request_url":"a=1&access_token=ANY-old_1&b=2&secret=S","x":"component_access_token=Z\"","y":"access_token="}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            format!(
                r#"{{"request_url":"a=1&access_token={P}&b=2&secret={P}","x":"component_access_token={P}\"","y":"access_token="}}"#
            )
        );
        assert!(credentials(br#"{"errcode":0}"#, &[]).is_none());
    }

    #[test]
    fn credential_fields_lose_their_values_at_any_depth_and_in_quoted_json() {
        let got = credentials(
            br#"{"list":[{"authorizer_appid":"wx1","refresh_token" : "R1"}],"authorization_info":{"authorizer_access_token":"A\"B","expires_in":7200},"response_body":"{\"access_token\":\"T2\",\"expires_in\":7200}","note":"refresh_token","n":{"secret":null}}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            format!(
                r#"{{"list":[{{"authorizer_appid":"wx1","refresh_token" : "{P}"}}],"authorization_info":{{"authorizer_access_token":"{P}","expires_in":7200}},"response_body":"{{\"access_token\":\"{P}\",\"expires_in\":7200}}","note":"refresh_token","n":{{"secret":null}}}}"#
            )
        );
    }
}
