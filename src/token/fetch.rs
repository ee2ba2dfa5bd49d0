//! Getting a token from WeChat: one fetch with its deadline, the stable API's
//! `force_refresh` when WeChat hands back the token it just rejected, and a
//! re-read of the secret file when WeChat says the secret is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TokenApi;
use crate::engine::backoff;
use crate::secret::SecretError;
use crate::wechat::{self, FetchError, Grant};

use super::{Reason, RefreshError, Token, TokenManager};

/// The stable API allows a `force_refresh` at most this often.
const FORCE_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

impl TokenManager {
    /// Fetches from WeChat (and for the stable API, force-refreshes when
    /// WeChat hands back the rejected token), then puts the outcome in the
    /// slot or the failure record. Gate held.
    pub(super) async fn fetch_from_wechat(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, RefreshError> {
        let mut sent_at = Instant::now();
        let mut outcome = self.fetch_once(false).await;
        let same_as_rejected = |o: &Result<Grant, FetchError>| matches!((o, rejected), (Ok(g), Some(r)) if *g.token == *r.value);
        if same_as_rejected(&outcome)
            && self.app.token_api == TokenApi::Stable
            && self.may_force_refresh()
        {
            tracing::info!(app = %self.label(), "stable API returned the rejected token; forcing a refresh");
            sent_at = Instant::now();
            outcome = self.fetch_once(true).await;
        }
        let not_renewed = same_as_rejected(&outcome);
        match outcome {
            Ok(grant) => {
                let token = self.install_grant(grant, sent_at);
                self.report(reason, None);
                if not_renewed {
                    return Err(RefreshError::NotRenewed);
                }
                Ok(token)
            }
            Err(e) => {
                let retry_in = self.record_failure(&e);
                self.report(reason, Some((&e, retry_in)));
                if e.is_bad_secret() {
                    // A rotated secret file takes effect without a restart.
                    if let Err(problem) = self.reload_secret() {
                        tracing::warn!(app = %self.label(), %problem, "cannot re-read the secret");
                    }
                }
                Err(RefreshError::Failed(e))
            }
        }
    }

    /// WeChat's 30 s rule for `force_refresh`; claims the slot when allowed.
    fn may_force_refresh(&self) -> bool {
        let mut st = self.lock_state();
        let allowed = st
            .last_force
            .is_none_or(|t| t.elapsed() >= FORCE_REFRESH_INTERVAL);
        if allowed {
            st.last_force = Some(Instant::now());
        }
        allowed
    }

    async fn fetch_once(&self, force: bool) -> Result<Grant, FetchError> {
        let secret = self.secret.load_full();
        self.count_fetch();
        let fetch = async {
            match &self.grantor {
                Some(grantor) => grantor.grant(&self.client, &secret).await,
                None => wechat::fetch(&self.client, &self.app, &secret, force).await,
            }
        };
        match tokio::time::timeout(self.limits.timeout, fetch).await {
            Ok(Ok(grant)) => Ok(grant),
            // The secret never appears in an error we build, but a server
            // could echo it back in an errmsg: scrub before anyone sees it.
            Ok(Err(e)) => Err(scrub(e, secret.expose())),
            Err(_) => Err(FetchError::Timeout(self.limits.timeout)),
        }
    }

    /// Puts a granted token in the slot and schedules its renewal.
    fn install_grant(&self, grant: Grant, sent_at: Instant) -> Arc<Token> {
        let token = self.install(
            grant.token,
            sent_at + grant.expires_in,
            sent_at + backoff::renew_after(grant.expires_in, self.app.refresh_before_expiry),
            true,
        );
        let mut st = self.lock_state();
        st.fetches += 1;
        st.last_success = Some(Instant::now());
        token
    }

    /// Re-reads a file secret (SIGHUP, or WeChat said the secret is wrong).
    /// When it changed after a failed fetch, the backoff is cut short so the
    /// new secret is tried now.
    pub fn reload_secret(&self) -> Result<bool, SecretError> {
        let fresh = self.app.secret_source.read(self.env.as_ref())?;
        if **self.secret.load() == fresh {
            return Ok(false);
        }
        self.secret.store(Arc::new(fresh));
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

fn scrub(e: FetchError, secret: &str) -> FetchError {
    match e {
        FetchError::Refused { errcode, errmsg } if errmsg.contains(secret) => FetchError::Refused {
            errcode,
            errmsg: errmsg.replace(secret, "[redacted]"),
        },
        FetchError::Transport(m) if m.contains(secret) => {
            FetchError::Transport(m.replace(secret, "[redacted]"))
        }
        e => e,
    }
}
