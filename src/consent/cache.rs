//! The consent service the request path talks to: an in-process cache of [`ConsentState`]s in
//! front of a [`ConsentStore`], and batched decisions for the records of one response.
//!
//! It owns caching, invalidation and the time budget of a lookup. It must never let a store
//! failure or a timeout become a grant (those subjects are [`Consent::Unknown`]), never log a
//! subject id, and never decide itself: the rules live in `decide.rs`.
//!
//! # Cache shape
//!
//! Entries are keyed by subject, each holding the states of the purposes looked up for it. A
//! hit needs no allocation (the map is probed with `&str`), and invalidating a subject drops all
//! of its purposes at once, which a `*` opt-out requires. Purposes are keyed by name, not by
//! `PurposeId`, so entries stay valid across policy reloads (a reload may renumber purposes, and
//! the cache holds states, not decisions, so a changed lawful basis applies at once).
//!
//! # Size cap
//!
//! `max_subjects` bounds the number of cached subjects. When an insert would go over it, expired
//! entries are swept; if that is not enough, the whole cache is cleared. Simple, and a cold
//! cache costs one batched lookup per response, not one per record.
//!
//! # Holding load: coalesced misses and a bound on store queries
//!
//! A miss for (subject, purpose) that is already being looked up waits for that lookup (a
//! *flight*) instead of asking the store again, so a burst of requests for one cold subject
//! costs one query. Flights run in their own task: a client that goes away mid-lookup does not
//! cancel the answer others wait for, and the answer is still cached. Each flight holds one of
//! `max_concurrent_lookups` permits while it queries the store; waiting for a permit counts
//! against `lookup_timeout`, so a saturated store yields `Unknown` (refusals), not a queue.
//!
//! A miss joins a flight only if that flight started after every invalidation the miss has
//! seen (its generation is not older): a request made after a withdrawal was recorded never
//! takes an answer read before it. Hits do not look at flights at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::policy::compiled::Purpose;

use super::decide::{Consent, decide, needs_lookup};
use super::event::{ConsentEvent, now_ms};
use super::store::{ConsentState, ConsentStore, StoreError};

/// Tuning of a [`ConsentService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a looked-up state is trusted without asking the store again.
    pub ttl: Duration,
    /// The time budget of one store lookup; past it, the missed subjects are `Unknown`.
    pub lookup_timeout: Duration,
    /// Most subjects held in the cache (see the module documentation for what happens then).
    pub max_subjects: usize,
    /// Most store lookups in flight at once; the rest wait, within `lookup_timeout`.
    pub max_concurrent_lookups: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            lookup_timeout: Duration::from_millis(250),
            max_subjects: 100_000,
            max_concurrent_lookups: 32,
        }
    }
}

/// How long past its deadline a waiter still waits for a flight to publish. The flight's own
/// timeout ends its lookup at the deadline; this only covers the moment it takes to publish.
const PUBLISH_GRACE: Duration = Duration::from_millis(100);

/// A (purpose, subject) being looked up.
type FlightKey = (Arc<str>, Box<str>);

/// What a flight publishes: the state of each of its subjects, `None` where the store did not
/// answer (error or timeout).
type Outcome = Arc<[Option<ConsentState>]>;

/// Where a miss waits for the flight that looks its subject up.
#[derive(Clone)]
struct Waiter {
    /// The flight's answer; `None` until it is published.
    answer: watch::Receiver<Option<Outcome>>,
    /// The subject's place in the flight's answer.
    index: usize,
    /// Which flight (to remove only its own entries).
    flight: u64,
    /// The invalidation generation the flight started in.
    generation: u64,
    /// When the flight gives up on the store.
    deadline: tokio::time::Instant,
}

/// One purpose's state for a cached subject.
#[derive(Debug, Clone)]
struct Slot {
    purpose: Box<str>,
    state: ConsentState,
    expires: Instant,
}

/// Cached, batched consent decisions over a store.
pub struct ConsentService {
    store: Arc<dyn ConsentStore>,
    cache: DashMap<Box<str>, Vec<Slot>>,
    /// Misses being looked up now; only misses read or write it.
    inflight: DashMap<FlightKey, Waiter>,
    /// Numbers flights.
    flights: AtomicU64,
    /// One permit per store lookup in flight.
    permits: Semaphore,
    /// Bumped by every invalidation, so that a lookup that raced with one does not put back
    /// what was just invalidated, and a later miss does not join it.
    generation: AtomicU64,
    config: CacheConfig,
    /// Forwards the store's change feed into [`ConsentService::invalidate_all`].
    watcher: Option<JoinHandle<()>>,
    /// The runtime that made the service, where store lookups run: the store's connections
    /// stay on one runtime, whichever lane ([`crate::lanes`]) asks (`None`: the asker's).
    runtime: Option<tokio::runtime::Handle>,
    /// The service itself, for the tasks that run flights.
    me: Weak<ConsentService>,
}

impl std::fmt::Debug for ConsentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentService")
            .field("cached_subjects", &self.cache.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for ConsentService {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

impl ConsentService {
    /// A service over `store`. When the store reports changes made elsewhere
    /// ([`ConsentStore::changes`]) and a tokio runtime is running, every change clears the
    /// cache.
    pub fn new(store: Arc<dyn ConsentStore>, config: CacheConfig) -> Arc<Self> {
        let changes = store.changes();
        let runtime = tokio::runtime::Handle::try_current().ok();
        Arc::new_cyclic(|weak| {
            let watcher = match (changes, &runtime) {
                (Some(rx), Some(rt)) => Some(rt.spawn(forward_changes(weak.clone(), rx))),
                (Some(_), None) => {
                    tracing::warn!(
                        "no tokio runtime: consent cache relies on its TTL for changes made elsewhere"
                    );
                    None
                }
                (None, _) => None,
            };
            Self {
                store,
                cache: DashMap::new(),
                inflight: DashMap::new(),
                flights: AtomicU64::new(0),
                permits: Semaphore::new(
                    config
                        .max_concurrent_lookups
                        .clamp(1, Semaphore::MAX_PERMITS),
                ),
                generation: AtomicU64::new(0),
                config,
                watcher,
                runtime,
                me: weak.clone(),
            }
        })
    }

    /// The store behind the cache (for history and other uncached reads).
    pub fn store(&self) -> &Arc<dyn ConsentStore> {
        &self.store
    }

    /// Decides `purpose` for each subject, in the order of `subjects`.
    ///
    /// Purposes that need no consent are granted without a lookup, and a GPC signal denies a
    /// sale or sharing purpose without one. Otherwise cache hits are answered from memory;
    /// misses already being looked up wait for that lookup, and the others go to the store in
    /// one lookup bounded by `lookup_timeout` (waiting for a permit included). A subject the
    /// store did not answer for in time is [`Consent::Unknown`].
    pub async fn decide_batch(
        &self,
        purpose: &Purpose,
        subjects: &[&str],
        gpc: bool,
    ) -> Vec<Consent> {
        let now_ms = now_ms();
        if !needs_lookup(purpose) || (purpose.sale_or_sharing && gpc) {
            return vec![decide(purpose, None, now_ms, gpc); subjects.len()];
        }
        let now = Instant::now();
        let mut states: Vec<Option<ConsentState>> = Vec::with_capacity(subjects.len());
        let mut missed: Vec<&str> = Vec::new();
        let mut missed_at: Vec<usize> = Vec::new();
        for (i, subject) in subjects.iter().enumerate() {
            let hit = self.cached(subject, &purpose.name, now);
            if hit.is_none() {
                missed.push(subject);
                missed_at.push(i);
            }
            states.push(hit);
        }
        if !missed.is_empty() {
            for (i, state) in self.fetch(purpose, &missed).await {
                if let Some(slot) = missed_at.get(i).and_then(|&at| states.get_mut(at)) {
                    *slot = Some(state);
                }
            }
        }
        // FAIL-CLOSED: a subject whose state is still `None` decides as Unknown.
        states
            .iter()
            .map(|s| decide(purpose, s.as_ref(), now_ms, gpc))
            .collect()
    }

    /// Appends events to the store, then forgets the cached states of their subjects.
    pub async fn record(&self, events: &[ConsentEvent]) -> Result<(), StoreError> {
        let result = self.store.append(events).await;
        // Invalidate even after an error: a failed commit may still have reached the disk.
        self.generation.fetch_add(1, Ordering::AcqRel);
        for e in events {
            self.cache.remove(e.subject.as_str());
        }
        result
    }

    /// Forgets what is cached about one subject.
    pub fn forget(&self, subject: &str) {
        // INVARIANT: bump before removing (see `remember`).
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(subject);
    }

    /// Forgets everything cached.
    pub fn invalidate_all(&self) {
        // INVARIANT: bump before removing (see `remember`).
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Number of subjects currently cached (expired entries included until swept).
    pub fn cached_subjects(&self) -> usize {
        self.cache.len()
    }

    /// Number of (subject, purpose) lookups in flight.
    #[cfg(test)]
    pub(crate) fn flights_in_progress(&self) -> usize {
        self.inflight.len()
    }

    /// The unexpired cached state of (subject, purpose).
    fn cached(&self, subject: &str, purpose: &str, now: Instant) -> Option<ConsentState> {
        let slots = self.cache.get(subject)?;
        slots
            .iter()
            .find(|s| &*s.purpose == purpose && s.expires > now)
            .map(|s| s.state)
    }

    /// Answers the missed subjects: joins the flights already looking some of them up, and
    /// starts one flight for the rest. Yields `(index in missed, state)` for the subjects that
    /// got an answer; the others are left out (Unknown).
    async fn fetch(&self, purpose: &Purpose, missed: &[&str]) -> Vec<(usize, ConsentState)> {
        let Some(me) = self.me.upgrade() else {
            // Only while the service is being dropped: nothing can be looked up.
            return Vec::new();
        };
        let generation = self.generation.load(Ordering::Acquire);
        let flight = self.flights.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.config.lookup_timeout;
        let (publish, answer) = watch::channel(None);
        let name: Arc<str> = Arc::from(&*purpose.name);
        let mut waits: Vec<(usize, Waiter)> = Vec::with_capacity(missed.len());
        let mut lead: Vec<FlightKey> = Vec::new();
        for (i, subject) in missed.iter().enumerate() {
            let key: FlightKey = (Arc::clone(&name), Box::from(*subject));
            let ours = Waiter {
                answer: answer.clone(),
                index: lead.len(),
                flight,
                generation,
                deadline,
            };
            match self.inflight.entry(key) {
                // A flight that started after every invalidation we have seen reads what we
                // would read: wait for it.
                Entry::Occupied(e) if e.get().generation >= generation => {
                    waits.push((i, e.get().clone()));
                }
                // An older flight may have read before a write we must see: replace it (it
                // only removes its own entries).
                Entry::Occupied(mut e) => {
                    lead.push(e.key().clone());
                    e.insert(ours.clone());
                    waits.push((i, ours));
                }
                Entry::Vacant(e) => {
                    lead.push(e.key().clone());
                    e.insert(ours.clone());
                    waits.push((i, ours));
                }
            }
        }
        if lead.is_empty() {
            drop(publish);
        } else {
            let guard = FlightGuard {
                service: me,
                flight,
                keys: lead,
                publish,
            };
            let flight = guard.fly(generation, deadline);
            match &self.runtime {
                Some(runtime) => drop(runtime.spawn(flight)),
                None => drop(tokio::spawn(flight)),
            }
        }
        drop(answer);

        let mut found = Vec::with_capacity(waits.len());
        for (i, mut waiter) in waits {
            let limit = waiter.deadline + PUBLISH_GRACE;
            let published =
                tokio::time::timeout_at(limit, waiter.answer.wait_for(Option::is_some)).await;
            // FAIL-CLOSED: a flight that timed out, failed for this subject, or vanished
            // without publishing leaves the subject out (Unknown).
            if let Ok(Ok(outcome)) = published
                && let Some(Some(state)) =
                    outcome.as_ref().and_then(|o| o.get(waiter.index).copied())
            {
                found.push((i, state));
            }
        }
        found
    }

    /// One store lookup for `subjects`, within a permit and before `deadline`. `None` for each
    /// subject the store did not answer for.
    async fn lookup(
        &self,
        purpose: &str,
        subjects: &[&str],
        deadline: tokio::time::Instant,
    ) -> Vec<Option<ConsentState>> {
        let nothing = || vec![None; subjects.len()];
        let work = async {
            // The semaphore is never closed; a closed one would only mean "no answer".
            let _permit = self.permits.acquire().await.ok()?;
            Some(self.store.lookup_each(purpose, subjects).await)
        };
        let results = match tokio::time::timeout_at(deadline, work).await {
            Ok(Some(Ok(results))) if results.len() == subjects.len() => results,
            Ok(Some(Ok(results))) => {
                tracing::warn!(
                    purpose,
                    asked = subjects.len(),
                    answered = results.len(),
                    "consent store answered for the wrong number of subjects: treating them as unknown"
                );
                return nothing();
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(
                    purpose,
                    subjects = subjects.len(),
                    %error,
                    "consent store lookup failed: treating the subjects as unknown"
                );
                return nothing();
            }
            Ok(None) => return nothing(),
            Err(_) => {
                tracing::warn!(
                    purpose,
                    subjects = subjects.len(),
                    timeout_ms =
                        u64::try_from(self.config.lookup_timeout.as_millis()).unwrap_or(u64::MAX),
                    "consent store lookup timed out: treating the subjects as unknown"
                );
                return nothing();
            }
        };
        let mut failed = 0usize;
        let mut first_error = None;
        let states = results
            .into_iter()
            .map(|r| match r {
                Ok(state) => Some(state),
                Err(error) => {
                    failed += 1;
                    first_error.get_or_insert(error);
                    None
                }
            })
            .collect();
        if let Some(error) = first_error {
            tracing::warn!(
                purpose,
                subjects = subjects.len(),
                failed,
                %error,
                "consent store could not answer for some subjects: treating them as unknown"
            );
        }
        states
    }

    /// Caches the states a flight read (not the failures), unless an invalidation ran since
    /// the flight started.
    fn remember(
        &self,
        purpose: &str,
        subjects: &[&str],
        states: &[Option<ConsentState>],
        generation: u64,
    ) {
        let answered = states.iter().filter(|s| s.is_some()).count();
        if answered == 0 {
            return;
        }
        self.make_room(answered);
        // A batch larger than the whole cache is answered in full but cached only in part.
        let room = self.config.max_subjects.saturating_sub(self.cache.len());
        let expires = Instant::now() + self.config.ttl;
        let answers = subjects
            .iter()
            .zip(states)
            .filter_map(|(subject, state)| state.map(|s| (subject, s)));
        for (subject, state) in answers.take(room) {
            // Most subjects are asked about for one purpose: room for one slot, not the four a
            // first push would reserve.
            let mut slots = self
                .cache
                .entry(Box::from(*subject))
                .or_insert_with(|| Vec::with_capacity(1));
            // INVARIANT: checked under the entry's shard lock. An invalidation bumps the
            // generation before it removes (taking this lock): if the bump is not seen here, its
            // removal comes after this insert; if it is, nothing more goes in. So an answer read
            // before a write is never visible to a request made after the write returned.
            if self.generation.load(Ordering::Acquire) != generation {
                break;
            }
            let now = Instant::now();
            slots.retain(|s| &*s.purpose != purpose && s.expires > now);
            slots.push(Slot {
                purpose: Box::from(purpose),
                state,
                expires,
            });
        }
        // INVARIANT: insert, then check. An invalidation bumps the generation before removing,
        // so either it removed what we inserted or we see its bump and remove it ourselves.
        if self.generation.load(Ordering::Acquire) != generation {
            for subject in subjects {
                self.cache.remove(*subject);
            }
        }
    }

    /// Keeps the cache under `max_subjects` before `incoming` more subjects are added.
    fn make_room(&self, incoming: usize) {
        if self.cache.len().saturating_add(incoming) <= self.config.max_subjects {
            return;
        }
        let now = Instant::now();
        self.cache.retain(|_, slots| {
            slots.retain(|s| s.expires > now);
            !slots.is_empty()
        });
        if self.cache.len().saturating_add(incoming) > self.config.max_subjects {
            self.cache.clear();
        }
    }
}

/// A flight: the misses one `fetch` leads, looked up in a task of their own.
///
/// Dropping it (normally, or when the runtime drops the task) removes its entries from the
/// in-flight map before its answer channel closes, so no miss can join a flight that will
/// never publish.
struct FlightGuard {
    service: Arc<ConsentService>,
    flight: u64,
    keys: Vec<FlightKey>,
    publish: watch::Sender<Option<Outcome>>,
}

impl FlightGuard {
    /// Looks the subjects up, caches the answers, leaves the in-flight map, then publishes.
    async fn fly(self, generation: u64, deadline: tokio::time::Instant) {
        let Some((purpose, _)) = self.keys.first() else {
            return;
        };
        let purpose = Arc::clone(purpose);
        let subjects: Vec<&str> = self.keys.iter().map(|(_, s)| &**s).collect();
        let states = self.service.lookup(&purpose, &subjects, deadline).await;
        self.service
            .remember(&purpose, &subjects, &states, generation);
        drop(subjects);
        // INVARIANT: cache, then leave the map, then publish. A miss that comes after the
        // answer is cached hits; one that comes before it leaves the map joins and is told.
        let publish = self.publish.clone();
        drop(self);
        publish.send_replace(Some(Outcome::from(states)));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let flight = self.flight;
        for key in &self.keys {
            self.service
                .inflight
                .remove_if(key, |_, w| w.flight == flight);
        }
    }
}

/// Clears the service's cache on every change the store reports, until either side is gone.
async fn forward_changes(service: Weak<ConsentService>, mut changes: watch::Receiver<u64>) {
    while changes.changed().await.is_ok() {
        let Some(service) = service.upgrade() else {
            return;
        };
        service.invalidate_all();
    }
}
