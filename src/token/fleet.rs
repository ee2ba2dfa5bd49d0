//! Sharing tokens through the store: take a usable token an earlier run or
//! another replica saved, else fetch and save one. With Redis the fetch
//! happens under a fleet-wide lease, so one replica fetches for all.
//!
//! [`Shared::obtain`] is that protocol for any credential the store holds
//! (tokens here, JS-SDK tickets in [`crate::ticket`]).
//!
//! The lease is short ([`LEASE`]) and renewed by its holder while its work
//! is alive ([`Lease`]), so a holder that dies (kill -9, lost network) costs
//! the others a few seconds, not a whole fetch timeout; and it is released
//! when the holder's work ends, however it ends.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::TokenApi;
use crate::store::{unix_ms, FleetLock, Key, Lock, Saved, Store, StoreError};

use super::{backoff, Reason, RefreshError, Source, Token, TokenManager};

/// How long the fleet lock lives unless its holder renews it: what a dead
/// holder costs the other replicas.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// How often a live holder renews it: three chances before it lapses.
const LEASE_RENEWAL: Duration = Duration::from_secs(1);
/// How often a replica waiting for another's fetch looks for its token.
const FLEET_POLL: Duration = Duration::from_millis(50);
/// A stored token with less life than this is not worth taking.
pub(crate) const MIN_ADOPT_LIFE: Duration = Duration::from_secs(1);

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

/// What [`Shared::obtain`] came back with.
pub(crate) enum Obtained<T> {
    /// A usable entry the store held: take it, nothing was fetched.
    Stored(Saved),
    /// What the fetch returned.
    Fetched(T),
}

/// One credential in the store, and how long to wait for another replica's
/// fetch of it.
pub(crate) struct Shared<'a> {
    /// Where it is shared.
    pub store: &'a Arc<Store>,
    /// Which credential.
    pub key: Key<'a>,
    /// The app's name, for logs.
    pub app: &'a str,
    /// A lease still renewed after this belongs to a stuck holder: fetch
    /// without it.
    pub give_up_at: Instant,
}

impl Shared<'_> {
    /// A usable stored entry if there is one, else what `fetch` returns.
    /// With Redis, `fetch` runs under the fleet lease: the holder reads the
    /// store again (the previous holder may have saved between our read and
    /// our lock), fetches, saves and releases; the others poll until the new
    /// entry appears, or the lease is gone (its holder failed or died) and
    /// they take it themselves. `fetch` gets the store's error when the store
    /// cannot be reached (it should fetch alone and not save), `None` when it
    /// should save what it fetched.
    pub(crate) async fn obtain<T, E>(
        &self,
        usable: impl Fn(&Saved) -> bool,
        fetch: impl AsyncFnOnce(Option<StoreError>) -> Result<T, E>,
    ) -> Result<Obtained<T>, E> {
        loop {
            match self.store.load(self.key).await {
                Ok(Some(saved)) if usable(&saved) => return Ok(Obtained::Stored(saved)),
                Ok(_) => {}
                Err(e) => return fetch(Some(e)).await.map(Obtained::Fetched),
            }
            match self.store.lock(self.key, LEASE).await {
                Ok(Lock::Unshared) => return fetch(None).await.map(Obtained::Fetched),
                Ok(Lock::Acquired(lock)) => {
                    let lease = Lease::hold(self.store.clone(), lock, self.app);
                    let result = match self.store.load(self.key).await {
                        Ok(Some(saved)) if usable(&saved) => Ok(Obtained::Stored(saved)),
                        _ => fetch(None).await.map(Obtained::Fetched),
                    };
                    lease.release().await;
                    return result;
                }
                Ok(Lock::Busy) if Instant::now() < self.give_up_at => {
                    tokio::time::sleep(FLEET_POLL).await;
                }
                Ok(Lock::Busy) => {
                    tracing::warn!(
                        app = %self.app,
                        kind = self.key.kind,
                        "another replica kept renewing the fleet lock without saving; fetching without it"
                    );
                    return fetch(None).await.map(Obtained::Fetched);
                }
                Err(e) => return fetch(Some(e)).await.map(Obtained::Fetched),
            }
        }
    }
}

/// The fleet lock while this process holds it: renewed in the background
/// every [`LEASE_RENEWAL`], released by [`Lease::release`] or, should the
/// holder's work end another way (a panic), on drop.
struct Lease {
    /// What to release; taken by `release`.
    lock: Option<FleetLock>,
    /// Where the lock lives.
    store: Arc<Store>,
    /// The renewing task, stopped when the lease ends.
    keeper: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn hold(store: Arc<Store>, lock: FleetLock, app: &str) -> Lease {
        let keeper = tokio::spawn({
            let (store, lock, app) = (store.clone(), lock.clone(), app.to_owned());
            async move {
                loop {
                    tokio::time::sleep(LEASE_RENEWAL).await;
                    match store.renew(&lock, LEASE).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(app, "the fleet lock lapsed during a fetch; another replica may fetch too");
                            return;
                        }
                        // Redis hiccups: the lease has two more chances.
                        Err(e) => tracing::debug!(app, error = %e, "cannot renew the fleet lock"),
                    }
                }
            }
        });
        Lease {
            lock: Some(lock),
            store,
            keeper,
        }
    }

    async fn release(mut self) {
        self.keeper.abort();
        if let Some(lock) = self.lock.take() {
            if let Err(e) = self.store.unlock(lock).await {
                tracing::warn!(error = %e, "cannot release the fleet lock; it lapses by itself within seconds");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Some(lock) = self.lock.take() {
            let store = self.store.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = store.unlock(lock).await;
                });
            }
        }
    }
}
