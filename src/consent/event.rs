//! Consent events: the append-only record of who granted, withdrew, objected or opted out of
//! what, when, through which channel and with what proof; and the two import formats (CSV and
//! JSON lines) that produce them.
//!
//! This module owns the event model and its text forms. It must never touch a store or the clock
//! beyond "now" for an import line without a timestamp: it is pure parsing and validation.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The purpose name that, on an [`EventKind::OptedOut`] event, means "every sale or sharing
/// purpose" (CCPA "Do Not Sell or Share").
pub const ALL_PURPOSES: &str = "*";

/// What a subject did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Gave consent (optionally until `expires_at_ms`).
    Granted,
    /// Took a consent back (GDPR art. 7(3)); also ends a legitimate interest.
    Withdrawn,
    /// Objected to processing based on legitimate interest (GDPR art. 21).
    Objected,
    /// Opted out of sale or sharing (CCPA); with purpose `*`, of all of them.
    OptedOut,
}

impl EventKind {
    /// The name used in files, the database and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Withdrawn => "withdrawn",
            Self::Objected => "objected",
            Self::OptedOut => "opted_out",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of the four event kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind `{0}` (expected granted, withdrawn, objected or opted_out)")]
pub struct UnknownKindError(pub String);

impl FromStr for EventKind {
    type Err = UnknownKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "granted" => Ok(Self::Granted),
            "withdrawn" => Ok(Self::Withdrawn),
            "objected" => Ok(Self::Objected),
            "opted_out" => Ok(Self::OptedOut),
            other => Err(UnknownKindError(other.to_owned())),
        }
    }
}

/// One entry of the record of consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEvent {
    /// The data subject's id, as the CRM names it.
    pub subject: String,
    /// The purpose name, or [`ALL_PURPOSES`] on an opt-out of every sale or sharing purpose.
    pub purpose: String,
    /// What happened.
    pub kind: EventKind,
    /// When it happened (unix milliseconds).
    pub at_ms: i64,
    /// When a grant lapses (unix milliseconds); `None`: it does not.
    pub expires_at_ms: Option<i64>,
    /// The channel it came through: `web_form`, `cli`, `import`, `gpc`, ...
    pub source: Option<String>,
    /// A reference to the proof (form submission id, signed document, ...).
    pub proof: Option<String>,
    /// Who recorded it: an admin token's name (`admin:crm-sync`), `cli:<user>`, or the actor
    /// of the original record when an export is imported.
    pub actor: Option<String>,
    /// When the store recorded it (unix milliseconds). `None` on a new event: the store sets
    /// it; an import of an export keeps the original.
    pub recorded_at_ms: Option<i64>,
}

/// An event that must not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventError {
    /// The subject id is empty.
    #[error("the subject is empty")]
    EmptySubject,
    /// The purpose is empty.
    #[error("the purpose is empty")]
    EmptyPurpose,
    /// `*` is only meaningful for an opt-out.
    #[error("purpose `*` is only allowed on an opted_out event, not on {0}")]
    AllPurposesNotOptOut(EventKind),
    /// An expiry only makes sense on a grant.
    #[error("expires_at is only allowed on a granted event, not on {0}")]
    ExpiryNotOnGrant(EventKind),
    /// The event says it happened (or was recorded) later than now: it would stay the latest
    /// event and hide every later withdrawal or objection until that time.
    #[error(
        "{0} is more than {skew} minutes in the future: events are recorded when they happen (check the sender's clock and time zone)",
        skew = MAX_CLOCK_SKEW_MS / 60_000
    )]
    InTheFuture(&'static str),
}

/// How far an event's time may be ahead of this gateway's clock (clock skew between the systems
/// that collect consent and the gateway).
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;

impl InvalidEventError {
    /// The field at fault, by its name in the import formats and the admin API.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptySubject => "subject",
            Self::EmptyPurpose | Self::AllPurposesNotOptOut(_) => "purpose",
            Self::ExpiryNotOnGrant(_) => "expires_at",
            Self::InTheFuture(field) => field,
        }
    }
}

impl ConsentEvent {
    /// Checks what the store relies on: non-empty ids, `*` only on opt-outs, expiry only on
    /// grants, and no time later than now (give or take [`MAX_CLOCK_SKEW_MS`]).
    pub fn validate(&self) -> Result<(), InvalidEventError> {
        if self.subject.is_empty() {
            return Err(InvalidEventError::EmptySubject);
        }
        if self.purpose.is_empty() {
            return Err(InvalidEventError::EmptyPurpose);
        }
        if self.purpose == ALL_PURPOSES && self.kind != EventKind::OptedOut {
            return Err(InvalidEventError::AllPurposesNotOptOut(self.kind));
        }
        if self.expires_at_ms.is_some() && self.kind != EventKind::Granted {
            return Err(InvalidEventError::ExpiryNotOnGrant(self.kind));
        }
        // FAIL-CLOSED: the latest event decides, so one dated ahead would outlive every
        // withdrawal recorded before its time comes.
        let latest_allowed = now_ms().saturating_add(MAX_CLOCK_SKEW_MS);
        if self.at_ms > latest_allowed {
            return Err(InvalidEventError::InTheFuture("at"));
        }
        if self.recorded_at_ms.is_some_and(|r| r > latest_allowed) {
            return Err(InvalidEventError::InTheFuture("recorded_at"));
        }
        Ok(())
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    unix_ms(OffsetDateTime::now_utc())
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    // INVARIANT: OffsetDateTime spans years -9999..=9999, well inside i64 milliseconds.
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Parses an RFC 3339 timestamp into unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(unix_ms)
        .map_err(|e| format!("`{text}` is not an RFC 3339 timestamp: {e}"))
}

/// Formats unix milliseconds as RFC 3339 (UTC); out of range values print as a number.
pub fn format_rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A line of an import file that cannot be read. `line` counts from 1; for a CSV record that
/// spans lines (a quoted newline), it is the line where the record starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number in the file.
    pub line: usize,
    /// The field at fault (a column name), when one is; `None` for the shape of the line
    /// (a JSON syntax error, a CSV record with too few fields, ...).
    pub field: Option<String>,
    /// What is wrong, for a person to read.
    pub reason: String,
}

impl ParseError {
    fn new(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            field: None,
            reason: reason.into(),
        }
    }

    fn in_field(line: usize, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            line,
            field: Some(field.into()),
            reason: reason.into(),
        }
    }
}

/// The field a JSON deserialisation error is about: the path to where it happened, completed
/// by the name serde's message gives for an unknown, missing or duplicate field (`events[2]`
/// and "unknown field `colour`" make `events[2].colour`). `None`: the error is about the
/// document as a whole (a syntax error at the top, say).
pub fn json_error_field(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    json_field_at(&path.to_string(), message)
}

fn json_field_at(path: &str, message: &str) -> Option<String> {
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| {
            let rest = message.strip_prefix(prefix)?;
            rest.split_once('`').map(|(name, _)| name)
        });
    let path = if path == "." { "" } else { path };
    // An unknown key is already the last segment of the path; a missing one is not.
    let named = named.filter(|name| path != *name && !path.ends_with(&format!(".{name}")));
    match (path.is_empty(), named) {
        (true, None) => None,
        (true, Some(name)) => Some(name.to_owned()),
        (false, None) => Some(path.to_owned()),
        (false, Some(name)) => Some(format!("{path}.{name}")),
    }
}

/// The columns of the CSV format, in the order of the documented header.
pub const CSV_HEADER: [&str; 9] = [
    "subject",
    "purpose",
    "kind",
    "at",
    "expires_at",
    "source",
    "proof",
    "actor",
    "recorded_at",
];

/// What an import records for lines that leave a field empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportDefaults<'a> {
    /// The channel, for lines without `source` (`import`, say).
    pub source: Option<&'a str>,
    /// Who is importing, for lines without `actor`.
    pub actor: Option<&'a str>,
}

/// One event as a JSON object with the import column names (RFC 3339 times), the form of a
/// JSON lines export and of the admin API: a JSON lines export imports back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRecord<'a> {
    /// The data subject's id.
    pub subject: &'a str,
    /// The purpose, or `*`.
    pub purpose: &'a str,
    /// `granted`, `withdrawn`, `objected` or `opted_out`.
    pub kind: &'static str,
    /// When it happened.
    pub at: String,
    /// When a grant lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    /// The proof reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<&'a str>,
    /// Who recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a str>,
    /// When the store recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
}

impl ConsentEvent {
    /// The event in its exported form.
    pub fn record(&self) -> EventRecord<'_> {
        EventRecord {
            subject: &self.subject,
            purpose: &self.purpose,
            kind: self.kind.as_str(),
            at: format_rfc3339_ms(self.at_ms),
            expires_at: self.expires_at_ms.map(format_rfc3339_ms),
            source: self.source.as_deref(),
            proof: self.proof.as_deref(),
            actor: self.actor.as_deref(),
            recorded_at: self.recorded_at_ms.map(format_rfc3339_ms),
        }
    }

    /// The event as one JSON lines line (with its newline).
    pub fn to_json_line(&self) -> String {
        let mut line = serde_json::to_string(&self.record()).unwrap_or_default();
        line.push('\n');
        line
    }

    /// The event as one CSV record in [`CSV_HEADER`] order (with its CRLF); fields that need
    /// it are quoted.
    pub fn to_csv_line(&self) -> String {
        let r = self.record();
        let fields: [Option<&str>; CSV_HEADER.len()] = [
            Some(r.subject),
            Some(r.purpose),
            Some(r.kind),
            Some(&r.at),
            r.expires_at.as_deref(),
            r.source,
            r.proof,
            r.actor,
            r.recorded_at.as_deref(),
        ];
        let mut line = String::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let f = f.unwrap_or("");
            if f.contains([',', '"', '\n', '\r']) || f.starts_with(' ') || f.ends_with(' ') {
                line.push('"');
                line.push_str(&f.replace('"', "\"\""));
                line.push('"');
            } else {
                line.push_str(f);
            }
        }
        line.push_str("\r\n");
        line
    }
}

/// The CSV header line of an export (with its CRLF).
pub fn csv_header_line() -> String {
    let mut line = CSV_HEADER.join(",");
    line.push_str("\r\n");
    line
}

/// The fields shared by both formats, before conversion into a [`ConsentEvent`].
struct Fields<'a> {
    subject: Option<&'a str>,
    purpose: Option<&'a str>,
    kind: Option<&'a str>,
    at: Option<&'a str>,
    expires_at: Option<&'a str>,
    source: Option<&'a str>,
    proof: Option<&'a str>,
    actor: Option<&'a str>,
    recorded_at: Option<&'a str>,
}

/// Empty text counts as absent.
fn present(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

impl Fields<'_> {
    /// Empty text counts as absent. `defaults` apply when a line names no source or actor.
    fn into_event(
        self,
        line: usize,
        now_ms: i64,
        defaults: &ImportDefaults<'_>,
    ) -> Result<ConsentEvent, ParseError> {
        let missing =
            |field: &str| ParseError::in_field(line, field, format!("`{field}` is missing"));
        let subject = present(self.subject).ok_or_else(|| missing("subject"))?;
        let purpose = present(self.purpose).ok_or_else(|| missing("purpose"))?;
        let kind = present(self.kind)
            .ok_or_else(|| missing("kind"))?
            .parse::<EventKind>()
            .map_err(|e| ParseError::in_field(line, "kind", e.to_string()))?;
        let time = |field: &'static str, text: Option<&str>| {
            present(text)
                .map(parse_rfc3339_ms)
                .transpose()
                .map_err(|e| ParseError::in_field(line, field, format!("{field}: {e}")))
        };
        let at_ms = time("at", self.at)?.unwrap_or(now_ms);
        let expires_at_ms = time("expires_at", self.expires_at)?;
        let recorded_at_ms = time("recorded_at", self.recorded_at)?;
        let event = ConsentEvent {
            subject: subject.to_owned(),
            purpose: purpose.to_owned(),
            kind,
            at_ms,
            expires_at_ms,
            source: present(self.source).or(defaults.source).map(str::to_owned),
            proof: present(self.proof).map(str::to_owned),
            actor: present(self.actor).or(defaults.actor).map(str::to_owned),
            recorded_at_ms,
        };
        event
            .validate()
            .map_err(|e| ParseError::in_field(line, e.field(), e.to_string()))?;
        Ok(event)
    }
}

/// Parses a CSV import: a header line naming the columns of [`CSV_HEADER`] (in any order;
/// `subject`, `purpose` and `kind` are required), then one event per record. Fields may be
/// quoted (`"a, ""b"""`); quoted fields may span lines. Empty `at` means `now_ms`. Blank lines
/// are skipped. Any bad record fails the whole file, naming its line.
pub fn parse_csv(
    text: &str,
    now_ms: i64,
    defaults: &ImportDefaults<'_>,
) -> Result<Vec<ConsentEvent>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = CsvRecords::new(text);
    let (header_line, header) = loop {
        match records.next_record()? {
            None => return Err(ParseError::new(1, "the header line is missing")),
            Some((_, fields)) if is_blank(&fields) => continue,
            Some(r) => break r,
        }
    };
    // Column index of each known field.
    let mut columns: [Option<usize>; CSV_HEADER.len()] = [None; CSV_HEADER.len()];
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        let Some(k) = CSV_HEADER.iter().position(|h| *h == name) else {
            return Err(ParseError::in_field(
                header_line,
                name,
                format!(
                    "unknown column `{name}` in the header (expected {})",
                    CSV_HEADER.join(",")
                ),
            ));
        };
        let slot = columns
            .get_mut(k)
            .ok_or_else(|| ParseError::new(header_line, "bad header"))?;
        if slot.is_some() {
            return Err(ParseError::in_field(
                header_line,
                name,
                format!("column `{name}` appears twice in the header"),
            ));
        }
        *slot = Some(i);
    }
    for required in ["subject", "purpose", "kind"] {
        let k = CSV_HEADER.iter().position(|h| *h == required);
        if k.and_then(|k| columns.get(k).copied().flatten()).is_none() {
            return Err(ParseError::in_field(
                header_line,
                required,
                format!("the header has no `{required}` column"),
            ));
        }
    }
    let mut events = Vec::new();
    while let Some((line, fields)) = records.next_record()? {
        if is_blank(&fields) {
            continue;
        }
        if fields.len() != header.len() {
            return Err(ParseError::new(
                line,
                format!(
                    "{} fields where the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let get = |k: usize| {
            columns
                .get(k)
                .copied()
                .flatten()
                .and_then(|i| fields.get(i))
                .map(String::as_str)
        };
        let f = Fields {
            subject: get(0),
            purpose: get(1),
            kind: get(2),
            at: get(3),
            expires_at: get(4),
            source: get(5),
            proof: get(6),
            actor: get(7),
            recorded_at: get(8),
        };
        events.push(f.into_event(line, now_ms, defaults)?);
    }
    Ok(events)
}

fn is_blank(fields: &[String]) -> bool {
    matches!(fields, [only] if only.trim().is_empty())
}

/// A small RFC 4180 reader: `,` separates, `"` quotes, `""` inside quotes is a quote, CRLF or
/// LF ends a record outside quotes.
struct CsvRecords<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    /// Line number of the next character.
    line: usize,
}

impl<'a> CsvRecords<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            chars: text.chars().peekable(),
            line: 1,
        }
    }

    /// The next record and the line it starts on; `None` at the end of the text.
    fn next_record(&mut self) -> Result<Option<(usize, Vec<String>)>, ParseError> {
        if self.chars.peek().is_none() {
            return Ok(None);
        }
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = String::new();
        // Whether the current field began with a quote, and whether we are inside it.
        let mut quoted = false;
        let mut in_quotes = false;
        let mut after_quote = false;
        loop {
            let Some(c) = self.chars.next() else {
                if in_quotes {
                    return Err(ParseError::new(start, "a quoted field is not closed"));
                }
                fields.push(field);
                return Ok(Some((start, fields)));
            };
            if c == '\n' {
                self.line += 1;
            }
            if in_quotes {
                if c == '"' {
                    if self.chars.peek() == Some(&'"') {
                        self.chars.next();
                        field.push('"');
                    } else {
                        in_quotes = false;
                        after_quote = true;
                    }
                } else {
                    field.push(c);
                }
                continue;
            }
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted = false;
                    after_quote = false;
                }
                '\r' if self.chars.peek() == Some(&'\n') => {}
                '\n' => {
                    fields.push(field);
                    return Ok(Some((start, fields)));
                }
                '"' if !quoted && field.is_empty() => {
                    quoted = true;
                    in_quotes = true;
                }
                _ if after_quote => {
                    return Err(ParseError::new(
                        self.line,
                        "text after the closing quote of a field",
                    ));
                }
                '"' => {
                    return Err(ParseError::new(
                        self.line,
                        "a quote inside an unquoted field (quote the whole field and double it)",
                    ));
                }
                _ => field.push(c),
            }
        }
    }
}

/// One line of the JSON lines format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    subject: String,
    purpose: String,
    kind: String,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    proof: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    recorded_at: Option<String>,
}

/// Parses JSON lines: one object per line with the CSV column names as keys (`at` optional:
/// `now_ms`). Blank lines are skipped. Any bad line fails the whole file, naming its line.
pub fn parse_json_lines(
    text: &str,
    now_ms: i64,
    defaults: &ImportDefaults<'_>,
) -> Result<Vec<ConsentEvent>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut events = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        let j: JsonLine = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let reason = e.inner().to_string();
            // A syntax error is about the line, not about the field it happened in.
            let data = e.inner().classify() == serde_json::error::Category::Data;
            match json_error_field(e.path(), &reason).filter(|_| data) {
                Some(field) => ParseError::in_field(line, field, reason),
                None => ParseError::new(line, reason),
            }
        })?;
        de.end().map_err(|e| ParseError::new(line, e.to_string()))?;
        let f = Fields {
            subject: Some(&j.subject),
            purpose: Some(&j.purpose),
            kind: Some(&j.kind),
            at: j.at.as_deref(),
            expires_at: j.expires_at.as_deref(),
            source: j.source.as_deref(),
            proof: j.proof.as_deref(),
            actor: j.actor.as_deref(),
            recorded_at: j.recorded_at.as_deref(),
        };
        events.push(f.into_event(line, now_ms, defaults)?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const IMPORT: ImportDefaults<'static> = ImportDefaults {
        source: Some("import"),
        actor: None,
    };

    #[test]
    fn an_export_imports_back_unchanged_in_both_formats() {
        let events = vec![
            ConsentEvent {
                subject: "a,\"b\"".into(),
                purpose: "ads".into(),
                kind: EventKind::Granted,
                at_ms: NOW,
                expires_at_ms: Some(NOW + 86_400_000),
                source: Some(" web form ".into()),
                proof: Some("line1\nline2".into()),
                actor: Some("admin:sync".into()),
                recorded_at_ms: Some(NOW + 5),
            },
            ConsentEvent {
                subject: "7".into(),
                purpose: ALL_PURPOSES.into(),
                kind: EventKind::OptedOut,
                at_ms: NOW - 1000,
                expires_at_ms: None,
                source: Some("gpc".into()),
                proof: None,
                actor: None,
                recorded_at_ms: None,
            },
        ];
        let mut csv = csv_header_line();
        let mut jsonl = String::new();
        for e in &events {
            csv.push_str(&e.to_csv_line());
            jsonl.push_str(&e.to_json_line());
        }
        let defaults = ImportDefaults::default();
        assert_eq!(parse_csv(&csv, 0, &defaults).unwrap(), events);
        assert_eq!(parse_json_lines(&jsonl, 0, &defaults).unwrap(), events);
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EventKind::Granted,
            EventKind::Withdrawn,
            EventKind::Objected,
            EventKind::OptedOut,
        ] {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        }
        assert!("opted-out".parse::<EventKind>().is_err());
    }

    #[test]
    fn csv_with_quotes_commas_and_newlines() {
        let text = "subject,purpose,kind,at,expires_at,source,proof\r\n\
                    42,marketing,granted,2024-01-02T03:04:05Z,2025-01-01T00:00:00Z,web_form,\"form 7, \"\"v2\"\"\"\r\n\
                    \r\n\
                    \"a,b\",*,opted_out,,,,\"multi\nline\"\n";
        let events = parse_csv(text, NOW, &IMPORT).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].subject, "42");
        assert_eq!(events[0].at_ms, 1_704_164_645_000);
        assert_eq!(events[0].expires_at_ms, Some(1_735_689_600_000));
        assert_eq!(events[0].source.as_deref(), Some("web_form"));
        assert_eq!(events[0].proof.as_deref(), Some("form 7, \"v2\""));
        assert_eq!(events[1].subject, "a,b");
        assert_eq!(events[1].kind, EventKind::OptedOut);
        assert_eq!(events[1].at_ms, NOW);
        assert_eq!(events[1].source.as_deref(), Some("import"));
        assert_eq!(events[1].proof.as_deref(), Some("multi\nline"));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let cases = [
            ("", 1, "header"),
            ("subject,purpose,kind,colour\n", 1, "unknown column"),
            ("subject,purpose\n", 1, "no `kind`"),
            (
                "subject,purpose,kind\n1,m,granted\n2,m,maybe\n",
                3,
                "unknown event kind",
            ),
            ("subject,purpose,kind\n1,m\n", 2, "2 fields"),
            (
                "subject,purpose,kind,at\n1,m,granted,yesterday\n",
                2,
                "RFC 3339",
            ),
            (
                "subject,purpose,kind\n1,m,granted\n\"2,m,granted\n",
                3,
                "not closed",
            ),
            ("subject,purpose,kind\n1,m,gra\"nted\n", 2, "quote"),
            ("subject,purpose,kind\n1,*,granted\n", 2, "`*`"),
            ("subject,purpose,kind\n,m,granted\n", 2, "subject"),
        ];
        for (text, line, needle) in cases {
            let err = parse_csv(text, NOW, &ImportDefaults::default()).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.reason.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn json_lines() {
        let text = "{\"subject\":\"1\",\"purpose\":\"ads\",\"kind\":\"granted\",\"expires_at\":\"2030-01-01T00:00:00Z\",\"proof\":\"p1\"}\n\
                    \n\
                    {\"subject\":\"2\",\"purpose\":\"*\",\"kind\":\"opted_out\",\"at\":\"2024-01-01T00:00:00+01:00\",\"source\":\"gpc\"}\n";
        let events = parse_json_lines(text, NOW, &IMPORT).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].at_ms, NOW);
        assert_eq!(events[0].source.as_deref(), Some("import"));
        assert_eq!(events[0].proof.as_deref(), Some("p1"));
        assert_eq!(events[1].at_ms, 1_704_063_600_000);
        assert_eq!(events[1].source.as_deref(), Some("gpc"));
    }

    #[test]
    fn json_lines_errors_name_the_line() {
        let text = "{\"subject\":\"1\",\"purpose\":\"ads\",\"kind\":\"granted\"}\n\
                    {\"subject\":\"1\",\"purpose\":\"ads\",\"kind\":\"granted\",\"extra\":1}\n";
        assert_eq!(
            parse_json_lines(text, NOW, &ImportDefaults::default())
                .unwrap_err()
                .line,
            2
        );
        let text = "\n\n{\"subject\":\"1\",\"purpose\":\"ads\",\"kind\":\"withdrawn\",\"expires_at\":\"2030-01-01T00:00:00Z\"}\n";
        let err = parse_json_lines(text, NOW, &ImportDefaults::default()).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("expires_at"));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |text: &str| {
            let e = parse_json_lines(text, NOW, &ImportDefaults::default()).unwrap_err();
            (e.line, e.field)
        };
        let f = |s: &str| Some(s.to_owned());
        assert_eq!(
            field("{\"subject\":\"1\",\"purpose\":\"a\",\"kind\":\"granted\",\"colour\":1}"),
            (1, f("colour"))
        );
        assert_eq!(
            field("\n{\"subject\":\"1\",\"kind\":\"granted\"}"),
            (2, f("purpose"))
        );
        assert_eq!(
            field("{\"subject\":\"1\",\"purpose\":\"a\",\"kind\":\"granted\",\"at\":5}"),
            (1, f("at"))
        );
        assert_eq!(
            field(
                "{\"subject\":\"1\",\"purpose\":\"a\",\"kind\":\"granted\",\"kind\":\"granted\"}"
            ),
            (1, f("kind"))
        );
        assert_eq!(
            field("{\"subject\":\"1\",\"purpose\":\"a\",\"kind\":\"maybe\"}"),
            (1, f("kind"))
        );
        assert_eq!(
            field("{\"subject\":\"1\",\"purpose\":\"*\",\"kind\":\"granted\"}"),
            (1, f("purpose"))
        );
        assert_eq!(
            field("{\"subject\":\"1\",\"purpose\":\"a\",\"kind\":\"granted\",\"at\":\"noon\"}"),
            (1, f("at"))
        );
        assert_eq!(field("{\"subject\":"), (1, None));
        assert_eq!(
            field("{\"subject\":\"1\",\"purpose\":\"a\",\"kind\":\"granted\"} x"),
            (1, None)
        );
        let csv = parse_csv(
            "subject,purpose,kind,expires_at\n1,a,withdrawn,2030-01-01T00:00:00Z\n",
            NOW,
            &ImportDefaults::default(),
        )
        .unwrap_err();
        assert_eq!((csv.line, csv.field), (2, f("expires_at")));
        let csv = parse_csv(
            "subject,purpose,kind\n1,a\n",
            NOW,
            &ImportDefaults::default(),
        )
        .unwrap_err();
        assert_eq!((csv.line, csv.field), (2, None));
    }

    #[test]
    fn rfc3339_round_trip() {
        let ms = parse_rfc3339_ms("2024-01-02T03:04:05.123Z").unwrap();
        assert_eq!(format_rfc3339_ms(ms), "2024-01-02T03:04:05.123Z");
    }
}
