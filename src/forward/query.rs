//! The query rewrite: drop every `access_token` the client sent, keep every
//! other parameter byte for byte and in order, append the real token.

use std::borrow::Cow;

/// Appends to `out` the query `query` without its `access_token` parameters,
/// followed by `access_token=<token>`, percent-encoded where needed: the
/// whole rewrite in one call. The proxy itself encodes a token once, when it
/// arrives, and calls [`with_param`].
pub fn with_token(query: Option<&str>, token: &str, out: &mut String) {
    with_param(query, "access_token", &encoded(token), out);
}

/// Appends to `out` the query `query` without its `param` parameters,
/// followed by `param=<token>`; `token` comes percent-encoded (a token
/// encodes itself once, when it arrives, not on every request).
pub fn with_param(query: Option<&str>, param: &str, token: &str, out: &mut String) {
    rewrite(query, &[param], &[(param, token)], out);
}

/// Appends to `out` the query `query` without the parameters named in
/// `drop` (however percent-encoded), followed by the pairs of `add`, whose
/// values come percent-encoded ([`encoded`]). Every other parameter is kept
/// byte for byte and in order.
pub fn rewrite(query: Option<&str>, drop: &[&str], add: &[(&str, &str)], out: &mut String) {
    let mut first = true;
    let mut separate = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push('&');
        }
    };
    if let Some(query) = query {
        for part in query.split('&') {
            if part.is_empty() || drop.iter().any(|param| names(part, param)) {
                continue;
            }
            separate(out);
            out.push_str(part);
        }
    }
    for (name, value) in add {
        separate(out);
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
}

/// Whether a `name=value` pair names `param`, however the client
/// percent-encoded the name.
fn names(part: &str, param: &str) -> bool {
    let name = part.split_once('=').map_or(part, |(n, _)| n);
    if name == param {
        return true;
    }
    // Encoded forms are longer than the plain name; anything shorter or
    // without '%' cannot be one.
    name.len() > param.len() && name.contains('%') && decoded_eq(name, param.as_bytes())
}

/// Whether `name`, percent-decoded, is `want`.
pub(crate) fn decoded_eq(name: &str, want: &[u8]) -> bool {
    // A bad escape decodes to a literal '%', which `want` never holds.
    percent_encoding::percent_decode_str(name).eq(want.iter().copied())
}

/// What is percent-encoded in a query value: everything outside RFC 3986's
/// unreserved set.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `value` percent-encoded for a query: borrowed when nothing in it needs
/// encoding, as in WeChat's tokens (`[A-Za-z0-9_-]`) and appids.
pub fn encoded(value: &str) -> Cow<'_, str> {
    if value.bytes().all(|b| UNRESERVED[usize::from(b)]) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(percent_encoding::utf8_percent_encode(value, NOT_UNRESERVED).collect())
}

/// The bytes [`NOT_UNRESERVED`] leaves as they are (RFC 3986's unreserved
/// set), as a table.
static UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~');
        b += 1;
    }
    table
};

/// Percent-encodes a query value (for token fetch URLs).
pub fn encode(value: &str) -> String {
    encoded(value).into_owned()
}

/// The first value of `name` in `query`, percent-decoded (`+` is a space, as
/// forms send it); `None` when absent or not UTF-8 once decoded.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    let raw = query?.split('&').find_map(|part| {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        (key == name).then_some(value)
    })?;
    // A broken escape is refused, not passed on as a literal '%'.
    let well_formed = raw
        .split('%')
        .skip(1)
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return None;
    }
    // `+` first: an escaped plus (%2B) must stay a plus.
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|v| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unreserved_table_agrees_with_the_encoder_on_every_byte() {
        for b in 0..=255u8 {
            let bytes = [b];
            let encoded: String =
                percent_encoding::percent_encode(&bytes, NOT_UNRESERVED).collect();
            let kept = encoded.len() == 1;
            assert_eq!(UNRESERVED[usize::from(b)], kept, "byte {b:#04x}");
        }
    }

    #[test]
    fn values_are_encoded_only_where_needed() {
        assert_eq!(encode("AbZ09-_.~"), "AbZ09-_.~");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn a_parameter_is_found_and_decoded() {
        let q = Some("a=1&url=https%3A%2F%2Fx.cn%2Fp%3Fq%3D1%23top&b=a+b");
        assert_eq!(param(q, "url").as_deref(), Some("https://x.cn/p?q=1#top"));
        assert_eq!(param(q, "b").as_deref(), Some("a b"));
        assert_eq!(param(q, "c"), None);
        assert_eq!(param(Some("url=%zz"), "url"), None);
        assert_eq!(param(None, "url"), None);
    }

    fn rewrite(q: Option<&str>) -> String {
        let mut s = String::new();
        with_param(q, "access_token", "TOK", &mut s);
        s
    }

    #[test]
    fn appends_token_and_keeps_others_in_order() {
        assert_eq!(rewrite(None), "access_token=TOK");
        assert_eq!(rewrite(Some("")), "access_token=TOK");
        assert_eq!(rewrite(Some("b=2&a=1")), "b=2&a=1&access_token=TOK");
        assert_eq!(
            rewrite(Some("x=%E4%B8%AD&flag")),
            "x=%E4%B8%AD&flag&access_token=TOK"
        );
    }

    #[test]
    fn removes_every_client_token_however_spelled() {
        assert_eq!(
            rewrite(Some(
                "access_token=PLACEHOLDER&a=1&access%5Ftoken=x&access_token"
            )),
            "a=1&access_token=TOK"
        );
        assert_eq!(
            rewrite(Some("access_tokens=1")),
            "access_tokens=1&access_token=TOK"
        );
    }

    #[test]
    fn a_rewrite_drops_every_spelling_of_its_names_and_adds_its_pairs() {
        let mut s = String::new();
        super::rewrite(
            Some("appid=x&js_code=C&secr%65t=s&grant_type=g&a"),
            &["appid", "secret", "grant_type"],
            &[("appid", "wx1"), ("secret", "s%2B%2F")],
            &mut s,
        );
        assert_eq!(s, "js_code=C&a&appid=wx1&secret=s%2B%2F");
        let mut s = String::new();
        super::rewrite(Some("a=1&b=2"), &["b"], &[], &mut s);
        assert_eq!(s, "a=1");
        let mut s = String::new();
        super::rewrite(None, &[], &[], &mut s);
        assert_eq!(s, "");
    }

    #[test]
    fn encodes_non_ascii_byte_by_byte() {
        assert_eq!(encoded("a中b"), "a%E4%B8%ADb");
    }

    #[test]
    fn encodes_unusual_token_bytes_and_borrows_plain_ones() {
        assert_eq!(encoded("a+b/c="), "a%2Bb%2Fc%3D");
        assert!(matches!(encoded("AbZ09-_.~"), Cow::Borrowed("AbZ09-_.~")));
    }
}
