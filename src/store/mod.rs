//! Where tokens live besides the process's memory: a file that outlives a
//! restart, or Redis shared by every replica.
//!
//! Who holds what:
//! - The [`crate::token::TokenManager`] of each app stays the only place that
//!   fetches. With its single-flight gate held, it asks the store for a token
//!   saved by an earlier run or another replica before fetching, and saves
//!   every token it fetches. Requests never touch the store: they read the
//!   manager's slot as before.
//! - [`Store::Memory`] keeps nothing; [`Store::File`] keeps every app's token
//!   in one JSON file (see [`mod@file`]); [`Store::Redis`] keeps one key per app
//!   plus a fleet-wide lease, so only one replica fetches at a time (see
//!   [`mod@redis`]).
//!
//! What is stored per credential: the value, its absolute expiry (unix ms,
//! so it means the same in another process), the appid and the credential's
//! kind ([`Key`]): the token API (`stable`, `classic`, `wecom`) for an
//! access_token, `ticket_jsapi`, `ticket_wx_card`, `ticket_corp` or
//! `ticket_agent` for a JS-SDK ticket; for an account served under a
//! platform or a suite, the kind names the parent (`authorizer_token@…`,
//! `ticket_jsapi@…`), so it never meets an app's entry for the same account
//! or another parent's. Entries are found by appid and kind,
//! never by the secret, and an entry saved for another appid or kind is never
//! used. A token's kind is its API's name, as before tickets were held, so a
//! running fleet keeps its tokens across the upgrade.

pub mod file;
pub mod redis;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::StoreSettings;

/// Which credential an entry or a fleet lock is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    /// The appid (or corpid) it belongs to.
    pub appid: &'a str,
    /// What it is: a token API's name, or a ticket kind (`ticket_jsapi`…).
    pub kind: &'a str,
}

pub use self::file::FileStore;
pub use self::redis::{FleetLock, RedisStore};

/// One credential (a token or a ticket) as a store holds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The appid (or corpid) the token belongs to.
    pub appid: String,
    /// Its kind ([`Key::kind`]); named `api` since tokens were all it held,
    /// so files and Redis values written before keep being read.
    pub api: String,
    /// The token or ticket itself. Never logged.
    pub token: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Saved {
    /// Whether this entry is for `key`: same appid and same kind.
    pub fn belongs_to(&self, key: Key<'_>) -> bool {
        self.appid == key.appid && self.api == key.kind
    }

    /// Life left at `now` (zero once expired).
    pub fn life_left(&self, now: SystemTime) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(unix_ms(now)))
    }
}

impl fmt::Debug for Saved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saved")
            .field("appid", &self.appid)
            .field("api", &self.api)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// One authorizer of a third-party platform as the registry keeps it. The
/// refresh token is a secret: never logged, never shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The platform's component_appid.
    pub component_appid: String,
    /// The authorizer's appid.
    pub appid: String,
    /// Its `authorizer_refresh_token`.
    pub refresh_token: String,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("component_appid", &self.component_appid)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Why the store could not answer. Messages never hold a token or the Redis
/// password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time.
    #[error("Redis at {url} did not answer within {} ms", .after.as_millis())]
    Timeout {
        /// The Redis URL, password redacted.
        url: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// Redis answered with an error, or the connection failed.
    #[error("Redis at {url}: {problem}")]
    Redis {
        /// The Redis URL, password redacted.
        url: String,
        /// What redis-rs said, password scrubbed.
        problem: String,
    },
    /// The token file could not be written.
    #[error("cannot write the token file {file}: {problem}")]
    Write {
        /// The file.
        file: String,
        /// What the OS said.
        problem: String,
    },
}

/// The outcome of asking for the fleet-wide fetch lock.
pub enum Lock {
    /// The store is not shared with other processes: fetch without a lock.
    Unshared,
    /// This process holds the lock; release it with [`Store::unlock`].
    Acquired(FleetLock),
    /// Another replica holds it and is fetching.
    Busy,
}

/// The configured store, shared by every app's token manager.
pub enum Store {
    /// Nothing kept beyond the process.
    Memory,
    /// A JSON file.
    File(FileStore),
    /// Redis, shared by replicas.
    Redis(RedisStore),
}

impl Store {
    /// Opens the store: reads the token file (a missing or broken one is
    /// reported and ignored), or prepares the Redis connection, which is made
    /// on first use, so an unreachable Redis does not stop the start.
    pub fn open(settings: &StoreSettings) -> Result<Store, StoreError> {
        Ok(match settings {
            StoreSettings::Memory => Store::Memory,
            StoreSettings::File { path } => Store::File(FileStore::open(path.clone())),
            StoreSettings::Redis(redis) => Store::Redis(RedisStore::open(redis)?),
        })
    }

    /// The name used in logs: `memory`, `file` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
        }
    }

    /// Whether other processes share it (Redis): then its registry, not
    /// this process's memory, says which authorizers exist.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// The entry saved for `key`, if any (it may have expired).
    pub async fn load(&self, key: Key<'_>) -> Result<Option<Saved>, StoreError> {
        let saved = match self {
            Store::Memory => None,
            Store::File(file) => file.load(key),
            Store::Redis(redis) => redis.load(key).await?,
        };
        Ok(saved.filter(|s| s.belongs_to(key)))
    }

    /// Saves `saved` under `key`.
    pub async fn save(&self, key: Key<'_>, saved: Saved) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(file) => file.save(saved).await,
            Store::Redis(redis) => redis.save(key, &saved).await,
        }
    }

    /// Every authorizer registered for `component_appid`, in one read (one
    /// `HGETALL` with Redis). Memory: none, the registry lives in the
    /// platform only.
    pub async fn authorizers(&self, component_appid: &str) -> Result<Vec<Registered>, StoreError> {
        match self {
            Store::Memory => Ok(Vec::new()),
            Store::File(file) => Ok(file.authorizers(component_appid)),
            Store::Redis(redis) => redis.authorizers(component_appid).await,
        }
    }

    /// One authorizer's refresh token (`HGET` with Redis), for an authorizer
    /// registered through another replica after this one loaded the
    /// registry. Memory and file: none, they are this process's own.
    pub async fn authorizer(
        &self,
        component_appid: &str,
        appid: &str,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory | Store::File(_) => Ok(None),
            Store::Redis(redis) => redis.authorizer(component_appid, appid).await,
        }
    }

    /// Registers (or replaces the refresh token of) these authorizers, in one
    /// write (with Redis, one `HSET`, then their tombstones cleared: one
    /// registered again is no longer removed).
    pub async fn register(&self, entries: &[Registered]) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(file) => file.register(entries).await,
            Store::Redis(redis) => redis.register(entries).await,
        }
    }

    /// Registers what a recovery from WeChat's list found, but for the
    /// authorizers registered or removed meanwhile through another replica
    /// (Redis): the list's refresh tokens are older than theirs. A file or
    /// memory is this process's own: the platform leaves those out itself.
    pub async fn recover(&self, entries: &[Registered]) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(file) => file.register(entries).await,
            Store::Redis(redis) => redis.recover(entries).await,
        }
    }

    /// Saves a refresh token WeChat rotated, if the authorizer is still
    /// registered (it may have been removed, here or through another replica,
    /// while its token was fetched); says whether it was. Memory: always, the
    /// platform holds the registry.
    pub async fn rotate(&self, entry: &Registered) -> Result<bool, StoreError> {
        match self {
            Store::Memory => Ok(true),
            Store::File(file) => file.rotate(entry).await,
            Store::Redis(redis) => redis.rotate(entry).await,
        }
    }

    /// Removes an authorizer from the registry.
    pub async fn unregister(&self, component_appid: &str, appid: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::File(file) => file.unregister(component_appid, appid).await,
            Store::Redis(redis) => redis.unregister(component_appid, appid).await,
        }
    }

    /// Takes the fleet-wide lock on fetching `key`'s credential, expiring
    /// after `ttl` should its holder die.
    pub async fn lock(&self, key: Key<'_>, ttl: Duration) -> Result<Lock, StoreError> {
        match self {
            Store::Memory | Store::File(_) => Ok(Lock::Unshared),
            Store::Redis(redis) => redis.lock(key, ttl).await,
        }
    }

    /// Extends a lock taken by [`Store::lock`] to `ttl` from now, if this
    /// process still owns it; false when it lapsed.
    pub async fn renew(&self, lock: &FleetLock, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Redis(redis) => redis.renew(lock, ttl).await,
            Store::Memory | Store::File(_) => Ok(true),
        }
    }

    /// Releases a lock taken by [`Store::lock`], if this process still owns it.
    pub async fn unlock(&self, lock: FleetLock) -> Result<(), StoreError> {
        match self {
            Store::Redis(redis) => redis.unlock(lock).await,
            Store::Memory | Store::File(_) => Ok(()),
        }
    }
}
