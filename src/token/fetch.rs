//! The token's grant: one fetch with its deadline, the stable API's
//! `force_refresh` when WeChat hands back the token it just rejected, a
//! re-read of the secret file when WeChat says the secret is wrong, today's
//! count against the daily quota, and what a token keeps of each fetch
//! (the API it was fetched for, a suspected fight).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{AppKind, TokenApi};
use crate::engine::cell::{Fresh, Issued, Noun, Outcome};
use crate::engine::{Ask, CellError, Credential, Grant, Reason};
use crate::secret::SecretError;
use crate::store::{Key, StoreError};
use crate::wechat::{self, FetchError};

use super::{china_day, is_fight, Token, TokenBook, TokenGrant, TokenManager};

/// The stable API allows a `force_refresh` at most this often.
const FORCE_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

impl Grant for TokenGrant {
    type Credential = Token;
    type Extra = TokenBook;
    const NOUN: Noun = Noun::Token;
    // Two fetches: the stable API's force_refresh.
    const FETCHES_PER_ATTEMPT: u32 = 2;

    fn key(&self) -> Key<'_> {
        Key {
            appid: self.grantor.appid(),
            kind: self.grantor.store_kind(),
        }
    }

    fn label(&self) -> &str {
        self.grantor.label()
    }

    /// Fetches, and for the stable API force-refreshes when WeChat hands
    /// back the rejected token.
    async fn fetch(&self, cell: &TokenManager, ask: &Ask<Token>) -> Result<Issued, CellError> {
        let same_as_rejected = |o: &Result<wechat::Grant, FetchError>| matches!((o, &ask.rejected), (Ok(g), Some(r)) if *g.token == *r.value());
        let mut sent_at = Instant::now();
        let mut outcome = self.fetch_once(cell, false).await;
        // Only apps have the stable API (platforms and suites do not).
        if same_as_rejected(&outcome)
            && self.app.token_api == TokenApi::Stable
            && may_force_refresh(&mut cell.book().extra)
        {
            tracing::info!(app = %self.label(), "stable API returned the rejected token; forcing a refresh");
            sent_at = Instant::now();
            outcome = self.fetch_once(cell, true).await;
        }
        match outcome {
            Ok(grant) => Ok(Issued {
                value: grant.token,
                expires_in: grant.expires_in,
                sent_at,
            }),
            Err(error) => Err(CellError::Failed {
                noun: Self::NOUN,
                error,
            }),
        }
    }

    fn hold(&self, fresh: Fresh<'_, Token>, st: &mut TokenBook) -> Token {
        // A fight is suspected only against a token another system did not
        // hand this replica (the fleet's own replacement is no fight).
        let new = fresh.same.is_none();
        let candidate = st.fight_candidate.take().filter(|_| fresh.fetched && new);
        if let Some(life_left) = candidate {
            st.pending_fight = Some((fresh.stamp.generation(), life_left));
        }
        // Still rejected if WeChat handed back the one it rejected.
        let rejected = fresh.same.is_some_and(|t| t.is_rejected());
        Token::new(fresh.stamp, rejected, st.trigger.take())
    }

    /// A token error's API and fight suspicion, for the token that replaces
    /// the rejected one.
    fn before_fetch(&self, ask: &Ask<Token>, st: &mut TokenBook, now: Instant) {
        if ask.reason == Reason::TokenError {
            st.trigger = ask.path.clone();
            let mp = self.app.kind == AppKind::Mp;
            st.fight_candidate = ask
                .rejected
                .as_ref()
                .map(|t| t.stamp.expires_at().saturating_duration_since(now))
                .filter(|&life_left| is_fight(mp, life_left, false));
        }
    }

    fn after_fetch(&self, st: &mut TokenBook) {
        st.trigger = None;
        st.fight_candidate = None;
    }

    fn report(&self, cell: &TokenManager, ask: &Ask<Token>, outcome: Outcome<'_, Token>) {
        let app = self.label();
        let reason = ask.reason;
        let failure = match outcome {
            Outcome::Fetched(..) => {
                tracing::info!(
                    app,
                    reason = reason.as_str(),
                    result = "ok",
                    "token refreshed"
                );
                None
            }
            Outcome::Failed(e, retry_in) => {
                tracing::warn!(
                    app,
                    reason = reason.as_str(),
                    result = "error",
                    error = %e,
                    retry_in_ms = retry_in.unwrap_or_default().as_millis() as u64,
                    "token refresh failed"
                );
                match e {
                    CellError::Failed { error, .. } => Some(error),
                    _ => None,
                }
            }
        };
        if let Some(observer) = &self.observer {
            observer.refreshed(app, reason, failure.is_none());
            if let Some(e) = failure {
                observer.failed(app, e);
            }
        }
        if failure.is_some_and(FetchError::is_bad_secret) {
            // A rotated secret file takes effect without a restart.
            if let Err(problem) = cell.reload_secret() {
                tracing::warn!(app, %problem, "cannot re-read the secret");
            }
        }
    }

    fn accept(&self, ask: &Ask<Token>, held: &Token) -> Result<(), CellError> {
        match &ask.rejected {
            Some(rejected) if rejected.value() == held.value() => Err(CellError::NotRenewed),
            _ => Ok(()),
        }
    }

    fn unshared(&self, ask: &Ask<Token>, e: &StoreError) {
        let consequence = match self.app.token_api {
            TokenApi::Stable => "none: the stable API hands every replica the same token",
            TokenApi::Classic => {
                "this fetch invalidates, 5 minutes from now, the token other replicas hold"
            }
            TokenApi::Wecom => "other replicas may fetch too; WeCom throttles frequent fetches",
        };
        tracing::warn!(
            app = %self.label(),
            reason = ask.reason.as_str(),
            error = %e,
            consequence,
            "token store unreachable; fetching without the fleet lock"
        );
    }
}

impl TokenGrant {
    async fn fetch_once(
        &self,
        cell: &TokenManager,
        force: bool,
    ) -> Result<wechat::Grant, FetchError> {
        let secret = self.secret.load_full();
        count_fetch(&mut cell.book().extra);
        let fetch = async {
            if force {
                wechat::fetch(&self.client, &self.app, &secret, true).await
            } else {
                self.grantor.grant(&self.client, &secret).await
            }
        };
        let timeout = cell.limits.timeout;
        match tokio::time::timeout(timeout, fetch).await {
            Ok(Ok(grant)) => Ok(grant),
            // The secret never appears in an error we build, but a server
            // could echo it back in an errmsg: scrub before anyone sees it.
            Ok(Err(e)) => Err(scrub(e, secret.expose())),
            Err(_) => Err(FetchError::Timeout(timeout)),
        }
    }
}

impl TokenManager {
    /// Re-reads a file secret (SIGHUP, or WeChat said the secret is wrong).
    /// When it changed after a failed fetch, the backoff is cut short so the
    /// new secret is tried now.
    pub fn reload_secret(&self) -> Result<bool, SecretError> {
        let fresh = self.app().secret_source.read(self.grant.env.as_ref())?;
        if **self.grant.secret.load() == fresh {
            return Ok(false);
        }
        self.grant.secret.store(Arc::new(fresh));
        // The last fetch may have failed for this very secret: try the new
        // one now instead of after the backoff.
        if self.end_backoff() {
            tracing::info!(app = %self.label(), "secret changed; fetching with the new one");
        } else {
            tracing::info!(app = %self.label(), "secret changed; the next refresh uses it");
        }
        Ok(true)
    }
}

/// WeChat's 30 s rule for `force_refresh`; claims the slot when allowed.
fn may_force_refresh(st: &mut TokenBook) -> bool {
    let allowed = st
        .last_force
        .is_none_or(|t| t.elapsed() >= FORCE_REFRESH_INTERVAL);
    if allowed {
        st.last_force = Some(Instant::now());
    }
    allowed
}

/// Counts a request to WeChat's token endpoint against today's quota.
fn count_fetch(st: &mut TokenBook) {
    let today = china_day(SystemTime::now());
    if st.fetch_day != today {
        st.fetch_day = today;
        st.fetches_today = 0;
    }
    st.fetches_today += 1;
}

fn scrub(e: FetchError, secret: &str) -> FetchError {
    match e {
        FetchError::Transport(m) if m.contains(secret) => {
            FetchError::Transport(m.replace(secret, "[redacted]"))
        }
        e => wechat::redact(e, &[secret]),
    }
}
