//! Who may call: the inbound key a request must carry.
//!
//! The proxy holds a credential that can post to every follower of an
//! account, so whoever reaches its port acts with it. With a key configured,
//! a request must carry `Authorization: Bearer <key>` or
//! `X-Wechat-Proxy-Key: <key>`; the comparison takes the same time whatever
//! the key's bytes (`subtle`), and both headers are removed before anything
//! goes upstream.

use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The header that carries the key for clients that cannot set
/// `Authorization`.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-wechat-proxy-key");

/// Shortest key accepted: anything shorter is guessable.
pub const MIN_KEY_LEN: usize = 16;

/// A key callers must present. Like [`Secret`], its `Debug` shows nothing.
#[derive(Debug, Clone)]
pub struct InboundKey(Secret);

impl InboundKey {
    /// Wraps a key that config validation has checked.
    pub fn new(secret: Secret) -> InboundKey {
        InboundKey(secret)
    }

    /// Whether `presented` is the key, in time independent of where they
    /// differ (the length may show; keys are random and long).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.expose().as_bytes().ct_eq(presented).into()
    }

    /// Whether `headers` carry the key in either accepted header.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| bearer_token(v.as_bytes()))
            .fold(false, |ok, token| ok | self.matches(token));
        let direct = headers
            .get_all(KEY_HEADER)
            .iter()
            .fold(false, |ok, v| ok | self.matches(v.as_bytes()));
        bearer | direct
    }
}

/// Why a key from the config is not acceptable; never shows the key.
pub fn key_problem(key: &Secret) -> Option<String> {
    let key = key.expose();
    if key.len() < MIN_KEY_LEN {
        return Some(format!(
            "the key has {} characters; use at least {MIN_KEY_LEN} random ones (e.g. `openssl rand -hex 32`)",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "the key must be printable ASCII without spaces: it travels in an HTTP header".into(),
        );
    }
    None
}

/// The credential of an `Authorization: Bearer <token>` value.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = b"bearer";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = &value[scheme.len()..];
    let token = rest.trim_ascii_start();
    // At least one space must separate the scheme from the token.
    (token.len() < rest.len()).then(|| token.trim_ascii_end())
}

/// Removes the inbound credentials: they are for the proxy, never for
/// WeChat (whose APIs behind this proxy use no `Authorization` header).
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(AUTHORIZATION);
    headers.remove(KEY_HEADER);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: &str = "0123456789abcdef-key";

    fn key() -> InboundKey {
        InboundKey::new(Secret::new(KEY.into()))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn either_header_carries_the_key() {
        let k = key();
        assert!(k.admits(&headers(&[("authorization", &format!("Bearer {KEY}"))])));
        assert!(k.admits(&headers(&[("authorization", &format!("bearer   {KEY} "))])));
        assert!(k.admits(&headers(&[("x-wechat-proxy-key", KEY)])));
        assert!(k.admits(&headers(&[
            ("x-wechat-proxy-key", "wrong"),
            ("x-wechat-proxy-key", KEY)
        ])));
    }

    #[test]
    fn anything_else_is_refused() {
        let k = key();
        for h in [
            headers(&[]),
            headers(&[("authorization", KEY)]),
            headers(&[("authorization", &format!("Bearer{KEY}"))]),
            headers(&[("authorization", &format!("Basic {KEY}"))]),
            headers(&[("authorization", &format!("Bearer {KEY}x"))]),
            headers(&[("x-wechat-proxy-key", &KEY[1..])]),
        ] {
            assert!(!k.admits(&h), "{h:?}");
        }
    }

    #[test]
    fn short_or_unprintable_keys_are_refused_without_being_shown() {
        let problem = key_problem(&Secret::new("hunter2".into())).unwrap();
        assert!(!problem.contains("hunter2"), "{problem}");
        assert!(key_problem(&Secret::new("0123456789 abcdef".into())).is_some());
        assert!(key_problem(&Secret::new(KEY.into())).is_none());
    }
}
