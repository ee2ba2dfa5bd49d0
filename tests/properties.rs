//! Property tests of the two byte-level routines every request passes through: the query
//! rewrite and the errcode scanner.

use proptest::prelude::*;
use serde_json::Value;
use wechat_token_proxy::inspect::{errcode, INSPECT_LIMIT};
use wechat_token_proxy::query::with_token;

// ---------------------------------------------------------------- the query rewrite

/// Query bytes hyper lets through (`http`'s query map): `!`, `$`..`;`, `=`, `?`..`~`, and
/// bytes from 0x80 when the whole target is UTF-8. Space, `"`, `#`, `<`, `>` and controls
/// never reach the proxy.
fn query_char() -> impl Strategy<Value = char> {
    let ascii: Vec<char> = (0x21u8..=0x7e)
        .filter(|b| !matches!(b, b'"' | b'#' | b'<' | b'>'))
        .map(char::from)
        .collect();
    prop_oneof![
        8 => proptest::sample::select(ascii),
        1 => any::<char>().prop_filter("not ASCII", |c| !c.is_ascii()),
    ]
}

fn query_text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(query_char(), 0..max).prop_map(|cs| cs.into_iter().collect())
}

/// Names that are, or look like, `access_token` in its spellings.
const NAMES: &[&str] = &[
    "access_token",
    "access%5Ftoken",
    "access%5ftoken",
    "%61ccess_token",
    "%61%63%63%65%73%73%5F%74%6F%6B%65%6E",
    "ACCESS_TOKEN",
    "access_tokens",
    "access_token%",
    "access%5Ftoken%",
    "access+token",
    "openid",
    "",
];

/// Queries made of `name[=value]` pairs, the names often an `access_token` spelling.
fn structured_query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        3 => proptest::sample::select(NAMES).prop_map(str::to_owned),
        1 => query_text(8).prop_filter("no separators", |s| !s.contains(['&', '='])),
    ];
    let value = prop_oneof![
        Just(None),
        query_text(8)
            .prop_map(|v| v.replace('&', ""))
            .prop_map(Some),
    ];
    proptest::collection::vec((name, value), 0..8).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}={v}"),
                None => n,
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Whether a `name=value` part names `access_token` once percent-decoded (an escape that
/// is not `%XX` stays as it is). Written apart from the proxy's own test on purpose.
fn names_access_token(part: &str) -> bool {
    let name = part.split('=').next().unwrap_or("").as_bytes();
    let mut decoded = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if name[i] == b'%' && i + 2 < name.len() {
            if let (Some(h), Some(l)) = (hex(name[i + 1]), hex(name[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(name[i]);
        i += 1;
    }
    decoded == b"access_token"
}

fn rewrite(query: &str, token: &str) -> String {
    let mut out = String::new();
    with_token(Some(query), token, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_other_parameter_survives_byte_exact_and_in_order(
        query in prop_oneof![query_text(64), structured_query()],
        token in "[A-Za-z0-9_-]{1,64}|\\PC{0,16}",
    ) {
        let out = rewrite(&query, &token);
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !names_access_token(p))
            .collect();
        let parts: Vec<&str> = out.split('&').collect();
        let (last, rest) = parts.split_last().unwrap();
        prop_assert_eq!(rest, &kept[..]);
        prop_assert!(last.starts_with("access_token="), "{}", last);
    }

    #[test]
    fn exactly_one_access_token_comes_out_and_it_is_ours(
        query in prop_oneof![query_text(64), structured_query()],
        token in "[A-Za-z0-9_-]{1,64}|\\PC{0,16}",
    ) {
        let out = rewrite(&query, &token);
        let tokens: Vec<&str> = out.split('&').filter(|p| names_access_token(p)).collect();
        prop_assert_eq!(tokens.len(), 1, "{}", out);
        let value = tokens[0].strip_prefix("access_token=").unwrap();
        let decoded = percent_decode(value);
        prop_assert_eq!(decoded.as_slice(), token.as_bytes());
    }

    #[test]
    fn the_rewritten_target_is_still_a_valid_uri(
        query in prop_oneof![query_text(64), structured_query()],
        token in "\\PC{0,32}",
    ) {
        let out = rewrite(&query, &token);
        let target = format!("/cgi-bin/user/info?{out}");
        prop_assert!(
            target.parse::<http::uri::PathAndQuery>().is_ok(),
            "{:?}", target
        );
    }
}

fn percent_decode(value: &str) -> Vec<u8> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h =
                u8::from_str_radix(&value[i + 1..i + 3], 16).expect("our own escapes are valid");
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------- the errcode scanner

/// A JSON value kept as a tree so the writer can vary its spelling.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    /// A number as written: serde_json decides what it reads it as.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    /// Pairs in order, duplicates allowed.
    Obj(Vec<(String, Json)>),
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (40000i64..50000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        // As many cases as the others together: this is where readers disagree.
        4 => proptest::sample::select(vec![
            "0", "-0", "-1", "0.0", "-0.0", "1e3", "1E+3", "-1.5e-3", "40001.0", "40001e0",
            "9223372036854775807", "9223372036854775808", "-9223372036854775808",
            "-9223372036854775809", "18446744073709551616",
        ])
        .prop_map(str::to_owned),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("errcode".to_owned()),
        2 => proptest::sample::select(vec!["errmsg", "err", "errcodes", "Errcode", "errcode ", "e\"rrcode", ""])
            .prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Num),
        "\\PC{0,12}".prop_map(Json::Str),
        Just(Json::Str("\"errcode\":40001".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Arr),
            proptest::collection::vec((key(), inner), 0..6).prop_map(Json::Obj),
        ]
    })
}

/// Objects whose `errcode` (often there, sometimes twice) is mostly a number, in every
/// spelling serde_json reads differently.
fn top_level_object() -> impl Strategy<Value = Json> {
    let errcode_value = prop_oneof![
        3 => number().prop_map(Json::Num),
        1 => json(),
    ];
    let pair = prop_oneof![(Just("errcode".to_owned()), errcode_value), (key(), json()),];
    proptest::collection::vec(pair, 0..8).prop_map(Json::Obj)
}

/// Writes `value` as JSON, with whitespace and `\u` escapes chosen by `seed`.
fn write(value: &Json, seed: u64) -> Vec<u8> {
    let mut w = Writer {
        out: String::new(),
        rng: seed | 1,
    };
    w.ws();
    w.value(value);
    w.ws();
    w.out.into_bytes()
}

struct Writer {
    out: String,
    rng: u64,
}

impl Writer {
    fn roll(&mut self, one_in: u64) -> bool {
        // xorshift64: deterministic from the seed, so failures shrink and replay.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng.is_multiple_of(one_in)
    }

    fn ws(&mut self) {
        while self.roll(3) {
            let c = [' ', '\t', '\n', '\r'][(self.rng % 4) as usize];
            self.out.push(c);
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            let must = matches!(c, '"' | '\\') || (c as u32) < 0x20;
            if must || self.roll(4) {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    self.out.push_str(&format!("\\u{unit:04x}"));
                }
            } else {
                self.out.push(c);
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, value: &Json) {
        match value {
            Json::Null => self.out.push_str("null"),
            Json::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => self.out.push_str(n),
            Json::Str(s) => self.string(s),
            Json::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.ws();
                    self.value(item);
                    self.ws();
                }
                self.out.push(']');
            }
            Json::Obj(pairs) => {
                self.out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.ws();
                    self.string(k);
                    self.ws();
                    self.out.push(':');
                    self.ws();
                    self.value(v);
                    self.ws();
                }
                self.out.push('}');
            }
        }
    }
}

/// What serde_json says the errcode is; `None` when it does not read the text at all.
fn serde_errcode(text: &[u8]) -> Option<Option<i64>> {
    let value: Value = serde_json::from_slice(text).ok()?;
    Some(value.get("errcode").and_then(Value::as_i64))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn errcode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = errcode(&bytes);
    }

    #[test]
    fn errcode_never_panics_on_mangled_json(object in top_level_object(), seed in any::<u64>(), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
        let mut text = write(&object, seed);
        let _ = errcode(&text[..cut.index(text.len() + 1)]);
        if !text.is_empty() {
            let at = cut.index(text.len());
            text[at] = junk;
        }
        let _ = errcode(&text);
    }

    #[test]
    fn errcode_agrees_with_serde_json_on_valid_objects(object in top_level_object(), seed in any::<u64>()) {
        let text = write(&object, seed);
        prop_assume!(text.len() <= INSPECT_LIMIT);
        let expected = serde_errcode(&text);
        // Every text the writer makes is JSON serde_json reads, but for its depth limit.
        prop_assume!(expected.is_some());
        prop_assert_eq!(
            errcode(&text),
            expected.unwrap(),
            "{}",
            String::from_utf8_lossy(&text)
        );
    }
}

proptest! {
    // Each case builds 64 KiB; fewer cases keep the run short.
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn bytes_after_the_inspect_limit_cannot_change_the_answer(
        object in top_level_object(),
        seed in any::<u64>(),
        shift in 0usize..64,
        tail_a in proptest::collection::vec(any::<u8>(), 0..64),
        tail_b in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // An object padded out so that it ends just before, at or just after the limit.
        let mut text = write(&object, seed);
        while text.last().is_some_and(u8::is_ascii_whitespace) {
            text.pop();
        }
        text.pop(); // reopen the object: drop its '}'
        let close = if text.len() <= 1 { &b"\"pad\":\""[..] } else { &b",\"pad\":\""[..] };
        text.extend_from_slice(close);
        let target = INSPECT_LIMIT - 32 + shift;
        if text.len() + 2 < target {
            text.resize(target - 2, b'x');
        }
        text.extend_from_slice(b"\"}");
        text.resize(text.len().max(INSPECT_LIMIT), b' ');
        let head = &text[..INSPECT_LIMIT];

        let with = |tail: &[u8]| {
            let mut all = head.to_vec();
            all.extend_from_slice(tail);
            errcode(&all)
        };
        prop_assert_eq!(with(&tail_a), errcode(head));
        prop_assert_eq!(with(&tail_b), errcode(head));
    }
}
