//! The Redis store: one token per app shared by every replica, and a lock so
//! that one replica at a time fetches it.
//!
//! Keys (the prefix defaults to `wechat-token-proxy:`):
//! - `{prefix}{appid}:{kind}:token` holds the credential as JSON ([`Saved`]),
//!   with a Redis expiry equal to its remaining life. `kind` is the token API
//!   for the access_token (the keys of before tickets were held) and e.g.
//!   `ticket_jsapi` for a ticket.
//! - `{prefix}{appid}:{kind}:lock` exists while a replica fetches: set with
//!   `SET NX PX` to a random owner id as a short lease that its owner renews
//!   while its fetch is alive (a Lua compare-and-expire), deleted only by
//!   that owner (a Lua compare-and-delete), and lapsing within seconds if the
//!   owner dies.
//!
//! - `{prefix}{component_appid}:authorizers` is a hash of a third-party
//!   platform's authorizers: field the authorizer's appid, value its refresh
//!   token. Read whole in one `HGETALL` at start.
//!
//! The secret is in no key and no value. Every operation has a deadline of
//! [`OP_TIMEOUT`], so a slow or unreachable Redis delays a token fetch by at
//! most that much and never a request that already has a token. The
//! connection to one server is redis-rs's `ConnectionManager`, which
//! reconnects by itself. Behind Sentinel it is redis-rs's `SentinelClient`:
//! the primary is asked of the sentinels, and asked again whenever the
//! connection fails or the server says it is a read-only replica now (a
//! failover happened), so the fleet lock follows the promoted primary.

use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, FromRedisValue, RedisError};

use super::{Key, Lock, Registered, Saved, StoreError};
use crate::config::{RedisSettings, RedisTarget, RedisUrl};

/// The longest any one Redis operation may take, retry included.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// Deletes the lock only if it still holds this owner's id: a holder whose
/// lock expired must not delete the next holder's.
const UNLOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// Extends the lease only if it still holds this owner's id: a lapsed lease
/// now held by another replica is not taken back.
const RENEW: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

/// Removes an authorizer and leaves a tombstone for it (KEYS: the registry,
/// the removed set; ARGV: the appid, the tombstone's life in seconds).
const UNREGISTER: &str = r#"redis.call("HDEL", KEYS[1], ARGV[1]) redis.call("HSET", KEYS[2], ARGV[1], "1") return redis.call("EXPIRE", KEYS[2], ARGV[2])"#;

/// Registers recovered authorizers (ARGV: appid, refresh token, …), each only
/// if no replica registered it meanwhile (its refresh token is newer than
/// the list's) or removed it lately (a tombstone in KEYS[2]).
const RECOVER: &str = r#"local n = 0
for i = 1, #ARGV, 2 do
  if redis.call("HEXISTS", KEYS[2], ARGV[i]) == 0 then
    n = n + redis.call("HSETNX", KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return n"#;

/// Replaces an authorizer's refresh token (ARGV: appid, token) only while it
/// is registered: never brings back one another replica removed.
const ROTATE: &str = r#"if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1 then redis.call("HSET", KEYS[1], ARGV[1], ARGV[2]) return 1 else return 0 end"#;

/// How long a removed authorizer's tombstone keeps a recovery, on any
/// replica, from bringing it back: longer than any recovery takes.
const TOMBSTONE: Duration = Duration::from_secs(24 * 60 * 60);

/// A Redis server shared by the replicas.
pub struct RedisStore {
    /// How commands reach the server.
    conn: Connection,
    /// Put in front of every key.
    prefix: String,
    /// The URL, redacted in messages, and used to scrub the password from
    /// redis-rs's errors.
    url: RedisUrl,
}

/// How commands reach Redis.
enum Connection {
    /// One server: multiplexed and self-reconnecting; cheap to clone per
    /// operation.
    Server(ConnectionManager),
    /// The primary the sentinels name (boxed: it is large, and one store
    /// is built per process).
    Sentinel(Box<Primary>),
}

/// The primary behind Sentinel, and the connection to it while it works.
struct Primary {
    /// Asks the sentinels; one question at a time.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the primary last named; dropped when it fails, so
    /// the next operation asks again.
    current: std::sync::Mutex<Option<MultiplexedConnection>>,
    /// Connect and answer deadlines of a connection to the primary.
    config: AsyncConnectionConfig,
}

impl Primary {
    /// The connection to the primary, asking the sentinels for it first if
    /// there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.current.lock().expect("primary lock").clone() {
            return Ok(conn);
        }
        let mut sentinels = self.sentinels.lock().await;
        // Another operation may have connected while this one waited.
        if let Some(conn) = self.current.lock().expect("primary lock").clone() {
            return Ok(conn);
        }
        // Boxed: redis-rs's sentinel future nests deep enough to overflow
        // the compiler's layout limit in every future awaiting a store call.
        let conn = Box::pin(sentinels.get_async_connection_with_config(&self.config)).await?;
        tracing::debug!("connected to the Redis primary the sentinels name");
        *self.current.lock().expect("primary lock") = Some(conn.clone());
        Ok(conn)
    }

    /// The connection failed or reached a replica: ask the sentinels again.
    fn forget(&self) {
        self.current.lock().expect("primary lock").take();
    }
}

/// Whether `e` means the server is gone or no longer the primary.
fn lost_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code() == Some("READONLY")
}

/// The fleet lock, as held by this process.
#[derive(Clone)]
pub struct FleetLock {
    /// The lock's key.
    key: String,
    /// The random id stored in it, so only this holder deletes it.
    owner: String,
}

impl RedisStore {
    /// Prepares the connection without making it: it is made on first use, so
    /// the proxy starts (and fetches by itself) while Redis is down.
    pub fn open(settings: &RedisSettings) -> Result<RedisStore, StoreError> {
        let url = settings.url.clone();
        let fail = |e: RedisError| StoreError::Redis {
            url: url.to_string(),
            problem: url.scrub(e.to_string()),
        };
        let conn = match &url.target {
            RedisTarget::Server => {
                let client = redis::Client::open(url.expose()).map_err(fail)?;
                // Connection attempts fail fast and are retried on the next
                // operation, rather than in a long backoff that operations
                // would wait behind.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(OP_TIMEOUT))
                    .set_response_timeout(Some(OP_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(100));
                Connection::Server(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(fail)?,
                )
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                db,
                password,
            } => {
                let addrs = sentinels
                    .iter()
                    .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
                let mut builder =
                    SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                        .map_err(fail)?
                        .set_client_to_redis_db(*db);
                if let Some(password) = password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = &settings.sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password.expose());
                }
                Connection::Sentinel(Box::new(Primary {
                    sentinels: tokio::sync::Mutex::new(builder.build().map_err(fail)?),
                    current: std::sync::Mutex::new(None),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(OP_TIMEOUT))
                        .set_response_timeout(Some(OP_TIMEOUT)),
                }))
            }
        };
        Ok(RedisStore {
            conn,
            prefix: settings.key_prefix.clone(),
            url: settings.url.clone(),
        })
    }

    /// The entry saved for `key`, if any. A value that is not ours (not
    /// JSON of the right shape) counts as none.
    pub async fn load(&self, key: Key<'_>) -> Result<Option<Saved>, StoreError> {
        let value: Option<String> = self
            .run(redis::cmd("GET").arg(self.key(key, "token")))
            .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Saves `saved`, expiring when the token does.
    pub async fn save(&self, key: Key<'_>, saved: &Saved) -> Result<(), StoreError> {
        let left = saved.life_left(SystemTime::now());
        if left.is_zero() {
            return Ok(());
        }
        let value = serde_json::to_string(saved).expect("plain strings and numbers serialize");
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.key(key, "token"))
                .arg(value)
                .arg("PX")
                .arg(millis(left)),
        )
        .await
    }

    /// `SET lock owner NX PX ttl`: acquired, or busy when another replica
    /// holds it.
    pub async fn lock(&self, key: Key<'_>, ttl: Duration) -> Result<Lock, StoreError> {
        let lock = FleetLock {
            key: self.key(key, "lock"),
            owner: owner_id(),
        };
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(&lock.key)
                    .arg(&lock.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(match set {
            Some(_) => Lock::Acquired(lock),
            None => Lock::Busy,
        })
    }

    /// Extends the lock to `ttl` from now if it still holds our owner id;
    /// false when it lapsed (and perhaps another replica holds it).
    pub async fn renew(&self, lock: &FleetLock, ttl: Duration) -> Result<bool, StoreError> {
        let renewed: i64 = self
            .run(
                redis::cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(&lock.key)
                    .arg(&lock.owner)
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes the lock if it still holds our owner id.
    pub async fn unlock(&self, lock: FleetLock) -> Result<(), StoreError> {
        self.run::<i64>(
            redis::cmd("EVAL")
                .arg(UNLOCK)
                .arg(1)
                .arg(&lock.key)
                .arg(&lock.owner),
        )
        .await
        .map(drop)
    }

    /// Every authorizer of `component_appid`: one `HGETALL`.
    pub async fn authorizers(&self, component_appid: &str) -> Result<Vec<Registered>, StoreError> {
        let all: Vec<(String, String)> = self
            .run(redis::cmd("HGETALL").arg(self.registry(component_appid)))
            .await?;
        Ok(all
            .into_iter()
            .map(|(appid, refresh_token)| Registered {
                component_appid: component_appid.to_owned(),
                appid,
                refresh_token,
            })
            .collect())
    }

    /// One authorizer's refresh token: `HGET`.
    pub async fn authorizer(
        &self,
        component_appid: &str,
        appid: &str,
    ) -> Result<Option<String>, StoreError> {
        self.run(
            redis::cmd("HGET")
                .arg(self.registry(component_appid))
                .arg(appid),
        )
        .await
    }

    /// One `HSET` per platform for all of `entries`, then their tombstones
    /// cleared: one registered again is no longer removed.
    pub async fn register(&self, entries: &[Registered]) -> Result<(), StoreError> {
        for (platform, entries) in by_platform(entries) {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.registry(platform));
            for e in &entries {
                cmd.arg(&e.appid).arg(&e.refresh_token);
            }
            self.run::<i64>(&mut cmd).await?;
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(self.removed(platform));
            for e in &entries {
                cmd.arg(&e.appid);
            }
            self.run::<i64>(&mut cmd).await?;
        }
        Ok(())
    }

    /// What a recovery found, registered but for the authorizers another
    /// replica registered or removed meanwhile: one script per platform.
    pub async fn recover(&self, entries: &[Registered]) -> Result<(), StoreError> {
        for (platform, entries) in by_platform(entries) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RECOVER)
                .arg(2)
                .arg(self.registry(platform))
                .arg(self.removed(platform));
            for e in &entries {
                cmd.arg(&e.appid).arg(&e.refresh_token);
            }
            self.run::<i64>(&mut cmd).await?;
        }
        Ok(())
    }

    /// A refresh token WeChat rotated, saved if the authorizer is still
    /// registered; says whether it was.
    pub async fn rotate(&self, entry: &Registered) -> Result<bool, StoreError> {
        let replaced: i64 = self
            .run(
                redis::cmd("EVAL")
                    .arg(ROTATE)
                    .arg(1)
                    .arg(self.registry(&entry.component_appid))
                    .arg(&entry.appid)
                    .arg(&entry.refresh_token),
            )
            .await?;
        Ok(replaced == 1)
    }

    /// `HDEL`, and a tombstone a recovery on any replica reads.
    pub async fn unregister(&self, component_appid: &str, appid: &str) -> Result<(), StoreError> {
        self.run::<i64>(
            redis::cmd("EVAL")
                .arg(UNREGISTER)
                .arg(2)
                .arg(self.registry(component_appid))
                .arg(self.removed(component_appid))
                .arg(appid)
                .arg(TOMBSTONE.as_secs()),
        )
        .await
        .map(drop)
    }

    /// The authorizers removed lately, for recoveries.
    fn removed(&self, component_appid: &str) -> String {
        format!("{}{component_appid}:removed", self.prefix)
    }

    fn registry(&self, component_appid: &str) -> String {
        format!("{}{component_appid}:authorizers", self.prefix)
    }

    fn key(&self, key: Key<'_>, what: &str) -> String {
        format!("{}{}:{}:{what}", self.prefix, key.appid, key.kind)
    }

    /// Runs `cmd` within [`OP_TIMEOUT`]. The first command after Redis came
    /// back fails on the dead connection and makes the manager reconnect, so
    /// a connection error is retried once; behind Sentinel, once on the
    /// primary the sentinels name now.
    async fn run<T: FromRedisValue>(&self, cmd: &mut Cmd) -> Result<T, StoreError> {
        let attempt = async {
            match &self.conn {
                Connection::Server(conn) => {
                    let mut conn = conn.clone();
                    match cmd.query_async::<T>(&mut conn).await {
                        Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
                            cmd.query_async::<T>(&mut conn).await
                        }
                        result => result,
                    }
                }
                Connection::Sentinel(primary) => {
                    let mut conn = primary.connection().await?;
                    match cmd.query_async::<T>(&mut conn).await {
                        Err(e) if lost_primary(&e) => {
                            primary.forget();
                            let mut conn = primary.connection().await?;
                            let again = cmd.query_async::<T>(&mut conn).await;
                            if again.as_ref().is_err_and(lost_primary) {
                                primary.forget();
                            }
                            again
                        }
                        result => result,
                    }
                }
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Redis {
                url: self.url.to_string(),
                problem: self.url.scrub(e.to_string()),
            }),
            Err(_) => {
                // A primary that stopped answering may be gone for good: the
                // next operation asks the sentinels.
                if let Connection::Sentinel(primary) = &self.conn {
                    primary.forget();
                }
                Err(StoreError::Timeout {
                    url: self.url.to_string(),
                    after: OP_TIMEOUT,
                })
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX).max(1)
}

/// An id no other lock holder uses: the pid and 64 random bits.
fn owner_id() -> String {
    format!("{}-{:016x}", std::process::id(), fastrand::u64(..))
}

/// `entries` by platform, in the order they came.
fn by_platform(entries: &[Registered]) -> Vec<(&str, Vec<&Registered>)> {
    let mut platforms: Vec<(&str, Vec<&Registered>)> = Vec::new();
    for e in entries {
        match platforms.iter_mut().find(|(p, _)| *p == e.component_appid) {
            Some((_, these)) => these.push(e),
            None => platforms.push((&e.component_appid, vec![e])),
        }
    }
    platforms
}
