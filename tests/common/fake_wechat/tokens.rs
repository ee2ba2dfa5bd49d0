//! The fake's token bookkeeping: which tokens exist, which still work, and what each token
//! endpoint answers. Pure logic over an explicit `now`, no I/O, so the rules of WECHAT.md
//! can be read in one place.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{AppKind, FakeOptions};

/// Which token endpoint a fetch came through; each has its own issuing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavor {
    /// `GET /cgi-bin/token`: a new token every call, the previous one dies after a grace.
    Classic,
    /// `POST /cgi-bin/stable_token`: one shared token, renewed only near its end or on force.
    Stable,
    /// `GET /cgi-bin/gettoken` (WeCom): the same token while it is valid.
    WeCom,
}

/// A token fetch as parsed from the wire; `None` fields were absent from the request.
pub(super) struct FetchRequest {
    /// Which endpoint was called.
    pub flavor: Flavor,
    /// `appid` (mp) or `corpid` (WeCom).
    pub appid: Option<String>,
    /// `secret` (mp) or `corpsecret` (WeCom).
    pub secret: Option<String>,
    /// `grant_type`; WeCom has none, so it is `None` there and not checked.
    pub grant_type: Option<String>,
    /// Stable API only: `force_refresh:true`.
    pub force_refresh: bool,
}

/// What a token endpoint answers (always HTTP 200 on WeChat).
pub(super) enum Grant {
    /// A token and the seconds to report as `expires_in`.
    Token { token: String, expires_in: u64 },
    /// `{"errcode":N,"errmsg":"…"}`.
    Refused { errcode: i64, errmsg: String },
}

/// What an API call's `access_token` is worth right now.
pub(super) enum Verdict {
    /// Good token; the request is served.
    Valid,
    /// An error answer `{"errcode":N,"errmsg":"…"}` instead of the API's.
    Rejected { errcode: i64, errmsg: &'static str },
}

/// One issued token and the facts that decide whether it still works.
struct Token {
    /// Owner, for `revoke`.
    appid: String,
    /// Owner's kind, for the right error code (mp 40001 vs WeCom 40014).
    kind: AppKind,
    /// The suite whose app in the corp it is, for a corp token a suite got:
    /// WeCom's tickets belong to the app the token is for.
    via: Option<String>,
    /// When the fake stops accepting it (42001 from then on): issue time + `token_lifetime`.
    real_expiry: Instant,
    /// What `expires_in` promised: issue time + `expires_in`; reused tokens report the rest.
    reported_expiry: Instant,
    /// When it was revoked or superseded (40001/40014 from then on), if ever.
    dead_at: Option<Instant>,
}

/// One app (mp appid or WeCom corpid) the fake knows.
struct App {
    /// Decides which endpoints accept it and which error codes it gets.
    kind: AppKind,
    /// The secret a fetch must present; changed by `set_secret` to model rotation.
    secret: String,
    /// The newest classic token (the one the next classic fetch will supersede).
    classic: Option<String>,
    /// The stable token normal mode hands out.
    stable: Option<String>,
    /// The WeCom token handed out while valid.
    wecom: Option<String>,
    /// The most recently issued token of any flavor, for `current_token`; cleared by revoke.
    latest: Option<String>,
    /// When the last accepted `force_refresh` happened, for `force_min_interval`.
    last_force: Option<Instant>,
}

/// Every app and every token the fake has issued.
pub(super) struct Tokens {
    /// Timing rules (lifetimes, grace, window).
    opts: FakeOptions,
    /// Apps by appid / corpid.
    apps: HashMap<String, App>,
    /// Every token ever issued, by its string.
    tokens: HashMap<String, Token>,
    /// Issue order, for `issued_tokens`.
    issued: Vec<String>,
    /// Makes token strings unique and shows their order when debugging.
    counter: u64,
    /// Source of the random part of token strings.
    random: fastrand::Rng,
}

/// Seconds left until `at`, rounded up, as `expires_in` is reported.
fn secs_until(at: Instant, now: Instant) -> u64 {
    let left = at.saturating_duration_since(now);
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

impl Tokens {
    /// No apps yet; `opts` fixes the timing rules for the fake's life (a zero
    /// `token_lifetime` means "as long as `expires_in` says").
    pub fn new(mut opts: FakeOptions) -> Tokens {
        if opts.token_lifetime.is_zero() {
            opts.token_lifetime = Duration::from_secs(opts.expires_in);
        }
        Tokens {
            opts,
            apps: HashMap::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            counter: 0,
            random: fastrand::Rng::new(),
        }
    }

    /// A token for `appid` (a platform or an authorizer), registered as an
    /// mp app on first use, and its `expires_in`.
    pub fn mint(&mut self, appid: &str, now: Instant) -> (String, u64) {
        if !self.apps.contains_key(appid) {
            self.add_app(AppKind::Mp, appid, "");
        }
        (self.issue(appid, now), self.opts.expires_in)
    }

    /// A token for `appid` of `kind` (a WeCom corp served by a suite gets
    /// WeCom's errcodes), registered on first use, and its `expires_in`.
    pub fn mint_as(&mut self, kind: AppKind, appid: &str, now: Instant) -> (String, u64) {
        if !self.apps.contains_key(appid) {
            self.add_app(kind, appid, "");
        }
        (self.issue(appid, now), self.opts.expires_in)
    }

    /// A WeCom corp token for the app `suite` has in the corp `corpid`.
    pub fn mint_via(&mut self, suite: &str, corpid: &str, now: Instant) -> (String, u64) {
        let (token, expires_in) = self.mint_as(AppKind::WeCom, corpid, now);
        if let Some(issued) = self.tokens.get_mut(&token) {
            issued.via = Some(suite.to_owned());
        }
        (token, expires_in)
    }

    /// Registers (or replaces) an app with the secret fetches must present.
    pub fn add_app(&mut self, kind: AppKind, appid: &str, secret: &str) {
        let app = App {
            kind,
            secret: secret.to_string(),
            classic: None,
            stable: None,
            wecom: None,
            latest: None,
            last_force: None,
        };
        self.apps.insert(appid.to_string(), app);
    }

    /// Changes an app's secret; tokens already issued keep working.
    pub fn set_secret(&mut self, appid: &str, secret: &str) {
        let app = self.apps.get_mut(appid).expect("set_secret: unknown appid");
        app.secret = secret.to_string();
    }

    /// Whether `appid` is known and `secret` is its secret (`clear_quota/v2`).
    pub fn secret_ok(&self, appid: &str, secret: &str) -> bool {
        self.apps.get(appid).is_some_and(|app| app.secret == secret)
    }

    /// The app a valid token belongs to, for calls whose answer depends on
    /// the app (tickets, quota).
    pub fn owner(&self, token: &str, now: Instant) -> Option<String> {
        let valid = matches!(self.check_one(token, now), Verdict::Valid);
        valid.then(|| self.tokens.get(token).map(|t| t.appid.clone()))?
    }

    /// Whose JS-SDK tickets a valid token gets: its app's (mp: the
    /// account's; WeCom: the corp's own app's, or `corpid@suite` for a
    /// suite's app in the corp).
    pub fn ticket_owner(&self, token: &str, now: Instant) -> Option<String> {
        let owner = self.owner(token, now)?;
        Some(
            match self.tokens.get(token).and_then(|t| t.via.as_deref()) {
                Some(suite) => format!("{owner}@{suite}"),
                None => owner,
            },
        )
    }

    /// Every token ever issued, oldest first.
    pub fn issued(&self) -> Vec<String> {
        self.issued.clone()
    }

    /// The app's most recently issued token, unless revoked since.
    pub fn current(&self, appid: &str) -> Option<String> {
        self.apps.get(appid).and_then(|app| app.latest.clone())
    }

    /// Kills every token of `appid` now and forgets the current ones, so the next fetch of
    /// any flavor issues a new token (what WeChat does after a force refresh elsewhere).
    pub fn revoke(&mut self, appid: &str, now: Instant) {
        let app = self.apps.get_mut(appid).expect("revoke: unknown appid");
        app.classic = None;
        app.stable = None;
        app.wecom = None;
        app.latest = None;
        for token in self.tokens.values_mut().filter(|t| t.appid == appid) {
            token.dead_at = Some(token.dead_at.map_or(now, |d| d.min(now)));
        }
    }

    /// Kills the current stable token for API calls while normal-mode `stable_token` keeps
    /// handing it out: only `force_refresh:true` gets the app out of it.
    pub fn invalidate_in_place(&mut self, appid: &str, now: Instant) {
        let app = self
            .apps
            .get(appid)
            .expect("invalidate_in_place: unknown appid");
        let current = app
            .stable
            .as_ref()
            .expect("invalidate_in_place: the app has no stable token yet");
        let token = self
            .tokens
            .get_mut(current)
            .expect("current token is known");
        token.dead_at = Some(now);
    }

    /// Answers one token fetch (the caller already applied injected failures).
    pub fn grant(&mut self, req: &FetchRequest, now: Instant) -> Grant {
        if let Some(refusal) = self.check_credentials(req) {
            return refusal;
        }
        let appid = req.appid.as_deref().expect("checked above");
        match req.flavor {
            Flavor::Classic => self.grant_classic(appid, now),
            Flavor::Stable if req.force_refresh => self.grant_stable_forced(appid, now),
            Flavor::Stable => self.grant_stable_normal(appid, now),
            Flavor::WeCom => self.grant_wecom(appid, now),
        }
    }

    /// The refusals WeChat gives before looking at tokens: missing fields, unknown app,
    /// wrong secret. An app of the other kind counts as unknown on each endpoint.
    fn check_credentials(&self, req: &FetchRequest) -> Option<Grant> {
        let refuse = |errcode: i64, errmsg: &str| {
            Some(Grant::Refused {
                errcode,
                errmsg: errmsg.to_string(),
            })
        };
        let wecom = req.flavor == Flavor::WeCom;
        if !wecom && req.grant_type.as_deref() != Some("client_credential") {
            return refuse(40002, "invalid grant_type rid: 0001-fake");
        }
        let Some(appid) = req.appid.as_deref() else {
            return if wecom {
                refuse(41002, "corpid missing")
            } else {
                refuse(41002, "appid missing rid: 0002-fake")
            };
        };
        let Some(secret) = req.secret.as_deref() else {
            return if wecom {
                refuse(41004, "corpsecret missing")
            } else {
                refuse(41004, "appsecret missing rid: 0003-fake")
            };
        };
        let expected_kind = if wecom { AppKind::WeCom } else { AppKind::Mp };
        let app = match self.apps.get(appid) {
            Some(app) if app.kind == expected_kind => app,
            _ if wecom => return refuse(40013, "invalid corpid"),
            _ => return refuse(40013, "invalid appid rid: 0004-fake"),
        };
        if app.secret != secret {
            return if wecom {
                refuse(40001, "invalid credential, invalid secret")
            } else {
                refuse(40125, "invalid appsecret rid: 0005-fake")
            };
        }
        None
    }

    /// Classic: always a new token; the previous one keeps working for `classic_grace`.
    fn grant_classic(&mut self, appid: &str, now: Instant) -> Grant {
        let grace_end = now + self.opts.classic_grace;
        if let Some(previous) = self.app(appid).classic.take() {
            let token = self.tokens.get_mut(&previous).expect("known token");
            token.dead_at = Some(token.dead_at.map_or(grace_end, |d| d.min(grace_end)));
        }
        let token = self.issue(appid, now);
        self.app(appid).classic = Some(token.clone());
        self.fresh(token)
    }

    /// Stable, normal mode: the same token while it has more than `stable_window` left
    /// (even if invalidated in place), else a new one; the old one lives to its expiry.
    fn grant_stable_normal(&mut self, appid: &str, now: Instant) -> Grant {
        if let Some(current) = self.app(appid).stable.clone() {
            let token = &self.tokens[&current];
            if token.real_expiry.saturating_duration_since(now) > self.opts.stable_window {
                let expires_in = secs_until(token.reported_expiry, now);
                return Grant::Token {
                    token: current,
                    expires_in,
                };
            }
        }
        let token = self.issue(appid, now);
        self.app(appid).stable = Some(token.clone());
        self.fresh(token)
    }

    /// Stable, `force_refresh:true`: refused (45011) if too soon after the last one,
    /// else the current token dies at once and a new one is issued.
    fn grant_stable_forced(&mut self, appid: &str, now: Instant) -> Grant {
        let min_interval = self.opts.force_min_interval;
        let app = self.app(appid);
        if let Some(last) = app.last_force {
            if now.saturating_duration_since(last) < min_interval {
                return Grant::Refused {
                    errcode: 45011,
                    errmsg:
                        "api minute-quota reach limit  mustslower  retry next minute rid: 0006-fake"
                            .to_string(),
                };
            }
        }
        app.last_force = Some(now);
        if let Some(previous) = app.stable.take() {
            let token = self.tokens.get_mut(&previous).expect("known token");
            token.dead_at = Some(token.dead_at.map_or(now, |d| d.min(now)));
        }
        let token = self.issue(appid, now);
        self.app(appid).stable = Some(token.clone());
        self.fresh(token)
    }

    /// WeCom: the same token while it is alive, else a new one.
    fn grant_wecom(&mut self, appid: &str, now: Instant) -> Grant {
        if let Some(current) = self.app(appid).wecom.clone() {
            let token = &self.tokens[&current];
            let alive = token.real_expiry > now && token.dead_at.is_none_or(|d| d > now);
            if alive {
                let expires_in = secs_until(token.reported_expiry, now);
                return Grant::Token {
                    token: current,
                    expires_in,
                };
            }
        }
        let token = self.issue(appid, now);
        self.app(appid).wecom = Some(token.clone());
        self.fresh(token)
    }

    /// Judges an API call by the `access_token` values in its query. Several values are
    /// refused as invalid: WeChat would not guess which one was meant, and neither do we.
    pub fn check(&self, given: &[String], now: Instant) -> Verdict {
        match given {
            [] => Verdict::Rejected {
                errcode: 41001,
                errmsg: "access_token missing",
            },
            [token] => self.check_one(token, now),
            [first, ..] => invalid(self.kind_of(first)),
        }
    }

    /// The kind of app a token belongs to. For a token the fake never issued: WeCom if every
    /// known app is WeCom, else mp (the answer's error code is all that depends on it).
    fn kind_of(&self, token: &str) -> AppKind {
        match self.tokens.get(token) {
            Some(info) => info.kind,
            None if !self.apps.is_empty()
                && self.apps.values().all(|a| a.kind == AppKind::WeCom) =>
            {
                AppKind::WeCom
            }
            None => AppKind::Mp,
        }
    }

    /// Judges a single token: unknown, revoked or superseded, expired, or valid.
    fn check_one(&self, token: &str, now: Instant) -> Verdict {
        let Some(info) = self.tokens.get(token) else {
            return invalid(self.kind_of(token));
        };
        // Whichever happened first decides the answer: expiry or revocation.
        let expired = info.real_expiry <= now;
        let dead = info.dead_at.filter(|d| *d <= now);
        match (expired, dead) {
            (true, Some(d)) if d < info.real_expiry => invalid(info.kind),
            (true, _) => Verdict::Rejected {
                errcode: 42001,
                errmsg: "access_token expired",
            },
            (false, Some(_)) => invalid(info.kind),
            (false, None) => Verdict::Valid,
        }
    }

    /// The app by id; only called once its credentials were checked or it was just used.
    fn app(&mut self, appid: &str) -> &mut App {
        self.apps.get_mut(appid).expect("credentials checked")
    }

    /// Mints a token for `appid` valid from `now`.
    fn issue(&mut self, appid: &str, now: Instant) -> String {
        self.counter += 1;
        let string = format!(
            "TOK-{appid}-{:06}-{:032x}{}",
            self.counter,
            self.random.u128(..),
            self.opts.token_suffix
        );
        let kind = self.app(appid).kind;
        self.tokens.insert(
            string.clone(),
            Token {
                appid: appid.to_string(),
                kind,
                via: None,
                real_expiry: now + self.opts.token_lifetime,
                reported_expiry: now + Duration::from_secs(self.opts.expires_in),
                dead_at: None,
            },
        );
        self.issued.push(string.clone());
        self.app(appid).latest = Some(string.clone());
        string
    }

    /// The answer for a just-issued token: the full configured `expires_in`.
    fn fresh(&self, token: String) -> Grant {
        Grant::Token {
            token,
            expires_in: self.opts.expires_in,
        }
    }
}

/// The "not a valid token" answer, which differs between mp and WeCom.
fn invalid(kind: AppKind) -> Verdict {
    match kind {
        AppKind::Mp => Verdict::Rejected {
            errcode: 40001,
            errmsg: "invalid credential, access_token is invalid or not latest rid: 0007-fake",
        },
        AppKind::WeCom => Verdict::Rejected {
            errcode: 40014,
            errmsg: "invalid access_token",
        },
    }
}
