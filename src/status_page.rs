//! The admin listener's home page: every app's state as one small HTML page
//! for a person with a browser, where `/apps` serves the same facts as JSON.
//!
//! The page renders the very values `/apps` produces, field by field, so a
//! field added there shows here without a change to this file. It is
//! self-contained (no script, no external asset, a content security policy
//! that allows neither) and reloads itself every few seconds. Every value is
//! HTML-escaped; `/apps` holds no token or secret, so neither can this page.
//!
//! A browser cannot send a bearer header, so [`basic_password`] reads the
//! admin key from HTTP Basic credentials (the key is the password; the user
//! name is ignored), and [`BASIC_CHALLENGE`] makes the browser ask for it.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, AUTHORIZATION};
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use crate::body::ProxyBody;

/// How often the page reloads itself, in seconds.
const RELOAD_S: u64 = 5;

/// The life WeChat gives a token or ticket today (`expires_in` 7200): the
/// full length of a life-left bar. A longer life widens the bar to fit.
const NOMINAL_LIFE_S: u64 = 7200;

/// Sent with a 401 from the admin listener, beside the bearer challenge, so a
/// browser asks for the admin key. The realm names what the key opens.
pub const BASIC_CHALLENGE: HeaderValue =
    HeaderValue::from_static("Basic realm=\"wechat-token-proxy admin\", charset=\"UTF-8\"");

/// The password of `Authorization: Basic …` credentials in `headers`, if
/// any: a browser's way to present the admin key.
pub fn basic_password(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine;
    headers.get_all(AUTHORIZATION).iter().find_map(|value| {
        let (scheme, credentials) = value.to_str().ok()?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .ok()?;
        // user-id ":" password; the password may itself hold colons.
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    })
}

/// The page for `apps` (the entries `/apps` serves), as of `now`.
pub fn response(apps: &[Value], now: SystemTime) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(render(apps, now)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        // Stale states mislead: always ask the proxy.
        (header::CACHE_CONTROL, "no-store"),
        // Inline styles only; nothing to run, load, frame or leak.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The HTML text.
pub fn render(apps: &[Value], now: SystemTime) -> String {
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ready = apps.iter().filter(|a| state(a) == "valid").count();
    let mut html = String::with_capacity(4096 + apps.len() * 2048);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{RELOAD_S}">
<title>wechat-token-proxy: {ready}/{total} apps ready</title>
<style>{STYLE}</style></head>
<body><header><h1>wechat-token-proxy</h1>
<p id="summary" class="{summary_class}">{ready} of {total} apps hold a valid token</p>
<p class="meta">{time} · reloads every {RELOAD_S} s · <a href="/apps">/apps</a> (JSON) · <a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a></p></header>
<main>
"#,
        total = apps.len(),
        summary_class = if ready == apps.len() { "ok" } else { "bad" },
        time = utc(now_s),
    );
    for app in apps {
        render_app(&mut html, app, now_s);
    }
    html.push_str("</main></body></html>\n");
    html
}

/// The fields every app has, shown in the card's head rather than its list.
const HEAD_FIELDS: [&str; 4] = ["name", "kind", "appid", "token"];

/// The fields listed first, in this order; the rest follow by name.
const FIRST_FIELDS: [&str; 7] = [
    "last_refresh_unix",
    "last_error",
    "refreshes",
    "consecutive_failures",
    "token_api",
    "base_url",
    "upstream",
];

fn render_app(html: &mut String, app: &Value, now_s: u64) {
    let text = |key: &str| app.get(key).map_or_else(String::new, plain);
    let state = state(app);
    let _ = write!(
        html,
        r#"<section class="app {class}" data-app="{name}">
<h2>{name} <span class="kind">{kind}</span> <span class="state">{state}</span></h2>
<p class="appid">{appid}</p>
"#,
        class = state_class(state),
        name = escape(&text("name")),
        kind = escape(&text("kind")),
        state = escape(state),
        appid = escape(&text("appid")),
    );
    if let Some(token) = app.get("token").and_then(Value::as_object) {
        life_bar(html, token, "no valid token");
        let rest: Vec<(&String, &Value)> = token
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "state" | "expires_in_s"))
            .collect();
        if !rest.is_empty() {
            html.push_str("<dl class=\"token\">");
            fields(html, rest, now_s);
            html.push_str("</dl>\n");
        }
    }
    if let Some(all) = app.as_object() {
        // What an operator reads first, then any other field by name.
        let known = FIRST_FIELDS.iter().filter_map(|&k| all.get_key_value(k));
        let others = all.iter().filter(|(k, _)| {
            !HEAD_FIELDS.contains(&k.as_str()) && !FIRST_FIELDS.contains(&k.as_str())
        });
        html.push_str("<dl>");
        fields(html, known.chain(others), now_s);
        html.push_str("</dl>\n");
    }
    html.push_str("</section>\n");
}

/// A meter of the life left in an entry with `expires_in_s` (a token, a
/// ticket), or nothing for entries without one; `none` says what a null
/// life means.
fn life_bar(html: &mut String, entry: &Map<String, Value>, none: &str) {
    let Some(left) = entry.get("expires_in_s") else {
        return;
    };
    let left = left.as_u64();
    let max = left.unwrap_or(0).max(NOMINAL_LIFE_S);
    let _ = writeln!(
        html,
        r#"<p class="life"><meter min="0" max="{max}" low="{low}" high="{high}" optimum="{max}" value="{value}"></meter> {label}</p>"#,
        // Refreshes start well before 5 minutes are left; under that is late.
        low = 300,
        high = 900,
        value = left.unwrap_or(0),
        label = left.map_or_else(|| none.to_owned(), |s| duration(s) + " left"),
    );
}

/// One `<dt>`/`<dd>` pair per field, values shown by [`value_html`].
fn fields<'a>(
    html: &mut String,
    entries: impl IntoIterator<Item = (&'a String, &'a Value)>,
    now_s: u64,
) {
    for (key, value) in entries {
        let _ = write!(
            html,
            "<dt>{}</dt><dd data-field=\"{}\">",
            escape(&label(key)),
            escape(key),
        );
        value_html(html, key, value, now_s);
        html.push_str("</dd>");
    }
}

/// A field's name for people: `last_refresh_unix` is "last refresh", the
/// unit suffixes being shown by the value itself.
fn label(key: &str) -> String {
    let bare = key
        .strip_suffix("_unix")
        .or_else(|| key.strip_suffix("_s"))
        .unwrap_or(key);
    bare.replace('_', " ")
}

/// A value, read by its key's suffix where one says more than the number:
/// `_unix` is a moment, `_s` a span of seconds. Objects nest; an object with
/// `expires_in_s` (a ticket, say) gets its own life bar.
fn value_html(html: &mut String, key: &str, value: &Value, now_s: u64) {
    match value {
        Value::Null => html.push_str("<span class=\"none\">—</span>"),
        Value::Number(n) if key.ends_with("_unix") => {
            let at = n.as_u64().unwrap_or(0);
            let _ = write!(
                html,
                "{} <span class=\"ago\">({} ago)</span>",
                utc(at),
                duration(now_s.saturating_sub(at))
            );
        }
        Value::Number(n) if key.ends_with("_s") => {
            html.push_str(&n.as_u64().map_or_else(|| n.to_string(), duration));
        }
        Value::Object(map) if map.contains_key("errcode") && map.contains_key("errmsg") => {
            let _ = write!(
                html,
                "<span class=\"error\">{}: {}</span>",
                escape(&plain(&map["errcode"])),
                escape(&plain(&map["errmsg"]))
            );
        }
        Value::Object(map) => {
            life_bar(html, map, "none valid");
            html.push_str("<dl>");
            fields(html, map, now_s);
            html.push_str("</dl>");
        }
        Value::Array(items) => {
            html.push_str("<ul>");
            for item in items {
                html.push_str("<li>");
                value_html(html, key, item, now_s);
                html.push_str("</li>");
            }
            html.push_str("</ul>");
        }
        other => html.push_str(&escape(&plain(other))),
    }
}

/// The app's token state as `/apps` names it (`valid`, `missing`, …).
fn state(app: &Value) -> &str {
    app.pointer("/token/state")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
}

fn state_class(state: &str) -> &'static str {
    match state {
        "valid" => "ok",
        "missing" | "rejected" => "bad",
        _ => "warn",
    }
}

/// A JSON value as text: strings without their quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `s` safe inside HTML text and double- or single-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as the two largest units: `1h 59m`, `42s`.
fn duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A Unix time as `2026-11-21 09:13:52 UTC`.
fn utc(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:14px 24px;background:#1d2330;color:#fff}
header h1{font-size:18px;margin:0 0 4px}
header p{margin:2px 0}header a{color:#9cc4ff}
#summary.ok::before{content:'● ';color:#3ecf6e}#summary.bad::before{content:'● ';color:#ff5d5d}
.meta{color:#aab3c5;font-size:12px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px;padding:16px 24px}
.app{background:#fff;border-radius:6px;padding:12px 16px;border-left:6px solid #c9a227;box-shadow:0 1px 2px #0002}
.app.ok{border-left-color:#2fa35a}.app.bad{border-left-color:#d64545}
h2{font-size:16px;margin:0}
.kind{font-size:11px;background:#e4e8f0;border-radius:3px;padding:1px 6px;vertical-align:middle}
.state{font-size:12px;float:right;font-weight:600}
.ok .state{color:#2fa35a}.bad .state{color:#d64545}.warn .state{color:#a07f10}
.appid{font-family:ui-monospace,monospace;color:#5b6478;margin:2px 0 6px}
meter{width:60%;height:14px;vertical-align:middle}
.life{margin:4px 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0}
dd dl{margin:0}dt{color:#5b6478}dd{margin:0;overflow-wrap:break-word;min-width:0}
.ago,.none{color:#8a92a3}.error{color:#b02a2a}ul{margin:0;padding-left:16px}
";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_252_432), "2026-11-21 09:13:52 UTC");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn durations_show_two_units() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m 5s");
        assert_eq!(duration(7140), "1h 59m");
        assert_eq!(duration(183_600), "2d 3h");
    }

    #[test]
    fn every_value_is_escaped() {
        let app = json!({
            "name": "<script>alert(1)</script>",
            "kind": "mp\"",
            "appid": "wx'&",
            "token": {"state": "<b>", "expires_in_s": null},
            "last_error": {"errcode": 40164, "errmsg": "invalid ip <1.2.3.4>"},
            "<odd key>": "x",
        });
        let html = render(&[app], at(0));
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("<1.2.3.4>"), "{html}");
        assert!(!html.contains("<odd key>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("invalid ip &lt;1.2.3.4&gt;"));
        assert!(html.contains("wx&#39;&amp;"));
    }

    #[test]
    fn fields_the_page_does_not_know_still_show() {
        let app = json!({
            "name": "mp", "kind": "mp", "appid": "wx1",
            "token": {"state": "valid", "expires_in_s": 3600, "fights": 2},
            "tickets": {"jsapi": {"state": "valid", "expires_in_s": 600}},
            "quota_remaining": 1990,
            "fetched_unix": 1_000,
        });
        let html = render(&[app], at(1_090));
        assert!(html.contains(r#"data-field="fights">2<"#), "{html}");
        assert!(
            html.contains(r#"data-field="quota_remaining">1990<"#),
            "{html}"
        );
        assert!(html.contains("1970-01-01 00:16:40 UTC <span class=\"ago\">(1m 30s ago)"));
        // The token's bar and the ticket's own.
        assert_eq!(html.matches("<meter").count(), 2, "{html}");
        assert!(html.contains(r#"value="600""#));
    }

    #[test]
    fn a_missing_token_is_flagged() {
        let ok = json!({"name": "a", "token": {"state": "valid", "expires_in_s": 7000}});
        let bad = json!({"name": "b", "token": {"state": "missing", "expires_in_s": null}});
        let html = render(&[ok, bad], at(0));
        assert!(html.contains(r#"<section class="app ok" data-app="a">"#));
        assert!(html.contains(r#"<section class="app bad" data-app="b">"#));
        assert!(html.contains("no valid token"));
        assert!(html.contains("1 of 2 apps hold a valid token"));
    }

    #[test]
    fn basic_credentials_yield_the_password() {
        let mut headers = HeaderMap::new();
        // "admin:s3cr:et" — the password keeps its colon.
        headers.insert(AUTHORIZATION, "Basic YWRtaW46czNjcjpldA==".parse().unwrap());
        assert_eq!(basic_password(&headers).as_deref(), Some(&b"s3cr:et"[..]));
        for bad in ["Bearer YWRtaW46czNjcjpldA==", "Basic !!!", "Basic YWRtaW4="] {
            headers.insert(AUTHORIZATION, bad.parse().unwrap());
            assert_eq!(basic_password(&headers), None, "{bad}");
        }
    }
}
