//! WeChat's encrypted pushes to the authorization-event URL: check the
//! signature and age, decrypt, check the AppId, read the ticket or the
//! authorization event.
//!
//! The scheme (WeChat's "message encryption"): `msg_signature` is the SHA-1
//! hex of the sorted concatenation of the push token, `timestamp`, `nonce`
//! and the base64 ciphertext; the ciphertext is AES-256-CBC with the key
//! from the EncodingAESKey and the IV its first 16 bytes, PKCS#7-padded to
//! a multiple of 32 bytes (not the cipher's 16); the plaintext is 16 random
//! bytes, the message length (4 bytes, big-endian), the XML message, and the
//! component_appid. The cipher and the padding check are RustCrypto's.

use aes::Aes256;
use base64::Engine as _;
use cbc::cipher::block_padding::{NoPadding, Pkcs7, RawPadding};
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use subtle::ConstantTimeEq;

use crate::config::AesKey;

/// WeChat pads to this, not to AES's 16-byte block.
const PAD_BLOCK: usize = 32;

/// A push older (or further in the future) than this is refused: a genuine
/// one arrives within seconds, so an older one is a replay.
pub const MAX_AGE_S: u64 = 600;

/// What a verified push says.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A new `component_verify_ticket`.
    Ticket(String),
    /// "authorized" or "updateauthorized": an account granted (or changed)
    /// the platform's rights; the one-time code gives its refresh token.
    Authorized {
        /// The account's appid.
        appid: String,
        /// The `AuthorizationCode`, for `api_query_auth`.
        code: String,
    },
    /// "unauthorized": the account withdrew the platform's rights.
    Unauthorized {
        /// The account's appid.
        appid: String,
    },
}

/// A push that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    /// What it says.
    pub event: Event,
    /// Its signed `timestamp` (Unix seconds): a ticket older than the one
    /// held must not replace it.
    pub timestamp: u64,
    /// Its `msg_signature`, which names it: the same push twice is a replay.
    pub signature: String,
}

/// Why a push was refused; each names what to check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// `msg_signature`, `timestamp` or `nonce` is missing from the query.
    #[error("the push's query lacks {0}: forward WeChat's query string (msg_signature, timestamp, nonce) with the body")]
    MissingParam(&'static str),
    /// The body holds no `<Encrypt>` element.
    #[error("the body is not WeChat's encrypted push: no <Encrypt> element")]
    NotAPush,
    /// The signature does not match: forged, or the push token is wrong.
    #[error(
        "msg_signature does not match: the push is forged or push_token_env holds the wrong token"
    )]
    BadSignature,
    /// The ciphertext does not decrypt into WeChat's layout.
    #[error("the push does not decrypt: encoding_aes_key_env holds the wrong key, or the body was altered")]
    BadCiphertext,
    /// Decrypted, but for another platform.
    #[error("the push is for AppId {0}, not this platform's component_appid")]
    OtherAppId(String),
    /// `timestamp` is not a number.
    #[error("the push's timestamp is not a number")]
    BadTimestamp,
    /// Signed more than [`MAX_AGE_S`] from now.
    #[error("the push is {0} s away from this host's clock (at most 600 s are taken): a replayed push, or a wrong clock")]
    Stale(u64),
    /// Decrypted, but not an event the proxy handles.
    #[error(
        "the push is neither a component_verify_ticket nor an authorization event (InfoType {0})"
    )]
    UnknownEvent(String),
    /// Decrypted, but a field the event needs is missing.
    #[error("the {0} push has no {1}")]
    MissingField(String, &'static str),
}

/// What a raw push says, after every check; `now` is Unix seconds.
pub fn open(
    body: &[u8],
    query: Option<&str>,
    push_token: &str,
    key: &AesKey,
    component_appid: &str,
    now: u64,
) -> Result<Opened, PushError> {
    let param = |name: &'static str| {
        crate::forward::query::param(query, name).ok_or(PushError::MissingParam(name))
    };
    let (signature, timestamp, nonce) = (
        param("msg_signature")?,
        param("timestamp")?,
        param("nonce")?,
    );
    let body = std::str::from_utf8(body).map_err(|_| PushError::NotAPush)?;
    let encrypted = element(body, "Encrypt").ok_or(PushError::NotAPush)?;
    let expected = signature_of(push_token, &timestamp, &nonce, encrypted);
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(PushError::BadSignature);
    }
    // After the signature: the timestamp is only worth reading once it is
    // known to be WeChat's.
    let timestamp: u64 = timestamp.parse().map_err(|_| PushError::BadTimestamp)?;
    if timestamp.abs_diff(now) > MAX_AGE_S {
        return Err(PushError::Stale(timestamp.abs_diff(now)));
    }
    let (message, appid) = decrypt(key, encrypted)?;
    if appid != component_appid {
        return Err(PushError::OtherAppId(appid));
    }
    Ok(Opened {
        event: event(&message)?,
        timestamp,
        signature,
    })
}

/// The event a decrypted message holds.
fn event(message: &str) -> Result<Event, PushError> {
    let info_type = element(message, "InfoType").unwrap_or("none");
    let field = |name: &'static str| match element(message, name) {
        Some(value) if !value.is_empty() => Ok(value.to_owned()),
        _ => Err(PushError::MissingField(info_type.to_owned(), name)),
    };
    match info_type {
        "component_verify_ticket" => Ok(Event::Ticket(field("ComponentVerifyTicket")?)),
        "authorized" | "updateauthorized" => Ok(Event::Authorized {
            appid: field("AuthorizerAppid")?,
            code: field("AuthorizationCode")?,
        }),
        "unauthorized" => Ok(Event::Unauthorized {
            appid: field("AuthorizerAppid")?,
        }),
        other => Err(PushError::UnknownEvent(other.to_owned())),
    }
}

/// The message and ReceiveId of `encrypted` once `signature` is checked:
/// WeCom's pushes (and its URL check's `echostr`) use the same scheme.
pub fn verified(
    signature: &str,
    timestamp: &str,
    nonce: &str,
    encrypted: &str,
    push_token: &str,
    key: &AesKey,
) -> Result<(String, String), PushError> {
    let expected = signature_of(push_token, timestamp, nonce, encrypted);
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(PushError::BadSignature);
    }
    decrypt(key, encrypted)
}

/// `msg_signature`: SHA-1 hex of the four values sorted and concatenated.
pub fn signature_of(token: &str, timestamp: &str, nonce: &str, encrypted: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypted];
    parts.sort_unstable();
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        parts.concat().as_bytes(),
    );
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Decrypts `encrypted` (base64) into the message and the AppId after it.
fn decrypt(key: &AesKey, encrypted: &str) -> Result<(String, String), PushError> {
    let bad = |_| PushError::BadCiphertext;
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(encrypted.trim())
        .map_err(|_| PushError::BadCiphertext)?;
    if bytes.is_empty() || bytes.len() % PAD_BLOCK != 0 {
        return Err(PushError::BadCiphertext);
    }
    let decryptor = cbc::Decryptor::<Aes256>::new_from_slices(&key.0, &key.0[..16])
        .map_err(|_| PushError::BadCiphertext)?;
    let plain = decryptor
        .decrypt_padded_mut::<NoPadding>(&mut bytes)
        .map_err(bad)?;
    // The crate's PKCS#7 check, over WeChat's 32-byte padding block.
    let tail_at = plain.len() - PAD_BLOCK;
    let kept = Pkcs7::raw_unpad(&plain[tail_at..]).map_err(bad)?.len();
    let plain = &plain[..tail_at + kept];
    let rest = plain.get(16..).ok_or(PushError::BadCiphertext)?;
    let (len, rest) = rest.split_at_checked(4).ok_or(PushError::BadCiphertext)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| PushError::BadCiphertext)?) as usize;
    let (message, appid) = rest.split_at_checked(len).ok_or(PushError::BadCiphertext)?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| PushError::BadCiphertext);
    Ok((text(message)?, text(appid)?))
}

/// The text of the first `<name>` element, CDATA unwrapped. WeChat's pushes
/// are flat, fixed-shape XML: a general XML parser would add a dependency
/// for no gain.
pub fn element<'x>(xml: &'x str, name: &str) -> Option<&'x str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let inner = xml[start..end].trim();
    Some(
        inner
            .strip_prefix("<![CDATA[")
            .and_then(|s| s.strip_suffix("]]>"))
            .unwrap_or(inner),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_read_with_or_without_cdata() {
        let xml = "<xml><AppId><![CDATA[wx1]]></AppId><Encrypt>abc</Encrypt></xml>";
        assert_eq!(element(xml, "AppId"), Some("wx1"));
        assert_eq!(element(xml, "Encrypt"), Some("abc"));
        assert_eq!(element(xml, "Nonce"), None);
    }

    #[test]
    fn the_signature_sorts_its_parts() {
        // sha1("abcd") in hex.
        assert_eq!(
            signature_of("c", "a", "d", "b"),
            "81fe8bfe87576c3ecb22426f8e57847382917acf"
        );
    }

    /// WeChat's own sample (the WXBizMsgCrypt download's Sample.py, cited
    /// by SDKs as the known answer): key, token, query and ciphertext.
    const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const SAMPLE_TOKEN: &str = "spamtest";
    const SAMPLE_APPID: &str = "wx2c2769f8efd9abc2";
    const SAMPLE_TIME: u64 = 1409735669;
    const SAMPLE_QUERY: &str =
        "msg_signature=5d197aaffba7e9b25a30732f161a50dee96bd5fa&timestamp=1409735669&nonce=1320562132";
    const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

    #[test]
    fn wechats_sample_push_verifies_and_decrypts() {
        let key = AesKey::from_console(SAMPLE_KEY).expect("the sample key");
        assert_eq!(
            signature_of(SAMPLE_TOKEN, "1409735669", "1320562132", SAMPLE_ENCRYPT),
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
        );
        let (message, appid) = decrypt(&key, SAMPLE_ENCRYPT).expect("decrypts");
        assert_eq!(appid, SAMPLE_APPID);
        assert_eq!(element(&message, "Content"), Some("abcdteT"));
        assert_eq!(element(&message, "MsgId"), Some("6054768590064713728"));
        let body = format!("<xml><Encrypt><![CDATA[{SAMPLE_ENCRYPT}]]></Encrypt></xml>");
        let sample = |appid: &str, now: u64| {
            open(
                body.as_bytes(),
                Some(SAMPLE_QUERY),
                SAMPLE_TOKEN,
                &key,
                appid,
                now,
            )
        };
        // A message push, not a ticket: every check passed, then no event.
        assert_eq!(
            sample(SAMPLE_APPID, SAMPLE_TIME),
            Err(PushError::UnknownEvent("none".into()))
        );
        // The same push eleven minutes later: a replay, refused before
        // anything is decrypted.
        assert_eq!(
            sample(SAMPLE_APPID, SAMPLE_TIME + 660),
            Err(PushError::Stale(660))
        );
        assert_eq!(
            sample("wx0", SAMPLE_TIME),
            Err(PushError::OtherAppId(SAMPLE_APPID.into()))
        );
    }

    #[test]
    fn authorization_events_are_read_and_others_named() {
        let authorized = "<xml><AppId>wx1</AppId><InfoType><![CDATA[updateauthorized]]></InfoType><AuthorizerAppid>wx2</AuthorizerAppid><AuthorizationCode>code@@@x</AuthorizationCode></xml>";
        assert_eq!(
            event(authorized),
            Ok(Event::Authorized {
                appid: "wx2".into(),
                code: "code@@@x".into()
            })
        );
        let gone =
            "<xml><InfoType>unauthorized</InfoType><AuthorizerAppid>wx2</AuthorizerAppid></xml>";
        assert_eq!(
            event(gone),
            Ok(Event::Unauthorized {
                appid: "wx2".into()
            })
        );
        let no_code =
            "<xml><InfoType>authorized</InfoType><AuthorizerAppid>wx2</AuthorizerAppid></xml>";
        assert_eq!(
            event(no_code),
            Err(PushError::MissingField(
                "authorized".into(),
                "AuthorizationCode"
            ))
        );
    }

    #[test]
    fn missing_query_and_forged_signature_are_refused() {
        let key = AesKey([7; 32]);
        let body = b"<xml><Encrypt>AAAA</Encrypt></xml>";
        assert_eq!(
            open(body, Some("timestamp=1&nonce=2"), "t", &key, "wx", 1),
            Err(PushError::MissingParam("msg_signature"))
        );
        assert_eq!(
            open(
                body,
                Some("msg_signature=00&timestamp=1&nonce=2"),
                "t",
                &key,
                "wx",
                1,
            ),
            Err(PushError::BadSignature)
        );
    }
}
