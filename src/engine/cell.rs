//! One credential as the proxy holds it, whatever its kind: a [`Cell`], and
//! the [`Grant`] that says what differs per kind.
//!
//! Who holds what:
//! - `slot` (an `ArcSwapOption`) holds the current credential. Requests read
//!   it without a lock; only a fetch (or a value taken from the store)
//!   replaces it.
//! - `gate` (an async mutex) is held while deciding whether to fetch and for
//!   the whole of a fetch ([`super::single_flight`]). Whoever wants a new
//!   value takes it, then looks again ([`admission::decide`]): if the value
//!   it wanted replaced is already gone, it takes the new one and leaves. So
//!   N requests that want a new value cause one fetch.
//! - Fetches run in a task of their own, never in a request's future
//!   ([`Cell::refresh_detached`]): a client that disconnects stops waiting, but the
//!   fetch it started finishes and its value serves everyone after. A
//!   request waits at most `token_timeout_ms`, whoever holds the fleet lease
//!   and whatever the flood guard makes the fetch wait for.
//! - `book` (a plain mutex, never held across an await) records failures,
//!   backoff, schedule and history, so the status page never waits behind a
//!   fetch.
//! - The fetch goes through the store and its fleet lease ([`Shared`]), so a
//!   fleet makes one fetch per credential per lifetime.
//!
//! What a kind brings ([`Grant`]): the fetch itself, its key in the store,
//! how its expiry is read (tickets: from first sight), its value type and
//! per-kind bookkeeping, and what it logs and reports.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::admission::{self, Facts, Reason};
use super::fleet::{Obtained, Shared, LEASE, MIN_ADOPT_LIFE};
use super::{backoff, Limits, Next};
use crate::config::AppConfig;
use crate::store::{unix_ms, Key, Saved, Store, StoreError};
use crate::wechat::FetchError;

/// A value as a cell holds it: what every kind of credential has.
pub struct Stamp {
    /// The value itself. Never logged, never shown.
    value: Box<str>,
    /// When it stops working, by this process's clock (counted from when
    /// the fetch was sent, or for a ticket from when the value was first
    /// seen, so it errs early).
    expires_at: Instant,
    /// Increases with every new value; lets a caller that saw one rejected
    /// tell whether it has already been replaced.
    generation: u64,
}

impl Stamp {
    /// The value, for the one place that writes it into an upstream URL or
    /// an answer.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// When it stops working.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Its place in the sequence of values the cell has held.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Life left, zero once expired.
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stamp")
            .field("generation", &self.generation)
            .field("expires_in", &self.expires_in())
            .finish_non_exhaustive()
    }
}

/// A credential as a cell holds it (a token, a ticket): its [`Stamp`], and
/// what its kind keeps beside it.
pub trait Credential: Send + Sync + 'static {
    /// The value, its expiry and generation.
    fn stamp(&self) -> &Stamp;
    /// WeChat rejected it on a call (tokens only).
    fn is_rejected(&self) -> bool {
        false
    }
}

impl Credential for Stamp {
    fn stamp(&self) -> &Stamp {
        self
    }
}

/// A value as WeChat issued it.
pub struct Issued {
    /// The value itself. Never logged.
    pub value: String,
    /// The life WeChat stated.
    pub expires_in: Duration,
    /// When the request that brought it was sent: its life counts from
    /// then, so it errs early.
    pub sent_at: Instant,
}

/// A new value about to be put in the slot, for [`Grant::hold`].
pub struct Fresh<'a, C> {
    /// The value, its expiry, and its generation: the held one's when WeChat
    /// handed the same value back.
    pub stamp: Stamp,
    /// The held credential, when it has this very value.
    pub same: Option<&'a C>,
    /// Fetched from WeChat, not taken from the store.
    pub fetched: bool,
}

/// Why a fetch is wanted, and what it should replace.
pub struct Ask<C> {
    /// What asked.
    pub reason: Reason,
    /// The value WeChat rejected (token errors only).
    pub rejected: Option<Arc<C>>,
    /// The API that rejected it (token errors only).
    pub path: Option<Box<str>>,
}

impl<C> Ask<C> {
    /// A wish with nothing to replace.
    pub fn because(reason: Reason) -> Ask<C> {
        Ask {
            reason,
            rejected: None,
            path: None,
        }
    }
}

/// How a refresh ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The held value was good enough; nothing fetched.
    Held,
    /// Fetched from WeChat.
    Fetched,
    /// Taken from the store: an earlier run or another replica fetched it.
    Store,
}

/// What a kind of credential is called in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noun {
    /// An access_token (an app's, a platform's, a suite's, a corp's...).
    Token,
    /// A JS-SDK ticket.
    Ticket,
}

impl Noun {
    /// The word.
    pub fn as_str(self) -> &'static str {
        match self {
            Noun::Token => "token",
            Noun::Ticket => "ticket",
        }
    }
}

impl std::fmt::Display for Noun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why no (new) credential could be had. One type for every kind: the
/// `noun` names the kind in the message. (A byte, not a string: this error
/// is in every request's future.)
#[derive(Debug, Clone, thiserror::Error)]
pub enum CellError {
    /// A fetch failed (now or recently, and the backoff has not passed).
    #[error("{}", .error.describe(noun.as_str()))]
    Failed {
        /// `token`, `ticket`.
        noun: Noun,
        /// What went wrong.
        error: FetchError,
    },
    /// The fetch did not finish while the request could wait; it goes on, and
    /// later requests use its value.
    #[error("no {noun} within {} ms; the fetch goes on", .wait.as_millis())]
    StillFetching {
        /// `token`, `ticket`.
        noun: Noun,
        /// How long the request waited.
        wait: Duration,
    },
    /// The credential this one is fetched with (a ticket's access_token)
    /// could not be had.
    #[error("no access_token to fetch the {noun} with: {token}")]
    NoToken {
        /// `ticket`.
        noun: Noun,
        /// Why there was no token.
        token: Box<CellError>,
    },
    /// WeChat handed back the very token it had just rejected.
    #[error("WeChat returned the rejected token again")]
    NotRenewed,
    /// The API rejected a token fetched because it rejected the one before:
    /// it refuses every token for reasons of its own, so no fetch is made
    /// and the token keeps serving every other call.
    #[error("this API rejects every token; the token serves other calls")]
    RejectedByOneApi,
    /// An operator's refresh was not made: one was made too recently, or an
    /// operator already cut the current backoff short.
    #[error("no refresh made; the next may be made in {} s", .0.as_secs().max(1))]
    Declined(Duration),
}

impl CellError {
    /// The errcode to show clients: WeChat's, or -1 when WeChat gave none.
    pub fn errcode(&self) -> i64 {
        match self {
            CellError::Failed { error, .. } => error.errcode(),
            CellError::NoToken { token, .. } => token.errcode(),
            _ => -1,
        }
    }

    /// The WeChat failure behind it that earns a backoff, if any (a ticket
    /// without a token is the token's cell to back off).
    fn backs_off(&self) -> Option<&FetchError> {
        match self {
            CellError::Failed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A fetch's outcome as [`Grant::report`] sees it.
pub enum Outcome<'a, C> {
    /// It brought this value; `true` when WeChat handed back one seen before.
    Fetched(&'a C, bool),
    /// It failed, and earned this backoff if it earned one.
    Failed(&'a CellError, Option<Duration>),
}

/// What differs per kind of credential. A new kind is a grant and its
/// config; the cell does the rest.
pub trait Grant: Send + Sync + Sized + 'static {
    /// The value a request reads from the slot.
    type Credential: Credential;
    /// The kind's own bookkeeping, kept under the cell's state lock.
    type Extra: Default + Send + 'static;
    /// The kind in messages: `token`, `ticket`.
    const NOUN: Noun;
    /// WeChat hands back a value it issued earlier with a fresh `expires_in`
    /// (tickets): its life counts from when the value was first seen.
    const FIRST_SIGHT: bool = false;
    /// How many fetch timeouts one attempt may take (a stable token's
    /// `force_refresh`, a ticket's wait for its token): a fleet lease renewed
    /// beyond that belongs to a stuck holder.
    const FETCHES_PER_ATTEMPT: u32;

    /// Its key in the store.
    fn key(&self) -> Key<'_>;
    /// The name in logs and errors.
    fn label(&self) -> &str;

    /// One fetch from WeChat. Gate held. A token error the grant met on the
    /// way (a ticket's token) is the grant's to handle.
    fn fetch<'a>(
        &'a self,
        cell: &'a Cell<Self>,
        ask: &'a Ask<Self::Credential>,
    ) -> impl Future<Output = Result<Issued, CellError>> + Send + 'a;

    /// The value to put in the slot (state lock held).
    fn hold(&self, fresh: Fresh<'_, Self::Credential>, extra: &mut Self::Extra)
        -> Self::Credential;

    /// A fetch is about to be made for `ask` (gate and state lock held).
    fn before_fetch(&self, _ask: &Ask<Self::Credential>, _extra: &mut Self::Extra, _now: Instant) {}

    /// The fetch for `ask` has ended, however it ended (state lock held).
    fn after_fetch(&self, _extra: &mut Self::Extra) {}

    /// A fetch for `ask` brought a value (`Some(repeated)`) or failed with
    /// a backoff (`None`); state lock held, before the renewal task hears.
    fn settle(&self, _ask: &Ask<Self::Credential>, _ok: Option<bool>, _extra: &mut Self::Extra) {}

    /// Logs and reports a fetch's outcome (no lock held).
    fn report(
        &self,
        cell: &Cell<Self>,
        ask: &Ask<Self::Credential>,
        outcome: Outcome<'_, Self::Credential>,
    );

    /// Whether the value fetched serves `ask` (a token WeChat handed back
    /// after rejecting it does not); checked once it is in the slot.
    fn accept(
        &self,
        _ask: &Ask<Self::Credential>,
        _held: &Self::Credential,
    ) -> Result<(), CellError> {
        Ok(())
    }

    /// The store cannot be reached: say what fetching without it costs.
    fn unshared(&self, ask: &Ask<Self::Credential>, error: &StoreError);
}

/// Every kind's bookkeeping; never held across an await.
pub struct Book<X> {
    /// Failed fetches in a row and the backoff they earned.
    pub failures: backoff::Failures,
    /// When to renew ahead of expiry.
    pub renew_at: Option<Instant>,
    /// When the held value was put in the slot: a use after this is a use
    /// within its life.
    pub installed_at: Option<Instant>,
    /// Last successful fetch, for the admin refresh's rate limit.
    pub last_success: Option<Instant>,
    /// Last success, for the status page.
    pub last_refresh: Option<SystemTime>,
    /// Successful fetches since start.
    pub fetches: u64,
    /// Last fetch that replaced a rejected value, for
    /// `min_refresh_interval`.
    pub last_token_error_fetch: Option<Instant>,
    /// Last admin refresh that fetched, successful or not.
    pub last_admin_fetch: Option<Instant>,
    /// The generation the next new value gets.
    next_generation: u64,
    /// The kind's own.
    pub extra: X,
}

/// One credential: the slot, the single-flight gate, the bookkeeping and
/// the renewal.
pub struct Cell<G: Grant> {
    /// What this kind of credential does its own way.
    pub(crate) grant: G,
    /// The current value, read lock-free on every request.
    slot: ArcSwapOption<G::Credential>,
    /// Held while deciding and for the whole of a fetch: the single-flight
    /// gate.
    gate: tokio::sync::Mutex<()>,
    /// Backoff, schedule and history; never held across an await.
    book: Mutex<Book<G::Extra>>,
    /// Tells the renewal task its schedule changed.
    wake: Notify,
    /// The generation of every value a fetch brought, once it is in the slot
    /// and saved: callers waiting for a new one take it then, without
    /// queueing for the gate behind every other caller.
    installed: watch::Sender<u64>,
    /// Limits for one fetch and the backoff between failed ones.
    pub(crate) limits: Limits,
    /// Renew this long before expiry (the app's `refresh_before_expiry`).
    lead: Duration,
    /// At most one token-error fetch, and one operator fetch, per this (the
    /// app's `min_refresh_interval`).
    min_refresh_interval: Duration,
    /// Where values are shared with earlier runs or other replicas.
    store: Arc<Store>,
}

impl<G: Grant> Cell<G> {
    /// A cell holding nothing yet, sharing through memory only, on the
    /// schedule of `app` (the app or platform whose credential it is).
    pub fn of(grant: G, limits: Limits, app: &AppConfig) -> Cell<G> {
        Cell {
            grant,
            slot: ArcSwapOption::empty(),
            gate: tokio::sync::Mutex::new(()),
            book: Mutex::new(Book {
                failures: backoff::Failures::default(),
                renew_at: None,
                installed_at: None,
                last_success: None,
                last_refresh: None,
                fetches: 0,
                last_token_error_fetch: None,
                last_admin_fetch: None,
                next_generation: 1,
                extra: G::Extra::default(),
            }),
            wake: Notify::new(),
            installed: watch::Sender::new(0),
            limits,
            lead: app.refresh_before_expiry,
            min_refresh_interval: app.min_refresh_interval,
            store: Arc::new(Store::Memory),
        }
    }

    /// Uses `store` to take saved values and save fetched ones (memory only
    /// without this).
    pub fn with_store(mut self, store: Arc<Store>) -> Cell<G> {
        self.store = store;
        self
    }

    /// The held value if it has not expired. Lock-free: this is the hot path.
    pub fn current(&self) -> Option<Arc<G::Credential>> {
        let held = self.slot.load_full()?;
        (Instant::now() < held.stamp().expires_at).then_some(held)
    }

    /// The held value, expired or not.
    pub(crate) fn held(&self) -> Option<Arc<G::Credential>> {
        self.slot.load_full()
    }

    /// The bookkeeping, locked.
    pub(crate) fn book(&self) -> MutexGuard<'_, Book<G::Extra>> {
        super::lock(&self.book)
    }

    /// Ends a fetch backoff now (its cause was just fixed: a new secret, a
    /// reset quota): the renewal task fetches at once, and requests no longer
    /// get the last error. False when the last fetch did not fail.
    pub fn end_backoff(&self) -> bool {
        if !self.book().failures.end_now() {
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// The error of the last fetch, if it failed.
    pub(crate) fn last_error(&self) -> Option<CellError> {
        let last = self.book().failures.last().cloned();
        last.map(|error| CellError::Failed {
            noun: G::NOUN,
            error,
        })
    }

    /// What the admission rules need, read now.
    fn facts(&self, now: Instant) -> Facts {
        let held = self.slot.load().as_ref().map(|c| admission::Held {
            generation: c.stamp().generation,
            valid: now < c.stamp().expires_at,
            rejected: c.is_rejected(),
        });
        let book = self.book();
        Facts {
            held,
            // A backoff only stands with the error it answers.
            retry_at: book.failures.retry_at(),
            renew_at: book.renew_at,
            last_token_error_fetch: book.last_token_error_fetch,
            last_success: book.last_success,
            last_admin_fetch: book.last_admin_fetch,
            backoff_cut_by_operator: book.failures.cut_by_operator(),
            min_refresh_interval: self.min_refresh_interval,
        }
    }

    /// Runs the refresh in a task of its own and waits for it at most
    /// `token_timeout`, whoever fetches and whatever the flood guard makes
    /// the task wait for: the fetch outlives a caller that disconnects or
    /// gives up.
    pub(crate) async fn refresh_detached(
        self: &Arc<Self>,
        ask: Ask<G::Credential>,
    ) -> Result<Arc<G::Credential>, CellError> {
        let replaced = ask.rejected.as_ref().map(|c| c.stamp().generation);
        let mut installed = self.installed.subscribe();
        let this = self.clone();
        // The caller's future holds the task's handle, never the work
        // itself, so a request's future stays small.
        let flight = tokio::spawn(async move { this.refresh(&ask).await });
        let answer = tokio::time::timeout(self.limits.timeout, flight);
        // Whoever's fetch brings a new value (this caller's, another's, the
        // renewal task's), the caller takes it then rather than queue for
        // the gate behind every other caller.
        let arrived = async {
            loop {
                if installed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if let Some(held) = self.current() {
                    if Some(held.stamp().generation) != replaced && !held.is_rejected() {
                        return held;
                    }
                }
            }
        };
        tokio::select! {
            answer = answer => match answer {
                Ok(Ok(result)) => result.map(|(held, _)| held),
                // The task ended without an answer (it panicked): never
                // expected, but a request must still get one.
                Ok(Err(_)) => Err(CellError::Failed { noun: G::NOUN, error: super::stopped(G::NOUN.as_str()) }),
                Err(_) => Err(CellError::StillFetching { noun: G::NOUN, wait: self.limits.timeout }),
            },
            held = arrived => Ok(held),
        }
    }

    /// The single-flight refresh: see the module docs.
    pub(crate) async fn refresh(
        &self,
        ask: &Ask<G::Credential>,
    ) -> Result<(Arc<G::Credential>, Source), CellError> {
        let rejected = ask.rejected.as_ref().map(|c| c.stamp().generation);
        super::single_flight(
            &self.gate,
            |now| admission::decide(ask.reason, rejected, &self.facts(now), now),
            || self.current().map(|held| (held, Source::Held)),
            || self.last_error(),
            CellError::Declined,
            async |now| {
                self.before_fetch(ask, now);
                let outcome = self.obtain(ask).await;
                self.grant.after_fetch(&mut self.book().extra);
                // Told once the value is also saved for the fleet.
                if let Ok((held, _)) = &outcome {
                    self.installed.send_replace(held.stamp().generation);
                }
                outcome
            },
        )
        .await
    }

    /// What a fetch about to be made leaves in the book (gate held): a token
    /// error's time; an admin fetch's time, and whether it went through a
    /// backoff; and what the kind keeps.
    fn before_fetch(&self, ask: &Ask<G::Credential>, now: Instant) {
        let mut book = self.book();
        let in_backoff = book.failures.retry_at().is_some_and(|at| now < at);
        match ask.reason {
            Reason::TokenError => book.last_token_error_fetch = Some(now),
            Reason::Admin => {
                book.last_admin_fetch = Some(now);
                if in_backoff {
                    book.failures.cut_by_operator_now();
                }
            }
            _ => {}
        }
        self.grant.before_fetch(ask, &mut book.extra, now);
    }

    /// A new value from the store if it holds a usable one, else fetched
    /// (and saved), one replica fetching for the fleet ([`Shared::obtain`]).
    /// Gate held. Store unreachable: fetch alone.
    async fn obtain(
        &self,
        ask: &Ask<G::Credential>,
    ) -> Result<(Arc<G::Credential>, Source), CellError> {
        let shared = Shared {
            store: &self.store,
            key: self.grant.key(),
            app: self.grant.label(),
            give_up_at: Instant::now() + self.limits.timeout * G::FETCHES_PER_ATTEMPT + LEASE * 2,
        };
        let obtained = shared
            .obtain(
                |saved| self.usable(ask, saved),
                async |unshared: Option<StoreError>| self.fetch_and_share(ask, unshared).await,
            )
            .await?;
        Ok(match obtained {
            Obtained::Stored(saved) => (self.adopt(saved, ask), Source::Store),
            Obtained::Fetched(held) => (held, Source::Fetched),
        })
    }

    /// Whether a stored value may replace ours for `ask`.
    fn usable(&self, ask: &Ask<G::Credential>, saved: &Saved) -> bool {
        let left = saved.life_left(SystemTime::now());
        let lead = self.lead;
        let differs =
            |c: Option<&G::Credential>| c.is_none_or(|c| *c.stamp().value != *saved.token);
        match ask.reason {
            // Not itself due for renewal, and (ahead) not the value we hold.
            Reason::Startup => left > lead,
            Reason::Ahead => left > lead && differs(self.slot.load().as_deref()),
            Reason::OnDemand => left >= MIN_ADOPT_LIFE,
            Reason::TokenError => left >= MIN_ADOPT_LIFE && differs(ask.rejected.as_deref()),
            // The operator asked for a fetch.
            Reason::Admin => false,
        }
    }

    /// Fetches from WeChat; for a first-sight kind keeps the first expiry
    /// seen for the value (held or stored); saves it unless the store is
    /// unreachable (`unshared`).
    async fn fetch_and_share(
        &self,
        ask: &Ask<G::Credential>,
        unshared: Option<StoreError>,
    ) -> Result<Arc<G::Credential>, CellError> {
        if let Some(e) = &unshared {
            self.grant.unshared(ask, e);
        }
        let issued = match self.grant.fetch(self, ask).await {
            Ok(issued) => issued,
            Err(e) => {
                self.failed(ask, &e);
                return Err(e);
            }
        };
        let mut expires_at = issued.sent_at + issued.expires_in;
        let mut repeated = false;
        if G::FIRST_SIGHT {
            let now = Instant::now();
            let mut seen_before = Vec::new();
            if let Some(held) = self.held().filter(|h| *h.stamp().value == *issued.value) {
                seen_before.push(held.stamp().expires_at);
            }
            if unshared.is_none() {
                // Another replica may have seen this value first (a store that
                // cannot be read now is no reason to fail a good fetch).
                if let Ok(Some(saved)) = self.store.load(self.grant.key()).await {
                    if saved.token == issued.value {
                        seen_before.push(now + saved.life_left(SystemTime::now()));
                    }
                }
            }
            repeated = !seen_before.is_empty();
            expires_at = backoff::first_sight(expires_at, seen_before);
        }
        let held = self.install(issued.value, expires_at, Some(ask), repeated);
        self.grant
            .report(self, ask, Outcome::Fetched(&held, repeated));
        self.grant.accept(ask, &held)?;
        if unshared.is_none() && !matches!(*self.store, Store::Memory) {
            let key = self.grant.key();
            let left = held
                .stamp()
                .expires_at
                .saturating_duration_since(Instant::now());
            let saved = Saved {
                appid: key.appid.to_owned(),
                api: key.kind.to_owned(),
                token: held.stamp().value.to_string(),
                expires_at_ms: unix_ms(SystemTime::now() + left),
            };
            if let Err(e) = self.store.save(key, saved).await {
                tracing::warn!(app = %self.grant.label(), store = self.store.kind(), error = %e, "cannot save the {}", G::NOUN);
            }
        }
        Ok(held)
    }

    /// Records a failed fetch: a WeChat failure backs off; one the kind
    /// depends on (a ticket's token) is that credential's to retry.
    fn failed(&self, ask: &Ask<G::Credential>, e: &CellError) {
        let retry_in = e.backs_off().map(|cause| {
            let mut book = self.book();
            let delay = book
                .failures
                .record(cause, self.limits.retry_min, self.limits.retry_max);
            self.grant.settle(ask, None, &mut book.extra);
            drop(book);
            self.wake.notify_one();
            delay
        });
        self.grant.report(self, ask, Outcome::Failed(e, retry_in));
    }

    /// Puts a stored value in the slot and schedules its renewal; no fetch.
    fn adopt(&self, saved: Saved, ask: &Ask<G::Credential>) -> Arc<G::Credential> {
        let left = saved.life_left(SystemTime::now());
        tracing::info!(
            app = %self.grant.label(),
            reason = ask.reason.as_str(),
            store = self.store.kind(),
            expires_in_s = left.as_secs(),
            "{} taken from the store",
            G::NOUN
        );
        self.install(saved.token, Instant::now() + left, None, false)
    }

    /// Puts a value (`fetched` for an ask, or taken from the store) in the
    /// slot, schedules its renewal and clears the failure record.
    fn install(
        &self,
        value: String,
        expires_at: Instant,
        fetched: Option<&Ask<G::Credential>>,
        repeated: bool,
    ) -> Arc<G::Credential> {
        let now = Instant::now();
        let mut book = self.book();
        let held = self.slot.load();
        // WeChat may hand back the value we hold (the stable API does until
        // its last minutes, tickets all their life): same generation.
        let same = held.as_deref().filter(|h| *h.stamp().value == *value);
        let generation = match same {
            Some(same) => same.stamp().generation,
            None => {
                book.next_generation += 1;
                book.next_generation - 1
            }
        };
        let fresh = Fresh {
            stamp: Stamp {
                value: value.into_boxed_str(),
                expires_at,
                generation,
            },
            same,
            fetched: fetched.is_some(),
        };
        let credential = Arc::new(self.grant.hold(fresh, &mut book.extra));
        self.slot.store(Some(credential.clone()));
        book.renew_at = Some(backoff::renew_at(now, expires_at, self.lead, repeated));
        book.installed_at = Some(now);
        book.failures.clear();
        book.last_refresh = Some(SystemTime::now());
        if let Some(ask) = fetched {
            book.fetches += 1;
            book.last_success = Some(now);
            self.grant.settle(ask, Some(repeated), &mut book.extra);
        }
        drop(book);
        self.wake.notify_one();
        credential
    }

    /// Renews ahead of expiry and retries after failures on the schedule
    /// `next` names (given the book); ends on [`Next::Stop`] or when
    /// `shutdown` flips. Failures are logged and scheduled inside.
    pub(crate) async fn renew_while(
        &self,
        shutdown: watch::Receiver<bool>,
        next: impl Fn(&mut Book<G::Extra>, bool) -> Next<Reason>,
    ) {
        super::renew(
            &self.wake,
            shutdown,
            || {
                let held = self.slot.load().is_some();
                next(&mut self.book(), held)
            },
            |reason| async move { drop(self.refresh(&Ask::because(reason)).await) },
        )
        .await
    }

    /// For a scheduler that renews many credentials without a task each:
    /// whether a renewal (or a retry after a failed one) is due now for a
    /// value used at `used_at`. Only a value used during its own life is
    /// renewed; with none held, nothing is due (the next request fetches).
    pub(crate) fn renewal_due(&self, used_at: Instant, now: Instant) -> bool {
        let book = self.book();
        let Some(installed) = book.installed_at else {
            return false;
        };
        let at = book.failures.retry_at().or(book.renew_at);
        used_at >= installed && at.is_some_and(|at| at <= now)
    }

    /// The renewal [`Cell::renewal_due`] called for; failures are logged and
    /// scheduled inside.
    pub(crate) async fn renew_ahead(&self) {
        let _ = self.refresh(&Ask::because(Reason::Ahead)).await;
    }
}
