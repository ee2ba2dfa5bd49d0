//! Per-app path policy: which WeChat APIs an app's callers may reach, as
//! WeChat's own Cloud Run sidecar offers.
//!
//! Rules match the path after the app prefix, ASCII case-insensitively (so a
//! deny rule cannot be dodged by `/CGI-BIN/…`, and an allow rule lets through
//! nothing WeChat would not treat as the same API):
//! - a rule without `*` is a path prefix ending at a segment boundary:
//!   `/cgi-bin/message` matches `/cgi-bin/message` and `/cgi-bin/message/…`,
//!   not `/cgi-bin/messages`;
//! - a rule with `*` must match the whole path, each `*` standing for any
//!   run of characters, `/` included: `/cgi-bin/message/*`.
//!
//! A deny rule wins over an allow rule; an empty allow list allows every
//! path. Paths reach the policy in the route table's normal form (no `//`,
//! `.` or `..` segments, escaped letters, `\` or `;`); with any rule set, a
//! path that is still not plain (an escaped non-ASCII byte) is refused
//! rather than guessed at.

/// An app's `allow_paths` and `deny_paths`, validated.
#[derive(Debug, Clone, Default)]
pub struct PathPolicy {
    /// Paths callers may reach; empty means all.
    allow: Vec<String>,
    /// Paths callers may never reach, whatever `allow` says.
    deny: Vec<String>,
}

/// Why a path was refused: names the rule, for the 403 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A deny rule matched.
    #[error("path {path} is refused by deny_paths rule \"{rule}\"")]
    Denied {
        /// The path as requested, after the app prefix.
        path: String,
        /// The rule as configured.
        rule: String,
    },
    /// Allow rules exist and none matched.
    #[error("path {path} matches no allow_paths rule")]
    NotAllowed {
        /// The path as requested, after the app prefix.
        path: String,
    },
    /// The path is not in plain form, so rules cannot be applied safely.
    #[error("path {path} is not in plain form (//, . or .. segments, % escapes, \\ or ;): refused because allow_paths/deny_paths are set")]
    NotPlain {
        /// The path as requested, after the app prefix.
        path: String,
    },
}

impl PathPolicy {
    /// A policy from rules that [`rule_problem`] accepted.
    pub fn new(allow: Vec<String>, deny: Vec<String>) -> PathPolicy {
        PathPolicy { allow, deny }
    }

    /// Whether the policy has any rule at all.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Lets `path` through or names the rule that refuses it.
    pub fn check(&self, path: &str) -> Result<(), Refusal> {
        if self.is_open() {
            return Ok(());
        }
        if !is_plain(path) {
            return Err(Refusal::NotPlain { path: path.into() });
        }
        if let Some(rule) = self.deny.iter().find(|r| matches(r, path)) {
            return Err(Refusal::Denied {
                path: path.into(),
                rule: rule.clone(),
            });
        }
        if self.allow.is_empty() || self.allow.iter().any(|r| matches(r, path)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed { path: path.into() })
        }
    }
}

/// What is wrong with a configured rule, if anything.
pub fn rule_problem(rule: &str) -> Option<&'static str> {
    if !rule.starts_with('/') {
        return Some("must start with '/' (it matches the path after the app prefix)");
    }
    if !is_plain(rule.trim_end_matches('*')) {
        return Some("must be a plain path: no //, . or .. segments, % escapes, \\ or ;");
    }
    None
}

/// Whether `rule` matches `path` (see the module docs).
pub fn matches(rule: &str, path: &str) -> bool {
    if !rule.contains('*') {
        let (rule, path) = (rule.as_bytes(), path.as_bytes());
        if path.len() < rule.len() || !path[..rule.len()].eq_ignore_ascii_case(rule) {
            return false;
        }
        return path.len() == rule.len() || rule.ends_with(b"/") || path[rule.len()] == b'/';
    }
    glob(rule.as_bytes(), path.as_bytes())
}

/// Whole-string match with `*` as any run of bytes. It backtracks only to
/// the last star, so the cost stays within pattern length × path length.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether every server would read `path` the same way.
fn is_plain(path: &str) -> bool {
    !path.contains(['%', '\\', ';'])
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> PathPolicy {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        PathPolicy::new(own(allow), own(deny))
    }

    #[test]
    fn a_rule_without_a_star_is_a_segment_prefix() {
        assert!(matches("/cgi-bin/message", "/cgi-bin/message"));
        assert!(matches("/cgi-bin/message", "/cgi-bin/message/custom/send"));
        assert!(!matches("/cgi-bin/message", "/cgi-bin/messages"));
        assert!(matches("/cgi-bin/", "/cgi-bin/user/info"));
        assert!(matches("/CGI-bin/Message", "/cgi-bin/message/x"));
    }

    #[test]
    fn a_star_matches_any_run_including_slashes() {
        assert!(matches(
            "/cgi-bin/message/*",
            "/cgi-bin/message/custom/send"
        ));
        assert!(!matches("/cgi-bin/message/*", "/cgi-bin/message"));
        assert!(matches("/cgi-bin/*/get", "/cgi-bin/user/tag/get"));
        assert!(!matches("/cgi-bin/*/get", "/cgi-bin/user/tag/get/x"));
        assert!(matches("*", "/anything"));
        assert!(matches("/a*b*c", "/aXbYbZc"));
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let p = policy(&["/cgi-bin/message/*"], &["/cgi-bin/message/mass/*"]);
        assert_eq!(p.check("/cgi-bin/message/custom/send"), Ok(()));
        assert!(matches!(
            p.check("/cgi-bin/message/mass/sendall"),
            Err(Refusal::Denied { rule, .. }) if rule == "/cgi-bin/message/mass/*"
        ));
        assert!(matches!(
            p.check("/cgi-bin/user/info"),
            Err(Refusal::NotAllowed { .. })
        ));
        let deny_only = policy(&[], &["/cgi-bin/menu"]);
        assert_eq!(deny_only.check("/cgi-bin/user/info"), Ok(()));
        assert!(deny_only.check("/cgi-bin/menu/delete").is_err());
    }

    #[test]
    fn paths_in_other_spellings_are_refused_when_rules_exist() {
        let p = policy(&[], &["/cgi-bin/menu"]);
        for path in [
            "/cgi-bin//menu/delete",
            "/cgi-bin/./menu/delete",
            "/cgi-bin/x/../menu/delete",
            "/cgi-bin/%6Denu/delete",
            "/cgi-bin\\menu",
            "/cgi-bin/menu/delete;x",
            "/cgi-bin/menu;/delete",
        ] {
            assert!(
                matches!(p.check(path), Err(Refusal::NotPlain { .. })),
                "{path}"
            );
        }
        assert_eq!(policy(&[], &[]).check("/a//b"), Ok(()));
    }

    #[test]
    fn rules_must_be_plain_absolute_paths() {
        assert!(rule_problem("/cgi-bin/message/*").is_none());
        assert!(rule_problem("cgi-bin").is_some());
        assert!(rule_problem("/cgi-bin/../x").is_some());
    }
}
