//! WeChat's and WeCom's message encryption, built in the test with the same
//! crates the scheme names: what the push sender does, so tests can send
//! the proxy genuine (or forged) pushes.

use aes::Aes256;
use base64::Engine as _;
use cbc::cipher::block_padding::{NoPadding, Pkcs7, RawPadding};
use cbc::cipher::{BlockEncryptMut, KeyIvInit};

/// `message` encrypted for `receive_id` with the 43-character `aes_key`
/// (base64 of the ciphertext).
pub fn encrypt(message: &str, receive_id: &str, aes_key: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(format!("{aes_key}="))
        .expect("the test key is canonical base64");
    let mut plain = b"0123456789abcdef".to_vec();
    plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
    plain.extend_from_slice(message.as_bytes());
    plain.extend_from_slice(receive_id.as_bytes());
    let len = plain.len();
    let padded = (len / 32 + 1) * 32;
    plain.resize(padded, 0);
    Pkcs7::raw_pad(&mut plain[padded - 32..], len - (padded - 32));
    let cipher = cbc::Encryptor::<Aes256>::new_from_slices(&key, &key[..16]).expect("key");
    let encrypted = cipher
        .encrypt_padded_mut::<NoPadding>(&mut plain, padded)
        .expect("whole blocks");
    base64::engine::general_purpose::STANDARD.encode(encrypted)
}

/// `msg_signature`, `timestamp` and `nonce` as a query string, signing
/// `encrypted` with `token`.
pub fn signed_query(encrypted: &str, token: &str, timestamp: u64, nonce: &str) -> String {
    let timestamp = timestamp.to_string();
    let mut parts = [token, timestamp.as_str(), nonce, encrypted];
    parts.sort_unstable();
    let signature = super::sha1_by_python(&parts.concat());
    format!("msg_signature={signature}&timestamp={timestamp}&nonce={nonce}")
}

/// Seconds since the epoch now: a fresh push's timestamp.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
