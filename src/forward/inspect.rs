//! Reading `errcode` from WeChat's answers without parsing them.
//!
//! WeChat reports token errors with HTTP 200 and a small JSON body, so the
//! proxy must look inside. A full JSON parse per response would cost an
//! allocation per key; this scanner walks the top-level object once, skips
//! every value it does not need, allocates nothing (but for a key written
//! with escapes) and never reads past [`INSPECT_LIMIT`].

/// Bodies larger than this are streamed through unread.
pub const INSPECT_LIMIT: usize = 64 * 1024;

/// The top-level integer `errcode` of the JSON object in `body`, as
/// `serde_json` would read it (`value["errcode"].as_i64()`, the last one
/// winning when the key repeats). `None` when the body is not an object, has
/// no integer `errcode`, or the scan meets bytes that are not JSON.
pub fn errcode(body: &[u8]) -> Option<i64> {
    let body = &body[..body.len().min(INSPECT_LIMIT)];
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        return None;
    }
    let mut found = None;
    loop {
        s.ws();
        let is_errcode = s.key_is(b"errcode")?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if is_errcode {
            found = Some(s.integer());
        } else {
            s.skip_value()?;
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    found.flatten()
}

/// Whether a response body looks like JSON worth scanning.
pub fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Reads a string key and tells whether it equals `want`.
    fn key_is(&mut self, want: &[u8]) -> Option<bool> {
        let start = self.i + 1;
        let escaped = self.skip_string()?;
        let raw = &self.b[start..self.i - 1];
        if !escaped {
            return Some(raw == want);
        }
        Some(unescape(raw).as_deref() == Some(want))
    }

    /// Skips a string starting at the opening quote; tells whether it held
    /// escapes.
    fn skip_string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// Reads a JSON number; `Some` only for an integer that fits `i64`.
    fn integer(&mut self) -> Option<i64> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        if text.is_empty() || text.contains(['.', 'e', 'E', '+']) {
            // Not a number, or a float: serde_json's as_i64 says None. Skip
            // whatever value stands here so the scan can go on.
            if text.is_empty() {
                self.skip_value()?;
            }
            return None;
        }
        // serde_json reads "-0" as a float.
        text.parse()
            .ok()
            .filter(|&n: &i64| n != 0 || !text.starts_with('-'))
    }

    /// Skips one value of any kind, nested ones without recursion.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

/// Decodes the escapes of a JSON string's contents; `None` if malformed.
fn unescape(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = *raw.get(i + 1)?;
        i += 2;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = std::str::from_utf8(raw.get(i..i + 4)?).ok()?;
                i += 4;
                let unit = u16::from_str_radix(hex, 16).ok()?;
                // A surrogate cannot spell "errcode"; any char that is not
                // ASCII makes the key differ, which is all we need to know.
                char::from_u32(u32::from(unit)).unwrap_or('\u{fffd}')
            }
            _ => return None,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_top_level_errcode() {
        assert_eq!(
            errcode(br#"{"errcode":40001,"errmsg":"invalid credential"}"#),
            Some(40001)
        );
        assert_eq!(
            errcode(br#" { "errmsg" : "x" , "errcode" : -1 } "#),
            Some(-1)
        );
        assert_eq!(errcode(br#"{"errcode":0,"errmsg":"ok"}"#), Some(0));
    }

    #[test]
    fn ignores_nested_and_quoted_errcodes() {
        assert_eq!(errcode(br#"{"data":{"errcode":40001}}"#), None);
        assert_eq!(errcode(br#"{"msg":"\"errcode\":40001"}"#), None);
        assert_eq!(
            errcode(br#"{"a":[1,{"errcode":1}],"errcode":42001}"#),
            Some(42001)
        );
    }

    #[test]
    fn non_integer_errcodes_are_none() {
        assert_eq!(errcode(br#"{"errcode":"40001"}"#), None);
        assert_eq!(errcode(br#"{"errcode":4.0e4}"#), None);
        assert_eq!(errcode(br#"{"errcode":null}"#), None);
    }

    #[test]
    fn escaped_key_and_duplicates_follow_serde_json() {
        assert_eq!(errcode(br#"{"err\u0063ode":40014}"#), Some(40014));
        assert_eq!(errcode(br#"{"errcode":1,"errcode":2}"#), Some(2));
    }

    #[test]
    fn garbage_is_none() {
        for b in [
            &b""[..],
            b"{",
            b"[1]",
            b"<html>",
            b"{\"errcode\"",
            b"{\"a\":}",
            b"\xff\xfe",
        ] {
            assert_eq!(errcode(b), None, "{b:?}");
        }
    }
}
