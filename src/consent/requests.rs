//! What people and systems ask of the record of consent, one place for every front end: the
//! admin API and the `consentry consent` commands both call [`ConsentRecords`].
//!
//! It owns recording (with the actor who recorded), all-or-nothing imports, a subject's current
//! state and history, full exports, and the data subject requests (export, erasure). It must
//! never decide for the request path (that is `decide.rs` behind the cache), and never keep a
//! subject id in an erasure record (only its keyed pseudonym).

use std::path::Path;
use std::sync::Arc;

use crate::policy::compiled::Purpose;

use super::cache::ConsentService;
use super::decide::Consent;
use super::erasure::ErasureKey;
use super::event::{
    ConsentEvent, EventKind, ImportDefaults, ParseError, now_ms, parse_csv, parse_json_lines,
};
use super::store::{ErasureRecord, ExportedEvent, StoreError};

/// The two text formats of imports and exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }

    /// What an export in this format starts with: the CSV header line, or nothing.
    pub fn header(self) -> String {
        match self {
            Self::Csv => super::event::csv_header_line(),
            Self::Jsonl => String::new(),
        }
    }

    /// One event as a line of this format (with its line end); it imports back unchanged.
    pub fn line(self, event: &ConsentEvent) -> String {
        match self {
            Self::Csv => event.to_csv_line(),
            Self::Jsonl => event.to_json_line(),
        }
    }
}

/// Events per page of a full export (the admin API's and the CLI's): memory holds one page at a
/// time.
pub const EXPORT_PAGE: u32 = 1000;

/// An import that wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line is bad; nothing was written.
    #[error("{0}; nothing was imported")]
    Parse(#[from] ParseError),
    /// The store refused or failed; nothing was written (one transaction).
    #[error("{0}; nothing was imported")]
    Store(#[from] StoreError),
}

/// What the latest event for a purpose means at a given time: the derived state that people
/// read (the gateway's decision also weighs the lawful basis, see `decide.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// A grant in force.
    Granted,
    /// A grant whose expiry has passed (an expiry equal to now has passed, as in `decide`).
    Expired,
    /// Consent taken back.
    Withdrawn,
    /// An objection (to a legitimate interest).
    Objected,
    /// An opt-out of sale or sharing.
    OptedOut,
}

impl Status {
    /// The status that `latest`, the latest event for its purpose, gives at `now_ms`.
    pub fn of(latest: &ConsentEvent, now_ms: i64) -> Self {
        match latest.kind {
            EventKind::Granted if latest.expires_at_ms.is_some_and(|x| x <= now_ms) => {
                Self::Expired
            }
            EventKind::Granted => Self::Granted,
            EventKind::Withdrawn => Self::Withdrawn,
            EventKind::Objected => Self::Objected,
            EventKind::OptedOut => Self::OptedOut,
        }
    }

    /// The name used by the admin API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
            Self::Objected => "objected",
            Self::OptedOut => "opted_out",
        }
    }
}

/// One purpose of a subject's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeState {
    /// What the latest event means now.
    pub status: Status,
    /// The latest event for the purpose (`*` for an opt-out of every sale or sharing purpose).
    pub latest: ConsentEvent,
}

/// Everything the gateway holds about one subject (a data subject access request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectExport {
    /// The subject's id.
    pub subject: String,
    /// Every consent event, oldest first.
    pub events: Vec<ConsentEvent>,
    /// Erasures carried out for this subject id before (found by its pseudonym).
    pub erasures: Vec<ErasureRecord>,
}

/// The record of consent, as its users see it.
#[derive(Clone)]
pub struct ConsentRecords {
    service: Arc<ConsentService>,
    erasure_key: ErasureKey,
    /// The last store check and when it ran: probes within [`HEALTH_TTL`] share it.
    health: Arc<tokio::sync::Mutex<Option<(std::time::Instant, bool)>>>,
}

/// How long one store check answers health probes. Probes are unauthenticated: without this a
/// flood of them would take the store connections that consent lookups need.
pub const HEALTH_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for ConsentRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentRecords").finish_non_exhaustive()
    }
}

impl ConsentRecords {
    /// Records over the service's store; writes go through the service, so its cache forgets
    /// the subjects written.
    pub fn new(service: Arc<ConsentService>, erasure_key: ErasureKey) -> Self {
        Self {
            service,
            erasure_key,
            health: Arc::default(),
        }
    }

    /// The consent service behind.
    pub fn service(&self) -> &Arc<ConsentService> {
        &self.service
    }

    /// Validates and appends events in one transaction; events that name no actor get
    /// `actor`, and events without a recording time get now. Returns the events as recorded.
    pub async fn record(
        &self,
        mut events: Vec<ConsentEvent>,
        actor: &str,
    ) -> Result<Vec<ConsentEvent>, StoreError> {
        let now = now_ms();
        for (index, e) in events.iter_mut().enumerate() {
            e.validate()
                .map_err(|error| StoreError::InvalidEvent { index, error })?;
            if e.actor.is_none() {
                e.actor = Some(actor.to_owned());
            }
            e.recorded_at_ms.get_or_insert(now);
        }
        self.service.record(&events).await?;
        Ok(events)
    }

    /// Parses a whole import and appends it in one transaction: a bad line or a store error
    /// writes nothing. Lines without `at` get now; without `source` or `actor`, `defaults`.
    pub async fn import(
        &self,
        text: &str,
        format: Format,
        defaults: &ImportDefaults<'_>,
    ) -> Result<usize, ImportError> {
        let now = now_ms();
        let events = match format {
            Format::Csv => parse_csv(text, now, defaults)?,
            Format::Jsonl => parse_json_lines(text, now, defaults)?,
        };
        self.service.record(&events).await?;
        Ok(events.len())
    }

    /// Every event of `subject`, oldest first.
    pub async fn history(&self, subject: &str) -> Result<Vec<ConsentEvent>, StoreError> {
        self.service.store().history(subject).await
    }

    /// The latest event of `subject` per purpose (`*` included), sorted by purpose: the state
    /// the decisions derive from.
    pub async fn current(&self, subject: &str) -> Result<Vec<ConsentEvent>, StoreError> {
        Ok(latest_per_purpose(self.history(subject).await?))
    }

    /// The current state of `subject` at `now_ms`: per purpose (`*` included), the latest
    /// event and what it means, sorted by purpose.
    pub async fn state(&self, subject: &str, now_ms: i64) -> Result<Vec<PurposeState>, StoreError> {
        Ok(self
            .current(subject)
            .await?
            .into_iter()
            .map(|latest| PurposeState {
                status: Status::of(&latest, now_ms),
                latest,
            })
            .collect())
    }

    /// The decision the request path would take now for `subject` and each of `purposes`
    /// (without a Global Privacy Control signal), in their order: the same cached lookup and
    /// the same rules, so a store that fails answers `Unknown`.
    pub async fn decisions(&self, subject: &str, purposes: &[Purpose]) -> Vec<Consent> {
        let mut out = Vec::with_capacity(purposes.len());
        for purpose in purposes {
            let decided = self.service.decide_batch(purpose, &[subject], false).await;
            // FAIL-CLOSED: an answer missing for the subject is no grant.
            out.push(decided.first().copied().unwrap_or(Consent::Unknown));
        }
        out
    }

    /// Whether the store answers a query (the smallest one there is: an empty export page).
    async fn check_store(&self) -> Result<(), StoreError> {
        self.service
            .store()
            .export_page(i64::MAX, 1)
            .await
            .map(drop)
    }

    /// Whether the store answers, checked at most once per [`HEALTH_TTL`] however many ask
    /// (concurrent callers wait for the one check in flight).
    pub async fn store_reachable(&self) -> bool {
        let mut last = self.health.lock().await;
        if let Some((at, ok)) = *last
            && at.elapsed() < HEALTH_TTL
        {
            return ok;
        }
        let ok = match self.check_store().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "health check: the consent store does not answer");
                false
            }
        };
        *last = Some((std::time::Instant::now(), ok));
        ok
    }

    /// Everything held about `subject`.
    pub async fn export_subject(&self, subject: &str) -> Result<SubjectExport, StoreError> {
        let events = self.history(subject).await?;
        let erasures = self
            .service
            .store()
            .erasures(&self.erasure_key.pseudonym(subject))
            .await?;
        Ok(SubjectExport {
            subject: subject.to_owned(),
            events,
            erasures,
        })
    }

    /// Erases `subject`'s consent history, keeping a pseudonymised record of the erasure, and
    /// makes every cache forget the subject.
    pub async fn erase(
        &self,
        subject: &str,
        actor: &str,
        request_ref: Option<&str>,
    ) -> Result<ErasureRecord, StoreError> {
        let record = ErasureRecord {
            subject_pseudonym: self.erasure_key.pseudonym(subject),
            at_ms: now_ms(),
            actor: Some(actor.to_owned()),
            request_ref: request_ref.map(str::to_owned),
            events_removed: 0,
        };
        let result = self.service.store().erase(subject, &record).await;
        // Forget even after an error: a failed commit may still have reached the disk.
        self.service.forget(subject);
        result
    }

    /// One page of a full export (see [`super::store::ConsentStore::export_page`]).
    pub async fn export_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ExportedEvent>, StoreError> {
        self.service.store().export_page(after, limit).await
    }
}

/// The last event per purpose of a history sorted oldest first, sorted by purpose.
fn latest_per_purpose(history: Vec<ConsentEvent>) -> Vec<ConsentEvent> {
    let mut latest: std::collections::BTreeMap<String, ConsentEvent> =
        std::collections::BTreeMap::new();
    for e in history {
        latest.insert(e.purpose.clone(), e);
    }
    latest.into_values().collect()
}
