//! Sharing a credential through the store: take a usable one an earlier run
//! or another replica saved, else fetch and save one. With Redis the fetch
//! happens under a fleet-wide lease, so one replica fetches for all.
//!
//! [`Shared::obtain`] is that protocol for any credential the store holds
//! (tokens in [`crate::token`], JS-SDK tickets in [`crate::ticket`]).
//!
//! The lease is short ([`LEASE`]) and renewed by its holder while its work
//! is alive ([`Lease`]), so a holder that dies (kill -9, lost network) costs
//! the others a few seconds, not a whole fetch timeout; and it is released
//! when the holder's work ends, however it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{FleetLock, Key, Lock, Saved, Store, StoreError};

/// How long the fleet lock lives unless its holder renews it: what a dead
/// holder costs the other replicas.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// How often a live holder renews it: three chances before it lapses.
const LEASE_RENEWAL: Duration = Duration::from_secs(1);
/// How often a replica waiting for another's fetch looks for its token.
const FLEET_POLL: Duration = Duration::from_millis(50);
/// A stored credential with less life than this is not worth taking.
pub(crate) const MIN_ADOPT_LIFE: Duration = Duration::from_secs(1);

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
