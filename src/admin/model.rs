//! The admin API's request and response bodies, with their OpenAPI schemas.
//!
//! It owns the wire form and the conversions to and from the consent model. It must never
//! invent another form of an event: [`EventView`] serialises exactly as a JSON lines line
//! (`ConsentEvent::record`), so what the API returns imports back unchanged.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::consent::decide::Consent;
use crate::consent::event::{ConsentEvent, EventKind, format_rfc3339_ms, parse_rfc3339_ms};
use crate::consent::requests::{Format, PurposeState, Status, SubjectExport};
use crate::consent::store::ErasureRecord;
use crate::policy::compiled::Purpose;

use super::problem::Problem;

/// What a subject did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Gave consent (optionally until `expires_at`).
    Granted,
    /// Took a consent back; also ends a legitimate interest.
    Withdrawn,
    /// Objected to processing based on legitimate interest.
    Objected,
    /// Opted out of sale or sharing; with purpose `*`, of all of them.
    OptedOut,
}

impl From<Kind> for EventKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Granted => Self::Granted,
            Kind::Withdrawn => Self::Withdrawn,
            Kind::Objected => Self::Objected,
            Kind::OptedOut => Self::OptedOut,
        }
    }
}

impl From<EventKind> for Kind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Granted => Self::Granted,
            EventKind::Withdrawn => Self::Withdrawn,
            EventKind::Objected => Self::Objected,
            EventKind::OptedOut => Self::OptedOut,
        }
    }
}

/// One consent event to record: the JSON lines fields, less `actor` and `recorded_at`, which
/// the gateway sets (the actor is the admin token's name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// The data subject's id, as the CRM names it.
    pub subject: String,
    /// The purpose name; `*` only on `opted_out` (every sale or sharing purpose).
    pub purpose: String,
    /// What the subject did.
    pub kind: Kind,
    /// When it happened (RFC 3339); default: now.
    #[serde(default)]
    pub at: Option<String>,
    /// When a grant lapses (RFC 3339); only on `granted`, and after `at`.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The channel it came through (`web_form`, `preference_centre`, `gpc`, ...).
    #[serde(default)]
    pub source: Option<String>,
    /// A reference to the proof (form submission id, signed document, ...).
    #[serde(default)]
    pub proof: Option<String>,
}

/// Several events, recorded in one transaction: all or none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// The events, in order.
    pub events: Vec<EventInput>,
}

// Only documents the body: the handler tells the two forms apart itself, so that a problem
// names the field at fault (an untagged enum would only say that neither form matched).
/// The body of `POST /v1/consent/events`: one event, or `{"events": [...]}`.
#[derive(Debug, Clone, ToSchema)]
#[serde(untagged)]
pub enum EventsRequest {
    /// One event.
    One(EventInput),
    /// Several, all or none.
    Many(EventBatch),
}

impl EventInput {
    /// The event, validated; `prefix` is the path of this event in the body (`events[2].` or
    /// empty), for the field named by a problem.
    pub fn into_event(self, now_ms: i64, prefix: &str) -> Result<ConsentEvent, Problem> {
        let time = |field: &str, text: Option<&str>| {
            text.map(parse_rfc3339_ms)
                .transpose()
                .map_err(|e| Problem::invalid(format!("{prefix}{field}"), e))
        };
        let at_ms = time("at", self.at.as_deref())?.unwrap_or(now_ms);
        let expires_at_ms = time("expires_at", self.expires_at.as_deref())?;
        if expires_at_ms.is_some_and(|x| x <= at_ms) {
            return Err(Problem::invalid(
                format!("{prefix}expires_at"),
                "expires_at must be later than at",
            ));
        }
        let event = ConsentEvent {
            subject: self.subject,
            purpose: self.purpose,
            kind: self.kind.into(),
            at_ms,
            expires_at_ms,
            source: self.source.filter(|s| !s.is_empty()),
            proof: self.proof.filter(|s| !s.is_empty()),
            actor: None,
            recorded_at_ms: None,
        };
        event
            .validate()
            .map_err(|e| Problem::invalid(format!("{prefix}{}", e.field()), e.to_string()))?;
        Ok(event)
    }
}

/// A recorded consent event: the JSON lines form (`actor` and `recorded_at` included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EventView {
    /// The data subject's id.
    pub subject: String,
    /// The purpose, or `*`.
    pub purpose: String,
    /// What the subject did.
    pub kind: Kind,
    /// When it happened (RFC 3339).
    pub at: String,
    /// When a grant lapses (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The channel it came through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The proof reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// Who recorded it: `admin:<token name>`, `cli:<user>`, or the original actor of an
    /// imported export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// When the gateway recorded it (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
}

impl From<&ConsentEvent> for EventView {
    fn from(e: &ConsentEvent) -> Self {
        let r = e.record();
        Self {
            subject: r.subject.to_owned(),
            purpose: r.purpose.to_owned(),
            kind: e.kind.into(),
            at: r.at,
            expires_at: r.expires_at,
            source: r.source.map(str::to_owned),
            proof: r.proof.map(str::to_owned),
            actor: r.actor.map(str::to_owned),
            recorded_at: r.recorded_at,
        }
    }
}

/// The answer to `POST /v1/consent/events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recorded {
    /// The events as recorded, in the order sent.
    pub recorded: Vec<EventView>,
}

/// What the latest event for a purpose means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusName {
    /// A grant in force.
    Granted,
    /// A grant whose expiry has passed.
    Expired,
    /// Consent taken back.
    Withdrawn,
    /// An objection to a legitimate interest.
    Objected,
    /// An opt-out of sale or sharing.
    OptedOut,
}

impl From<Status> for StatusName {
    fn from(s: Status) -> Self {
        match s {
            Status::Granted => Self::Granted,
            Status::Expired => Self::Expired,
            Status::Withdrawn => Self::Withdrawn,
            Status::Objected => Self::Objected,
            Status::OptedOut => Self::OptedOut,
        }
    }
}

/// One purpose the subject has said something about.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PurposeStatus {
    /// The purpose, or `*` for an opt-out of every sale or sharing purpose.
    pub purpose: String,
    /// What the latest event means now.
    pub status: StatusName,
    /// The latest event for the purpose.
    pub latest: EventView,
}

impl From<&PurposeState> for PurposeStatus {
    fn from(p: &PurposeState) -> Self {
        Self {
            purpose: p.latest.purpose.clone(),
            status: p.status.into(),
            latest: (&p.latest).into(),
        }
    }
}

/// A decision of the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionName {
    /// The purpose may process the subject's data.
    Granted,
    /// It may not.
    Denied,
    /// The store could not answer; handled as denied.
    Unknown,
}

impl From<Consent> for DecisionName {
    fn from(c: Consent) -> Self {
        match c {
            Consent::Granted => Self::Granted,
            Consent::Denied => Self::Denied,
            Consent::Unknown => Self::Unknown,
        }
    }
}

/// The decision the gateway would take now for one purpose of the running policy.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PurposeDecision {
    /// The purpose.
    pub purpose: String,
    /// Its lawful basis (`consent`, `contract`, `legitimate_interest`, ...).
    pub basis: String,
    /// Whether it is a sale or sharing purpose (an opt-out stops it).
    pub sale_or_sharing: bool,
    /// The decision, for a request without a Global Privacy Control signal (a request with
    /// `Sec-GPC: 1` is denied every sale or sharing purpose).
    pub decision: DecisionName,
}

impl PurposeDecision {
    /// The decision `consent` for `purpose`.
    pub fn new(purpose: &Purpose, consent: Consent) -> Self {
        Self {
            purpose: purpose.name.to_string(),
            basis: purpose.basis.as_str().to_owned(),
            sale_or_sharing: purpose.sale_or_sharing,
            decision: consent.into(),
        }
    }
}

/// A subject's current consent state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectConsent {
    /// The data subject's id.
    pub subject: String,
    /// The time the statuses and decisions hold for (RFC 3339).
    pub evaluated_at: String,
    /// Per purpose the subject has said something about: the latest event and its status,
    /// sorted by purpose.
    pub purposes: Vec<PurposeStatus>,
    /// Per purpose of the running policy, the decision the gateway would take now.
    pub decisions: Vec<PurposeDecision>,
}

/// A subject's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct History {
    /// The data subject's id.
    pub subject: String,
    /// Every event, oldest first.
    pub events: Vec<EventView>,
}

/// The record an erasure leaves behind: no subject id, only its keyed pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErasureView {
    /// HMAC-SHA-256 of the subject id under the erasure key (hex).
    pub subject_pseudonym: String,
    /// When the erasure was carried out (RFC 3339).
    pub at: String,
    /// Who asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The data subject request's reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_ref: Option<String>,
    /// How many consent events were removed.
    pub events_removed: u64,
}

impl From<&ErasureRecord> for ErasureView {
    fn from(e: &ErasureRecord) -> Self {
        Self {
            subject_pseudonym: e.subject_pseudonym.clone(),
            at: format_rfc3339_ms(e.at_ms),
            actor: e.actor.clone(),
            request_ref: e.request_ref.clone(),
            events_removed: e.events_removed,
        }
    }
}

/// Everything the gateway holds about a subject (a data subject access request). The CLI's
/// `consent export` prints the same document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectExportView {
    /// The data subject's id.
    pub subject: String,
    /// Every consent event, oldest first.
    pub consent_events: Vec<EventView>,
    /// Erasures carried out earlier for this subject id (found by its pseudonym).
    pub erasures: Vec<ErasureView>,
}

impl From<&SubjectExport> for SubjectExportView {
    fn from(x: &SubjectExport) -> Self {
        Self {
            subject: x.subject.clone(),
            consent_events: x.events.iter().map(EventView::from).collect(),
            erasures: x.erasures.iter().map(ErasureView::from).collect(),
        }
    }
}

/// The answer to an import.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Imported {
    /// How many events were recorded (in one transaction).
    pub imported: usize,
}

/// Whether the admin API can reach the consent store.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `reachable` or `unreachable`.
    pub store: String,
}

/// An import or export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// CSV with a header line (`text/csv`).
    Csv,
    /// JSON lines (`application/x-ndjson`).
    Jsonl,
}

impl From<FormatName> for Format {
    fn from(f: FormatName) -> Self {
        match f {
            FormatName::Csv => Self::Csv,
            FormatName::Jsonl => Self::Jsonl,
        }
    }
}

/// Query of `GET /v1/consent/export`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    pub format: Option<FormatName>,
}

/// Query of `POST /v1/consent/import`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// `csv` or `jsonl`; overrides the Content-Type.
    #[serde(default)]
    pub format: Option<FormatName>,
    /// The source recorded for lines that name none.
    #[serde(default)]
    pub source: Option<String>,
}

/// Query of `DELETE /v1/subjects/{id}`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EraseQuery {
    /// A reference to the data subject request (ticket id), kept with the erasure record.
    #[serde(default, rename = "ref")]
    #[param(rename = "ref")]
    pub request_ref: Option<String>,
}
