//! A token's side of sharing through the store ([`crate::engine::fleet`]):
//! which stored token may replace the held one, fetching and saving, and
//! fetching alone when the store cannot be reached.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::TokenApi;
use crate::engine::backoff;
use crate::engine::fleet::{Obtained, Shared, LEASE, MIN_ADOPT_LIFE};
use crate::store::{unix_ms, Saved, Store, StoreError};

use super::{Reason, RefreshError, Source, Token, TokenManager};

impl TokenManager {
    /// A new token from the store if it holds a usable one, else fetched
    /// (and saved), one replica fetching for the fleet ([`Shared::obtain`]).
    /// Gate held. Redis unreachable: fetch alone.
    pub(super) async fn obtain(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<(Arc<Token>, Source), RefreshError> {
        // A live holder's work is bounded (two fetches: the stable API's
        // force_refresh); a lease renewed beyond that is a stuck holder.
        let give_up_at = Instant::now() + self.limits.timeout * 2 + LEASE * 2;
        let shared = Shared {
            store: &self.store,
            key: self.key(),
            app: self.label(),
            give_up_at,
        };
        let obtained = shared
            .obtain(
                |saved| self.usable(saved, reason, rejected),
                async |unshared: Option<StoreError>| match unshared {
                    None => self.fetch_and_share(reason, rejected).await,
                    Some(e) => self.fetch_alone(&e, reason, rejected).await,
                },
            )
            .await?;
        Ok(match obtained {
            Obtained::Stored(saved) => (self.adopt(saved, reason), Source::Store),
            Obtained::Fetched(fetched) => fetched,
        })
    }

    /// Whether a stored token may replace ours for this `reason`.
    fn usable(&self, saved: &Saved, reason: Reason, rejected: Option<&Token>) -> bool {
        let left = saved.life_left(SystemTime::now());
        let held = self.slot.load();
        let differs = |t: Option<&Token>| t.is_none_or(|t| *t.value != *saved.token);
        match reason {
            // Not itself due for renewal, and (ahead) not the token we hold.
            Reason::Startup => left > self.app.refresh_before_expiry,
            Reason::Ahead => left > self.app.refresh_before_expiry && differs(held.as_deref()),
            Reason::OnDemand => left >= MIN_ADOPT_LIFE,
            Reason::TokenError => left >= MIN_ADOPT_LIFE && differs(rejected),
            // The operator asked for a fetch.
            Reason::Admin => false,
        }
    }

    /// Fetches, and saves the token when the fetch brought one.
    async fn fetch_and_share(
        &self,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<(Arc<Token>, Source), RefreshError> {
        let token = self.fetch_from_wechat(reason, rejected).await?;
        if !matches!(*self.store, Store::Memory) {
            let left = token.expires_at.saturating_duration_since(Instant::now());
            let key = self.key();
            let saved = Saved {
                appid: key.appid.to_owned(),
                api: key.kind.to_owned(),
                token: token.value.to_string(),
                expires_at_ms: unix_ms(SystemTime::now() + left),
            };
            if let Err(e) = self.store.save(key, saved).await {
                tracing::warn!(app = %self.label(), store = self.store.kind(), error = %e, "cannot save the token");
            }
        }
        Ok((token, Source::Fetched))
    }

    /// The store cannot be reached: fetch without it rather than fail.
    async fn fetch_alone(
        &self,
        e: &StoreError,
        reason: Reason,
        rejected: Option<&Token>,
    ) -> Result<(Arc<Token>, Source), RefreshError> {
        let consequence = match self.app.token_api {
            TokenApi::Stable => "none: the stable API hands every replica the same token",
            TokenApi::Classic => {
                "this fetch invalidates, 5 minutes from now, the token other replicas hold"
            }
            TokenApi::Wecom => "other replicas may fetch too; WeCom throttles frequent fetches",
        };
        tracing::warn!(
            app = %self.label(),
            reason = reason.as_str(),
            error = %e,
            consequence,
            "token store unreachable; fetching without the fleet lock"
        );
        let token = self.fetch_from_wechat(reason, rejected).await?;
        Ok((token, Source::Fetched))
    }

    /// Puts a stored token in the slot and schedules its renewal; no fetch.
    fn adopt(&self, saved: Saved, reason: Reason) -> Arc<Token> {
        let left = saved.life_left(SystemTime::now());
        let now = Instant::now();
        tracing::info!(
            app = %self.label(),
            reason = reason.as_str(),
            store = self.store.kind(),
            expires_in_s = left.as_secs(),
            "token taken from the store"
        );
        self.install(
            saved.token,
            now + left,
            now + backoff::renew_after(left, self.app.refresh_before_expiry),
            false,
        )
    }
}
