//! The route table: what the proxy does with each WeChat path, in one place.
//!
//! Every request is classified once, on its path in normal form
//! ([`normalize`]), into one [`Action`]:
//! - a **local answer** ([`Local`]): the token endpoints SDKs call
//!   themselves (a placeholder), the JS-SDK tickets and `/jssdk/config`;
//! - a **forward** naming the credential the proxy places and where
//!   ([`Place`]), and how the answer is scrubbed ([`Scrub`]);
//! - a **refusal** ([`Refuse`]): another kind's token endpoint, a login
//!   that needs a secret nobody here holds.
//!
//! The table is looked up per [`Scope`] (what the first path segment named)
//! with ASCII case ignored, as WeChat and the path policy read paths. A path
//! no entry names is forwarded with the scope's token.
//!
//! WeCom service providers fit the same shape: [`Scope::Suite`] for a
//! suite's own paths, [`Place::SuiteToken`] and [`Place::ProviderToken`],
//! and their entries below; a corp's paths are a WeCom app's.

use std::borrow::Cow;

/// Which table a path (after the app prefix) is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An Official Account or Mini Program (`kind = "mp"`).
    Mp,
    /// A WeCom app.
    Wecom,
    /// A third-party platform's own paths: `/{platform}/cgi-bin/component/…`
    /// and its users' logins. Any other path names an authorizer.
    Platform,
    /// An account served through a platform: `/{platform}/{appid}/…`.
    Authorizer,
    /// A WeCom suite's own paths: `/{platform}/cgi-bin/…`. Any other path
    /// names a corp, whose paths are a WeCom app's ([`Scope::Wecom`]).
    Suite,
}

/// What a request comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answered by the proxy.
    Local(Local),
    /// Sent to WeChat with `place` put in; its answer scrubbed by `scrub`.
    Forward {
        /// The credential the proxy places, and where.
        place: Place,
        /// How the answer is cleaned of credentials.
        scrub: Scrub,
    },
    /// Refused with a 4xx answer.
    Refuse(Refuse),
}

/// The answers the proxy makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A token endpoint an SDK calls on its own: answered with the
    /// placeholder, in that endpoint's shape.
    Placeholder(Placeholder),
    /// A JS-SDK ticket call: answered from the held ticket when it asks for
    /// a kind the proxy holds, else forwarded.
    Ticket(TicketCall),
    /// `/jssdk/config`: `wx.config` values signed here.
    JssdkConfig,
    /// `/jssdk/agent-config`: `wx.agentConfig` values signed here (WeCom).
    JssdkAgentConfig,
    /// A platform's `api_query_auth`: the platform exchanges the code
    /// itself, registers the authorizer and answers with placeholders.
    QueryAuth,
    /// A platform's component API whose answer lists credentials: the
    /// platform makes the call and answers with placeholders.
    Sealed,
    /// A WeCom suite's `get_permanent_code`: exchanged by the proxy, the
    /// corp registered, answered with placeholders.
    PermanentCode,
}

/// Which ticket call: the kind it asks for follows from it and its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketCall {
    /// mp `ticket/getticket`: `type=jsapi` or `type=wx_card`.
    Mp,
    /// WeCom `get_jsapi_ticket`: the corp ticket.
    Corp,
    /// WeCom `ticket/get`: `type=agent_config`.
    Agent,
}

/// The shape of a placeholder answer: that of the endpoint asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `/cgi-bin/token`, `/cgi-bin/stable_token` (an mp app, an authorizer).
    Mp,
    /// WeCom's `/cgi-bin/gettoken` (with `errcode` 0).
    Wecom,
    /// `api_component_token`.
    Component,
    /// `api_authorizer_token`.
    Authorizer,
    /// WeCom's `get_suite_token`.
    Suite,
    /// WeCom's `get_provider_token`.
    Provider,
    /// WeCom's `get_corp_token`.
    Corp,
}

/// The credential the proxy places in a forwarded request. Whatever the
/// client sent in the same parameters is dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The app's (or authorizer's) token as `access_token`.
    AccessToken,
    /// The platform's token as `component_access_token`.
    ComponentToken,
    /// `component_appid` and `component_access_token`: a platform's login
    /// of an authorizer's user.
    ComponentLogin,
    /// The app's `appid` and `secret`, with `grant_type=authorization_code`:
    /// an app's login of its user. No token.
    AppSecret,
    /// Nothing: the user's own OAuth token is the only credential.
    Nothing,
    /// A WeCom suite's token as `suite_access_token`.
    SuiteToken,
    /// A WeCom provider's token, as `provider_access_token` or
    /// `access_token`, whichever the client sent.
    ProviderToken,
}

/// How an answer is cleaned before it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrub {
    /// The credentials the proxy placed are replaced wherever they show.
    Placed,
    /// Also every credential-named JSON field and query parameter, whatever
    /// its value, at any size: for answers that can hold credentials the
    /// proxy never placed (an authorizer list, a logged earlier request).
    Fields,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// A token endpoint of another kind of app, or of a platform.
    TokenPath,
    /// A user login that needs the account's own AppSecret, asked under a
    /// platform: the platform logs users in with its component routes.
    AuthorizerLogin,
}

/// The forward of any path no entry names: the scope's token.
pub const FORWARD: Action = Action::Forward {
    place: Place::AccessToken,
    scrub: Scrub::Placed,
};

const MP: &[Scope] = &[Scope::Mp];
const WECOM: &[Scope] = &[Scope::Wecom];
const PLATFORM: &[Scope] = &[Scope::Platform];
const AUTHORIZER: &[Scope] = &[Scope::Authorizer];
const MP_LIKE: &[Scope] = &[Scope::Mp, Scope::Authorizer];
const APPS: &[Scope] = &[Scope::Mp, Scope::Wecom, Scope::Authorizer];
const PLATFORM_LOGIN: &[Scope] = &[Scope::Platform, Scope::Authorizer];
const USER: &[Scope] = &[Scope::Mp, Scope::Platform, Scope::Authorizer];
const SIGNERS: &[Scope] = &[Scope::Mp, Scope::Wecom, Scope::Authorizer];
const SUITE: &[Scope] = &[Scope::Suite];

/// One row: in these scopes, this path (or, ending in `/`, every path under
/// it) comes to this action.
struct Entry {
    /// The scopes as bits ([`Scope::bit`]): every request walks the table,
    /// and one AND per row is cheaper than a search of a slice.
    scopes: u8,
    path: &'static str,
    action: Action,
}

const fn entry(scopes: &'static [Scope], path: &'static str, action: Action) -> Entry {
    let mut bits = 0;
    let mut i = 0;
    while i < scopes.len() {
        bits |= scopes[i].bit();
        i += 1;
    }
    Entry {
        scopes: bits,
        path,
        action,
    }
}

impl Scope {
    /// This scope's bit in [`Entry::scopes`].
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

const fn forward(place: Place, scrub: Scrub) -> Action {
    Action::Forward { place, scrub }
}

/// A token endpoint answered with the placeholder of its shape.
const fn placeholder(kind: Placeholder) -> Action {
    Action::Local(Local::Placeholder(kind))
}

const TOKEN_PATH: Action = Action::Refuse(Refuse::TokenPath);
const AUTHORIZER_LOGIN: Action = Action::Refuse(Refuse::AuthorizerLogin);

/// The table. The first entry that matches wins, so exact paths come before
/// the prefixes that hold them.
#[rustfmt::skip]
const TABLE: &[Entry] = &[
    // Token endpoints SDKs call themselves: the placeholder, so they start
    // without the secret. Another kind's endpoint is refused: it would take
    // a secret the caller does not have.
    entry(MP_LIKE, "/cgi-bin/token", placeholder(Placeholder::Mp)),
    entry(MP_LIKE, "/cgi-bin/stable_token", placeholder(Placeholder::Mp)),
    entry(WECOM, "/cgi-bin/gettoken", placeholder(Placeholder::Wecom)),
    entry(PLATFORM, "/cgi-bin/component/api_component_token", placeholder(Placeholder::Component)),
    entry(PLATFORM, "/cgi-bin/component/api_authorizer_token", placeholder(Placeholder::Authorizer)),
    entry(WECOM, "/cgi-bin/token", TOKEN_PATH),
    entry(WECOM, "/cgi-bin/stable_token", TOKEN_PATH),
    entry(MP_LIKE, "/cgi-bin/gettoken", TOKEN_PATH),
    entry(APPS, "/cgi-bin/component/", TOKEN_PATH),
    // A platform's own APIs carry its component token. Those whose answers
    // hold authorizers' tokens are made by the platform itself; the rest are
    // scrubbed by field all the same.
    entry(PLATFORM, "/cgi-bin/component/api_query_auth", Action::Local(Local::QueryAuth)),
    entry(PLATFORM, "/cgi-bin/component/api_get_authorizer_list", Action::Local(Local::Sealed)),
    entry(PLATFORM, "/cgi-bin/component/api_get_authorizer_info", Action::Local(Local::Sealed)),
    entry(PLATFORM, "/cgi-bin/component/", forward(Place::ComponentToken, Scrub::Fields)),
    // A WeCom suite: the SDKs' own token calls answered with placeholders,
    // the auth-code exchange done here (the permanent code is a secret),
    // the provider's APIs with the provider token, the rest with the suite
    // token.
    entry(SUITE, "/cgi-bin/service/get_suite_token", placeholder(Placeholder::Suite)),
    entry(SUITE, "/cgi-bin/service/get_provider_token", placeholder(Placeholder::Provider)),
    entry(SUITE, "/cgi-bin/service/get_corp_token", placeholder(Placeholder::Corp)),
    entry(SUITE, "/cgi-bin/service/get_permanent_code", Action::Local(Local::PermanentCode)),
    entry(SUITE, "/cgi-bin/service/v2/get_permanent_code", Action::Local(Local::PermanentCode)),
    entry(SUITE, "/cgi-bin/gettoken", TOKEN_PATH),
    entry(SUITE, "/cgi-bin/license/", forward(Place::ProviderToken, Scrub::Placed)),
    entry(SUITE, "/cgi-bin/service/get_login_info", forward(Place::ProviderToken, Scrub::Placed)),
    entry(SUITE, "/cgi-bin/", forward(Place::SuiteToken, Scrub::Placed)),
    // User logins. An app's take its AppSecret; a platform's take its
    // component token, for any of its authorizers. Their answers are the
    // user's own (openid, session_key, the user's OAuth tokens).
    entry(MP, "/sns/jscode2session", forward(Place::AppSecret, Scrub::Placed)),
    entry(MP, "/sns/oauth2/access_token", forward(Place::AppSecret, Scrub::Placed)),
    entry(AUTHORIZER, "/sns/jscode2session", AUTHORIZER_LOGIN),
    entry(AUTHORIZER, "/sns/oauth2/access_token", AUTHORIZER_LOGIN),
    entry(PLATFORM_LOGIN, "/sns/oauth2/component/access_token", forward(Place::ComponentLogin, Scrub::Placed)),
    entry(PLATFORM_LOGIN, "/sns/oauth2/component/refresh_token", forward(Place::ComponentLogin, Scrub::Placed)),
    entry(PLATFORM_LOGIN, "/sns/component/jscode2session", forward(Place::ComponentLogin, Scrub::Placed)),
    // The rest of /sns/ (refresh_token, auth, userinfo) takes the user's
    // own OAuth token as access_token: the app's must not replace it.
    entry(USER, "/sns/", forward(Place::Nothing, Scrub::Placed)),
    // The logged request behind a rid: its query held a token.
    entry(APPS, "/cgi-bin/openapi/rid/get", forward(Place::AccessToken, Scrub::Fields)),
    // JS-SDK: tickets held here, configs signed here, an authorizer's with
    // its own tickets (a corp's paths are a WeCom app's).
    entry(MP_LIKE, "/cgi-bin/ticket/getticket", Action::Local(Local::Ticket(TicketCall::Mp))),
    entry(WECOM, "/cgi-bin/get_jsapi_ticket", Action::Local(Local::Ticket(TicketCall::Corp))),
    entry(WECOM, "/cgi-bin/ticket/get", Action::Local(Local::Ticket(TicketCall::Agent))),
    entry(SIGNERS, "/jssdk/config", Action::Local(Local::JssdkConfig)),
    entry(SIGNERS, "/jssdk/agent-config", Action::Local(Local::JssdkAgentConfig)),
];

/// What `path` (normal form, after the app prefix) comes to in `scope`;
/// `None` when no entry names it: [`FORWARD`], or for a platform, a path
/// that names an authorizer.
pub fn classify(scope: Scope, path: &str) -> Option<Action> {
    let bit = scope.bit();
    let len = path.len();
    KEYS.iter()
        .zip(TABLE)
        .find(|(key, e)| key.admits(bit, len) && matches(e.path, path))
        .map(|(_, e)| e.action)
}

/// What [`classify`] looks at first for each row, packed apart from the
/// rows: every request walks the whole table, and this way it reads two
/// cache lines, not thirty, before the one or two rows it compares.
#[derive(Clone, Copy)]
struct RowKey {
    /// [`Entry::scopes`].
    scopes: u8,
    /// The rule's length in bytes.
    len: u8,
    /// The rule ends in `/`: longer paths under it match.
    prefix: bool,
}

impl RowKey {
    /// Whether a path of `len` bytes in the scope of `bit` may match.
    fn admits(self, bit: u8, len: usize) -> bool {
        self.scopes & bit != 0
            && if self.prefix {
                len > usize::from(self.len)
            } else {
                len == usize::from(self.len)
            }
    }
}

const KEYS: [RowKey; TABLE.len()] = {
    let mut keys = [RowKey {
        scopes: 0,
        len: 0,
        prefix: false,
    }; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        let path = TABLE[i].path.as_bytes();
        assert!(
            path.len() <= u8::MAX as usize,
            "a route longer than 255 bytes"
        );
        keys[i] = RowKey {
            scopes: TABLE[i].scopes,
            len: path.len() as u8,
            prefix: path[path.len() - 1] == b'/',
        };
        i += 1;
    }
    keys
};

/// Whether `path` is `rule`, or under it when `rule` ends in `/`; ASCII
/// case ignored.
fn matches(rule: &str, path: &str) -> bool {
    let (rule, path) = (rule.as_bytes(), path.as_bytes());
    if rule.ends_with(b"/") {
        path.len() > rule.len() && path[..rule.len()].eq_ignore_ascii_case(rule)
    } else {
        path.eq_ignore_ascii_case(rule)
    }
}

/// Why a path has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// A `..` segment above the root.
    #[error("a .. segment climbs above the root")]
    AboveRoot,
    /// A `%` escape that is malformed, or of a character with a meaning in
    /// paths (`/`, `\`, `%`, `;`, …) that servers decode differently.
    #[error("a % escape of a character that is not a letter, digit or -._~")]
    Escape,
    /// `\`, which some servers read as `/`.
    #[error("a backslash")]
    Backslash,
    /// `;` path parameters, which some servers cut off before routing.
    #[error("a ; path parameter")]
    Parameter,
}

/// The path as every server reads it: escapes of letters, digits and `-._~`
/// decoded, repeated and trailing slashes merged, `.` and `..` segments
/// resolved. What servers read differently is refused. Borrowed when the
/// path is in normal form already (nearly always).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(BadPath::AboveRoot)?;
            }
            segment => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether nothing in `path` needs [`normalize`]'s slow path: one pass,
/// no allocation.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') || (path.len() > 1 && path.ends_with(b"/")) {
        return false;
    }
    let mut segment_start = 0;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' | b';' => return false,
            b'/' if i > 0 => {
                let segment = &path[segment_start + 1..i];
                if matches!(segment, b"" | b"." | b"..") {
                    return false;
                }
                segment_start = i;
            }
            _ => {}
        }
    }
    !matches!(&path[segment_start + 1..], b"." | b"..")
}

/// `path` with `%` escapes of unreserved characters decoded; escapes of
/// non-ASCII bytes kept; anything else refused.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if path.contains('\\') {
        return Err(BadPath::Backslash);
    }
    if path.contains(';') {
        return Err(BadPath::Parameter);
    }
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = path[i..].find('%').map_or(path.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let hex = path
            .get(i + 1..i + 3)
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(BadPath::Escape)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath::Escape)?;
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte))
            }
            0x80.. => out.push_str(&path[i..i + 3]),
            _ => return Err(BadPath::Escape),
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packed_keys_pick_the_row_a_plain_walk_would() {
        let scopes = [
            Scope::Mp,
            Scope::Wecom,
            Scope::Platform,
            Scope::Authorizer,
            Scope::Suite,
        ];
        let mut paths: Vec<String> = vec!["/".into(), "/cgi-bin/user/info".into()];
        for e in TABLE {
            let p = e.path;
            paths.extend([
                p.to_owned(),
                p.to_ascii_uppercase(),
                format!("{p}x"),
                format!("{p}/x"),
                p[..p.len() - 1].to_owned(),
            ]);
        }
        for scope in scopes {
            for path in &paths {
                let plain = TABLE
                    .iter()
                    .find(|e| e.scopes & scope.bit() != 0 && matches(e.path, path))
                    .map(|e| e.action);
                assert_eq!(classify(scope, path), plain, "{scope:?} {path}");
            }
        }
    }

    fn normal(path: &str) -> Result<String, BadPath> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        for path in [
            "/",
            "/cgi-bin/user/info",
            "/a.b/c..d/.e",
            "/mp/cgi-bin/token",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn other_spellings_come_to_one_normal_form() {
        let want = "/cgi-bin/component/api_authorizer_token";
        for path in [
            "/cgi-bin/component/api%5Fauthorizer_token",
            "/cgi-bin/component//api_authorizer_token",
            "//cgi-bin/component/api_authorizer_token/",
            "/cgi-bin/./component/x/../api_authorizer_token",
            "/cgi-bin/component/api%5fauthorizer%5Ftoken",
            "/%63gi-bin/component/api_authorizer_token/.",
            "/cgi-bin/component/%2E%2E/component/api_authorizer_token",
        ] {
            assert_eq!(normal(path).as_deref(), Ok(want), "{path}");
        }
        assert_eq!(normal("//").as_deref(), Ok("/"));
        assert_eq!(normal("/a/..").as_deref(), Ok("/"));
        assert_eq!(normal("/a/%E4%B8%AD").as_deref(), Ok("/a/%E4%B8%AD"));
    }

    #[test]
    fn what_servers_read_differently_is_refused() {
        assert_eq!(normal("/../cgi-bin/token"), Err(BadPath::AboveRoot));
        assert_eq!(normal("/a/../../b"), Err(BadPath::AboveRoot));
        assert_eq!(normal("/cgi-bin%2Ftoken"), Err(BadPath::Escape));
        assert_eq!(normal("/cgi-bin/%25"), Err(BadPath::Escape));
        assert_eq!(normal("/cgi-bin/%zz"), Err(BadPath::Escape));
        assert_eq!(normal("/cgi-bin/%+1"), Err(BadPath::Escape));
        assert_eq!(normal("/cgi-bin/%4"), Err(BadPath::Escape));
        assert_eq!(normal("/cgi-bin\\token"), Err(BadPath::Backslash));
        assert_eq!(normal("/cgi-bin/token;x"), Err(BadPath::Parameter));
    }

    #[test]
    fn entries_match_whole_paths_or_what_is_under_a_prefix_any_case() {
        assert!(matches("/cgi-bin/token", "/CGI-BIN/Token"));
        assert!(!matches("/cgi-bin/token", "/cgi-bin/tokens"));
        assert!(matches("/sns/", "/sns/auth"));
        assert!(!matches("/sns/", "/sns"));
        assert!(!matches("/sns/", "/snsx/auth"));
    }

    #[test]
    fn a_suite_answers_sdk_token_calls_and_places_its_own_credentials() {
        use Action::*;
        for (path, kind) in [
            ("/cgi-bin/service/get_suite_token", Placeholder::Suite),
            ("/cgi-bin/service/get_provider_token", Placeholder::Provider),
            ("/cgi-bin/service/get_corp_token", Placeholder::Corp),
        ] {
            assert_eq!(
                classify(Scope::Suite, path),
                Some(Local(super::Local::Placeholder(kind))),
                "{path}"
            );
        }
        for path in [
            "/cgi-bin/service/get_permanent_code",
            "/cgi-bin/service/V2/get_permanent_code",
        ] {
            assert_eq!(
                classify(Scope::Suite, path),
                Some(Local(super::Local::PermanentCode)),
                "{path}"
            );
        }
        assert_eq!(
            classify(Scope::Suite, "/cgi-bin/license/create_new_order"),
            Some(forward(Place::ProviderToken, Scrub::Placed))
        );
        for path in ["/cgi-bin/service/get_auth_info", "/cgi-bin/agent/set_scope"] {
            assert_eq!(
                classify(Scope::Suite, path),
                Some(forward(Place::SuiteToken, Scrub::Placed)),
                "{path}"
            );
        }
        assert_eq!(
            classify(Scope::Suite, "/cgi-bin/gettoken"),
            Some(Refuse(super::Refuse::TokenPath))
        );
    }

    #[test]
    fn each_scope_finds_its_own_routes() {
        use Action::*;
        let placeholder = Local(super::Local::Placeholder(Placeholder::Mp));
        assert_eq!(classify(Scope::Mp, "/cgi-bin/TOKEN"), Some(placeholder));
        assert_eq!(
            classify(Scope::Wecom, "/cgi-bin/token"),
            Some(Refuse(super::Refuse::TokenPath))
        );
        assert_eq!(classify(Scope::Mp, "/cgi-bin/user/info"), None);
        assert_eq!(
            classify(Scope::Mp, "/sns/jscode2session"),
            Some(forward(Place::AppSecret, Scrub::Placed))
        );
        assert_eq!(
            classify(Scope::Mp, "/sns/oauth2/refresh_token"),
            Some(forward(Place::Nothing, Scrub::Placed))
        );
        assert_eq!(
            classify(
                Scope::Platform,
                "/cgi-bin/component/api_get_authorizer_option"
            ),
            Some(forward(Place::ComponentToken, Scrub::Fields))
        );
        assert_eq!(
            classify(
                Scope::Platform,
                "/cgi-bin/component/api_get_authorizer_list"
            ),
            Some(Local(super::Local::Sealed))
        );
        assert_eq!(
            classify(Scope::Platform, "/sns/component/jscode2session"),
            Some(forward(Place::ComponentLogin, Scrub::Placed))
        );
        assert_eq!(classify(Scope::Platform, "/wx123/cgi-bin/user/info"), None);
        assert_eq!(
            classify(Scope::Authorizer, "/cgi-bin/component/api_authorizer_token"),
            Some(Refuse(super::Refuse::TokenPath))
        );
        assert_eq!(
            classify(Scope::Authorizer, "/cgi-bin/ticket/getticket"),
            Some(Local(super::Local::Ticket(TicketCall::Mp)))
        );
        assert_eq!(
            classify(Scope::Authorizer, "/jssdk/config"),
            Some(Local(super::Local::JssdkConfig))
        );
        assert_eq!(classify(Scope::Platform, "/jssdk/config"), None);
        for scope in [Scope::Mp, Scope::Wecom, Scope::Authorizer] {
            assert_eq!(
                classify(scope, "/cgi-bin/openapi/rid/get"),
                Some(forward(Place::AccessToken, Scrub::Fields)),
                "{scope:?}"
            );
        }
    }
}
