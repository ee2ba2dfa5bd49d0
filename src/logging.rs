//! The log cannot carry a credential, whoever writes the line.
//!
//! The proxy's own messages never hold a token or a secret, but its
//! dependencies log what they see: hyper-util once warned with a request's
//! path and query, `access_token` included, and any of them may at `trace`.
//! So every formatted line passes through [`redacting_stderr`] on its way
//! out, which replaces the value of every credential-carrying query
//! parameter (`access_token=`, `secret=`, `corpsecret=`, …). Upstream URIs
//! carry their credentials only there, so a line can still name a host or a
//! path but never a token. The cost is one substring search per line.
//!
//! Nor can a value break a line: WeChat's `errmsg` is logged as sent, and a
//! newline in it would start what looks like a line of the proxy's own in
//! the text format. Every line break before a line's end is written as `\n`
//! (or `\r`), whoever wrote the field.

use std::io::{self, Write};

use memchr::memmem;

/// Query parameters whose values are credentials.
const CREDENTIALS: [&[u8]; 6] = [
    b"access_token=",
    b"secret=",
    b"component_access_token=",
    b"authorizer_access_token=",
    b"refresh_token=",
    b"ticket=",
];

/// What a credential's value is replaced with.
const REDACTED: &[u8] = b"[REDACTED]";

/// A `MakeWriter` for `tracing_subscriber::fmt().with_writer(…)`: standard
/// error, with credentials redacted from every line.
pub fn redacting_stderr() -> RedactingWriter {
    RedactingWriter
}

/// Writes to standard error what [`redact`] leaves of each write. The fmt
/// layer writes each event in one call, so a credential never straddles
/// two writes.
#[derive(Debug, Clone, Copy)]
pub struct RedactingWriter;

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let redacted = redact(buf);
        let line = redacted.as_deref().unwrap_or(buf);
        match one_line(line) {
            Some(joined) => io::stderr().write_all(&joined)?,
            None => io::stderr().write_all(line)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `line` with every line break before its final newline escaped (`\n`,
/// `\r`); `None` when it has none (the usual case, with no copy).
pub fn one_line(line: &[u8]) -> Option<Vec<u8>> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    memchr::memchr2(b'\n', b'\r', body)?;
    let mut out = Vec::with_capacity(line.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out.extend_from_slice(&line[body.len()..]);
    Some(out)
}

/// A writer that puts `prefix` before each line (the fmt layer writes one
/// event per call), so every line says it comes from the demo.
#[derive(Debug)]
pub struct Prefixed<W> {
    /// Where the prefixed lines go.
    inner: W,
    /// What starts every line.
    prefix: &'static str,
}

impl<W: Write> Prefixed<W> {
    /// Lines written to `inner`, each starting with `prefix`.
    pub fn new(inner: W, prefix: &'static str) -> Prefixed<W> {
        Prefixed { inner, prefix }
    }
}

impl<W: Write> Write for Prefixed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut line = Vec::with_capacity(self.prefix.len() + buf.len());
        line.extend_from_slice(self.prefix.as_bytes());
        line.extend_from_slice(buf);
        self.inner.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `line` with the value of every credential parameter replaced; `None`
/// when it holds none (the usual case, with no copy). `secret=` also
/// catches `corpsecret=`, `appsecret=` and `component_appsecret=`.
pub fn redact(line: &[u8]) -> Option<Vec<u8>> {
    // Most lines hold no '=' inside a value at all.
    memchr::memchr(b'=', line)?;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for name in CREDENTIALS {
        for at in memmem::find_iter(line, name) {
            let start = at + name.len();
            let end = line[start..]
                .iter()
                .position(|&b| {
                    matches!(
                        b,
                        b'&' | b'"'
                            | b'\''
                            | b'\\'
                            | b' '
                            | b'\n'
                            | b'\r'
                            | b'\t'
                            | b'#'
                            | b','
                            | b';'
                            | b')'
                            | b'>'
                            | b'}'
                            | b']'
                            | 0x1b
                    )
                })
                .map_or(line.len(), |n| start + n);
            if end > start {
                spans.push((start, end));
            }
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = Vec::with_capacity(line.len());
    let mut copied = 0;
    for (start, end) in spans {
        if start < copied {
            continue;
        }
        out.extend_from_slice(&line[copied..start]);
        out.extend_from_slice(REDACTED);
        copied = end;
    }
    out.extend_from_slice(&line[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(line: &str) -> String {
        String::from_utf8(redact(line.as_bytes()).unwrap_or_else(|| line.as_bytes().to_vec()))
            .unwrap()
    }

    #[test]
    fn token_and_secret_values_are_redacted() {
        assert_eq!(
            clean("WARN CONNECT request stripping path: /?access_token=TOK-1_x&a=1\n"),
            "WARN CONNECT request stripping path: /?access_token=[REDACTED]&a=1\n"
        );
        assert_eq!(
            clean(r#"{"uri":"https://h/cgi-bin/gettoken?corpid=ww&corpsecret=S3"}"#),
            r#"{"uri":"https://h/cgi-bin/gettoken?corpid=ww&corpsecret=[REDACTED]"}"#
        );
        assert_eq!(
            clean("x component_access_token=A y secret=B"),
            "x component_access_token=[REDACTED] y secret=[REDACTED]"
        );
    }

    #[test]
    fn a_line_break_inside_a_line_is_escaped_and_the_end_kept() {
        let joined = one_line(b"WARN error=40164 invalid ip\nINFO forged\r\n").unwrap();
        assert_eq!(joined, b"WARN error=40164 invalid ip\\nINFO forged\\r\n");
        assert!(one_line(b"INFO plain line\n").is_none());
        assert!(one_line(b"INFO no end").is_none());
    }

    #[test]
    fn lines_without_credentials_are_left_alone() {
        assert!(redact(b"INFO request path=/cgi-bin/user/info status=200").is_none());
        assert!(redact(b"count=3 limit=4").is_none());
        assert!(redact(b"access_token= empty").is_none());
    }
}
