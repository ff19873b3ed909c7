//! The consent store interface: append events, look up the state that decisions need, read a
//! subject's history, and hear about writes made elsewhere.
//!
//! This module owns the trait and the state it returns. It must never decide: turning a
//! [`ConsentState`] into a decision is `decide.rs`'s job, and caching is `cache.rs`'s.
//!
//! # Why boxed futures
//!
//! The gateway holds its store as `Arc<dyn ConsentStore>` (SQLite now, PostgreSQL and an HTTP
//! adapter later, chosen at start-up). `async fn` in traits is not object safe, so each method
//! returns a [`StoreFuture`] (`Pin<Box<dyn Future + Send>>`). One allocation per call is
//! negligible next to a database round trip, and cache hits never reach the store.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

use super::event::{ConsentEvent, EventKind, InvalidEventError};

/// The future every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where an event stands in a store's history: by time, then by insertion order, so that two
/// events with the same timestamp still have a strict order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventOrder {
    /// When the event happened (unix milliseconds).
    pub at_ms: i64,
    /// The store's insertion sequence (the row id); breaks ties of `at_ms`.
    pub seq: i64,
}

/// The latest event for one (subject, purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestEvent {
    /// What the subject last did for this purpose.
    pub kind: EventKind,
    /// Its place in the history.
    pub order: EventOrder,
    /// When a grant lapses; `None` for no expiry (or for other kinds).
    pub expires_at_ms: Option<i64>,
}

/// Everything a decision for one (subject, purpose) needs, and nothing more.
///
/// Only the latest event for the purpose matters: a decision never needs older grants, because
/// whenever the latest event is not a grant the purpose is refused anyway (withdrawn, objected,
/// opted out). The one cross-purpose fact is the latest `*` opt-out, which a later grant for this
/// purpose overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsentState {
    /// The latest event for (subject, purpose); `None`: the subject never said anything about it.
    pub latest: Option<LatestEvent>,
    /// The latest `opted_out` event with purpose `*` for the subject, if any.
    pub opted_out_all: Option<EventOrder>,
}

/// What stays of a subject after erasure: the fact that it happened, under a keyed pseudonym of
/// the subject id (see `erasure.rs`), never the id itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureRecord {
    /// HMAC-SHA-256 of the subject id under the erasure key, lower-case hex.
    pub subject_pseudonym: String,
    /// When the erasure was carried out (unix milliseconds).
    pub at_ms: i64,
    /// Who asked for it (an admin token's name, `cli:<user>`).
    pub actor: Option<String>,
    /// A reference to the data subject request (ticket id, ...).
    pub request_ref: Option<String>,
    /// How many consent events were removed.
    pub events_removed: u64,
}

/// One event of an export page, with its place in the store's insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEvent {
    /// The store's insertion sequence; pass the last one as `after` for the next page.
    pub seq: i64,
    /// The event.
    pub event: ConsentEvent,
}

/// The answer of a batched lookup, built from the rows a store read: for each subject, the
/// latest event for the purpose and the latest `*` opt-out. Every store reads its rows its own
/// way and combines them here, the same way.
#[derive(Debug)]
pub(crate) struct LookupAnswer<'p> {
    purpose: &'p str,
    found: std::collections::HashMap<String, ConsentState>,
}

impl<'p> LookupAnswer<'p> {
    /// An empty answer for a lookup of `purpose` for up to `subjects` subjects.
    pub(crate) fn new(purpose: &'p str, subjects: usize) -> Self {
        Self {
            purpose,
            found: std::collections::HashMap::with_capacity(subjects),
        }
    }

    /// One row: the latest event of `subject` for `row_purpose` (the purpose looked up, or
    /// `*`).
    pub(crate) fn add(&mut self, subject: String, row_purpose: &str, latest: LatestEvent) {
        let state = self.found.entry(subject).or_default();
        if row_purpose == self.purpose {
            state.latest = Some(latest);
        }
        if row_purpose == super::event::ALL_PURPOSES && latest.kind == EventKind::OptedOut {
            state.opted_out_all = Some(latest.order);
        }
    }

    /// The states in the order of `subjects` (a repeated subject gets a copy; one without rows,
    /// the empty state).
    pub(crate) fn in_order(&self, subjects: &[&str]) -> Vec<ConsentState> {
        subjects
            .iter()
            .map(|s| self.found.get(*s).copied().unwrap_or_default())
            .collect()
    }
}

/// A store that could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or refused (I/O, lock timeout, constraint, trigger).
    #[error("consent database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An event to append is invalid; nothing was written.
    #[error("event {index} is invalid: {error}")]
    InvalidEvent {
        /// Index of the event in the batch.
        index: usize,
        /// What is wrong with it.
        error: InvalidEventError,
    },
    /// The store holds a row this code cannot read (an unknown kind, say).
    #[error("the consent store holds an unreadable row: {0}")]
    Corrupt(String),
    /// The store cannot do this (an external platform that is only read, say).
    #[error("this consent store does not support {0}")]
    Unsupported(&'static str),
    /// An external platform could not be reached, or its answer could not be read (a status
    /// other than 2xx or 404, not JSON, a path missing, an unknown value, too slow).
    #[error("consent platform: {0}")]
    Http(String),
    /// The store's location could not be prepared.
    #[error("cannot prepare the consent store at {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A consent store. Implementations must be usable as `Arc<dyn ConsentStore>`.
pub trait ConsentStore: Send + Sync {
    /// Appends the events in one transaction: all are recorded, or none.
    fn append<'a>(&'a self, events: &'a [ConsentEvent]) -> StoreFuture<'a, ()>;

    /// The state of each subject for `purpose`, in the order of `subjects` (a repeated subject
    /// gets a copy). Answered in one round trip per batch of subjects.
    fn lookup<'a>(
        &'a self,
        purpose: &'a str,
        subjects: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<ConsentState>>;

    /// [`ConsentStore::lookup`] with one result per subject, for stores that ask about each
    /// subject separately (an external platform): one unreadable answer then costs that subject
    /// alone, not the batch. The outer error still fails the whole batch.
    ///
    /// The default asks [`ConsentStore::lookup`] once: all or nothing.
    fn lookup_each<'a>(
        &'a self,
        purpose: &'a str,
        subjects: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<Result<ConsentState, StoreError>>> {
        Box::pin(async move {
            let states = self.lookup(purpose, subjects).await?;
            Ok(states.into_iter().map(Ok).collect())
        })
    }

    /// Every event of a subject, oldest first (by time, then insertion order), with the time
    /// each was recorded.
    fn history<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Vec<ConsentEvent>>;

    /// Erases a subject: removes every event of `subject` and keeps `record` (whose
    /// `events_removed` the store fills in), in one transaction. Returns the stored record.
    /// Erasing a subject without events still keeps the record: the request was carried out.
    fn erase<'a>(
        &'a self,
        subject: &'a str,
        record: &'a ErasureRecord,
    ) -> StoreFuture<'a, ErasureRecord>;

    /// The erasures recorded under a subject pseudonym, oldest first.
    fn erasures<'a>(&'a self, subject_pseudonym: &'a str) -> StoreFuture<'a, Vec<ErasureRecord>>;

    /// Up to `limit` events recorded after sequence `after` (0: from the start), in insertion
    /// order: the pages of a full export.
    fn export_page(&self, after: i64, limit: u32) -> StoreFuture<'_, Vec<ExportedEvent>>;

    /// A feed whose value changes whenever another process (or replica) may have written: the
    /// receiver must then drop any cached state. `None`: the store cannot tell, so caches rely
    /// on their TTL alone.
    fn changes(&self) -> Option<watch::Receiver<u64>>;

    /// Lets pending work finish and closes the store's connections; later calls fail. Used by
    /// one-shot commands before they exit.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
