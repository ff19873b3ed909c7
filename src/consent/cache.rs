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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;
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
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            lookup_timeout: Duration::from_millis(250),
            max_subjects: 100_000,
        }
    }
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
    /// Bumped by every invalidation, so that a lookup that raced with one does not put back
    /// what was just invalidated.
    generation: AtomicU64,
    config: CacheConfig,
    /// Forwards the store's change feed into [`ConsentService::invalidate_all`].
    watcher: Option<JoinHandle<()>>,
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
        Arc::new_cyclic(|weak| {
            let watcher = match (changes, tokio::runtime::Handle::try_current()) {
                (Some(rx), Ok(rt)) => Some(rt.spawn(forward_changes(weak.clone(), rx))),
                (Some(_), Err(_)) => {
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
                generation: AtomicU64::new(0),
                config,
                watcher,
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
    /// sale or sharing purpose without one. Otherwise cache hits are answered from memory and
    /// all misses go to the store in one lookup bounded by `lookup_timeout`; if it fails or
    /// times out, those subjects are [`Consent::Unknown`].
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
        // INVARIANT: bump before removing (see `fetch`).
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(subject);
    }

    /// Forgets everything cached.
    pub fn invalidate_all(&self) {
        // INVARIANT: bump before removing (see `fetch`).
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Number of subjects currently cached (expired entries included until swept).
    pub fn cached_subjects(&self) -> usize {
        self.cache.len()
    }

    /// The unexpired cached state of (subject, purpose).
    fn cached(&self, subject: &str, purpose: &str, now: Instant) -> Option<ConsentState> {
        let slots = self.cache.get(subject)?;
        slots
            .iter()
            .find(|s| &*s.purpose == purpose && s.expires > now)
            .map(|s| s.state)
    }

    /// Looks up the missed subjects in one store call and caches what it returns. Yields
    /// `(index in missed, state)`; nothing on failure.
    async fn fetch(&self, purpose: &Purpose, missed: &[&str]) -> Vec<(usize, ConsentState)> {
        let generation = self.generation.load(Ordering::Acquire);
        let lookup = self.store.lookup(&purpose.name, missed);
        let states = match tokio::time::timeout(self.config.lookup_timeout, lookup).await {
            Ok(Ok(states)) if states.len() == missed.len() => states,
            Ok(Ok(states)) => {
                tracing::warn!(
                    purpose = %purpose.name,
                    asked = missed.len(),
                    answered = states.len(),
                    "consent store answered for the wrong number of subjects: treating them as unknown"
                );
                return Vec::new();
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    purpose = %purpose.name,
                    subjects = missed.len(),
                    %error,
                    "consent store lookup failed: treating the subjects as unknown"
                );
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!(
                    purpose = %purpose.name,
                    subjects = missed.len(),
                    timeout_ms = u64::try_from(self.config.lookup_timeout.as_millis()).unwrap_or(u64::MAX),
                    "consent store lookup timed out: treating the subjects as unknown"
                );
                return Vec::new();
            }
        };
        self.make_room(missed.len());
        // A batch larger than the whole cache is answered in full but cached only in part.
        let room = self.config.max_subjects.saturating_sub(self.cache.len());
        let expires = Instant::now() + self.config.ttl;
        for (subject, state) in missed.iter().zip(&states).take(room) {
            let mut slots = self.cache.entry(Box::from(*subject)).or_default();
            let now = Instant::now();
            slots.retain(|s| s.purpose != purpose.name && s.expires > now);
            slots.push(Slot {
                purpose: purpose.name.clone(),
                state: *state,
                expires,
            });
        }
        // INVARIANT: insert, then check. An invalidation bumps the generation before removing,
        // so either it removed what we inserted or we see its bump and remove it ourselves.
        if self.generation.load(Ordering::Acquire) != generation {
            for subject in missed {
                self.cache.remove(*subject);
            }
        }
        states.into_iter().enumerate().collect()
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

/// Clears the service's cache on every change the store reports, until either side is gone.
async fn forward_changes(service: Weak<ConsentService>, mut changes: watch::Receiver<u64>) {
    while changes.changed().await.is_ok() {
        let Some(service) = service.upgrade() else {
            return;
        };
        service.invalidate_all();
    }
}
