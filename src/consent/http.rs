//! The consent store of an external consent-management platform, read over HTTP: one `GET` per
//! subject from a URL template, each answer mapped to a [`ConsentState`] by JSONPaths and a
//! table of the platform's words for granted, withdrawn, objected and opted out.
//!
//! It owns the URL template, the answer mapping (both checked and compiled once, at start-up,
//! from `consent.http`) and the client to the platform. It must never turn an answer it cannot
//! read into a state: a status other than 2xx or 404, a body that is not JSON or repeats a key,
//! a missing path, a value in no list, an answer later than `timeout_ms` are errors for that
//! subject, which the cache treats as `Unknown` (refused). It must never put a subject id in a
//! log line or an error message (the URL carries one), and never write: the platform keeps the
//! record of consent, so recording, history, erasure and export are [`StoreError::Unsupported`].
//!
//! # Plain HTTP
//!
//! The platform is reached over `http://` only: keep it on a private network, or put a local
//! TLS-originating proxy (a sidecar) in front of it. The optional token header is then sent in
//! clear on that network.
//!
//! # A 404 is "nothing recorded"
//!
//! The platform holds nothing for the subject and purpose: the state is empty, as for a subject
//! the embedded store has never heard of (no consent; a legitimate interest holds).
//!
//! # Opt-outs of every sale or sharing purpose (`*`)
//!
//! `opt_out_all` names a JSONPath in the same answer whose value must be a boolean: `true` means
//! the subject opted out of every sale or sharing purpose. The platform's answer is its current
//! state, so such an opt-out counts as later than any grant in the same answer: no per-purpose
//! grant overrides it (a platform that lets one do so must clear its flag). Without
//! `opt_out_all`, only the per-purpose status can stop a sale or sharing purpose.
//!
//! # Staleness
//!
//! The platform cannot tell the gateway about changes ([`ConsentStore::changes`] is `None`), so
//! a withdrawal made on the platform is honoured once the cached state expires: the cache TTL
//! (`consent.cache_ttl_ms`) bounds how stale a decision can be.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonpath_rust::parser::model::{Segment, Selector};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use crate::config::HttpStoreConfig;

use super::event::{ConsentEvent, EventKind, parse_rfc3339_ms};
use super::store::{
    ConsentState, ConsentStore, ErasureRecord, EventOrder, ExportedEvent, LatestEvent, StoreError,
    StoreFuture,
};

/// Largest answer read from the platform for one subject.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// What is left as it is when a subject or purpose is put into the URL: RFC 3986 unreserved
/// characters. Everything else (`/`, `?`, `#`, `%`, space, non-ASCII...) is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The order given to the platform's opt-out of everything: its answer is its current state, so
/// that opt-out is later than any grant in the same answer.
const CURRENT: EventOrder = EventOrder {
    at_ms: i64::MAX,
    seq: i64::MAX,
};

/// A setting of `consent.http` that cannot work, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consent.{key}: {message}")]
pub struct HttpConfigError {
    /// The key under `consent`, e.g. `http.status.path`.
    pub key: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

fn config_error(key: &str, message: impl Into<String>) -> HttpConfigError {
    HttpConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A consent store that asks an external platform over HTTP.
pub struct HttpConsentStore {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: UrlTemplate,
    /// The static header (`authorization: Bearer ...`), if configured.
    header: Option<(HeaderName, HeaderValue)>,
    /// Time budget of one request, from sending it to the end of the answer.
    timeout: Duration,
    /// One permit per request in flight to the platform.
    requests: Semaphore,
    answer: AnswerMapping,
}

impl std::fmt::Debug for HttpConsentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConsentStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpConsentStore {
    /// A store for `config`, reading the token from the process environment.
    pub fn new(config: &HttpStoreConfig) -> Result<Self, HttpConfigError> {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// A store for `config`, reading the token through `env` (a variable name to its value).
    /// Checks and compiles every setting; nothing is sent yet.
    pub fn with_env(
        config: &HttpStoreConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, HttpConfigError> {
        let HttpStoreConfig {
            url,
            header,
            token_env,
            timeout_ms,
            max_concurrent,
            status,
            at,
            expires_at,
            opt_out_all,
        } = config;
        let url = UrlTemplate::parse(url)?;
        let header = match (header, token_env) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(config_error(
                    "http.header",
                    "a header needs `token_env`, the environment variable holding its value",
                ));
            }
            (name, Some(var)) => {
                let name = name.as_deref().unwrap_or("authorization");
                let name = HeaderName::from_str(name).map_err(|_| {
                    config_error("http.header", format!("`{name}` is not a header name"))
                })?;
                let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    config_error(
                        "http.token_env",
                        format!("the environment variable `{var}` is not set"),
                    )
                })?;
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    config_error(
                        "http.token_env",
                        format!("`{var}` holds characters a header value cannot carry"),
                    )
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        if *timeout_ms == 0 {
            return Err(config_error("http.timeout_ms", "must be greater than zero"));
        }
        if *max_concurrent == 0 {
            return Err(config_error(
                "http.max_concurrent",
                "must be greater than zero",
            ));
        }
        let answer = AnswerMapping {
            status: JsonPointer::compile("http.status.path", &status.path)?,
            values: status_values(status)?,
            at: at
                .as_deref()
                .map(|p| JsonPointer::compile("http.at", p))
                .transpose()?,
            expires_at: expires_at
                .as_deref()
                .map(|p| JsonPointer::compile("http.expires_at", p))
                .transpose()?,
            opt_out_all: opt_out_all
                .as_deref()
                .map(|p| JsonPointer::compile("http.opt_out_all", p))
                .transpose()?,
        };
        let timeout = Duration::from_millis(*timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            client,
            url,
            header,
            timeout,
            requests: Semaphore::new((*max_concurrent).min(Semaphore::MAX_PERMITS)),
            answer,
        })
    }

    /// Asks about each distinct subject once, concurrently (at most `max_concurrent` requests
    /// in flight), and answers in the order of `subjects`.
    async fn lookup_subjects(
        &self,
        purpose: &str,
        subjects: &[&str],
    ) -> Vec<Result<ConsentState, StoreError>> {
        let mut distinct: Vec<&str> = subjects.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let answers =
            futures_util::future::join_all(distinct.iter().map(|s| self.ask(purpose, s))).await;
        subjects
            .iter()
            .map(
                |s| match distinct.binary_search(s).ok().and_then(|i| answers.get(i)) {
                    Some(Ok(state)) => Ok(*state),
                    Some(Err(e)) => Err(StoreError::Http(e.clone())),
                    None => Err(StoreError::Http("an answer went missing".to_owned())),
                },
            )
            .collect()
    }

    /// One request for one subject. Errors are messages without the subject or the URL.
    async fn ask(&self, purpose: &str, subject: &str) -> Result<ConsentState, String> {
        let uri = self.url.render(subject, purpose)?;
        let mut req = Request::get(uri)
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| "the request cannot be built".to_owned())?;
        if let Some((name, value)) = &self.header {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let _permit = self
            .requests
            .acquire()
            .await
            .map_err(|_| "the store is closed".to_owned())?;
        let exchange = async {
            let rsp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("the request failed: {}", transport_reason(&e)))?;
            let status = rsp.status();
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(format!(
                    "answered {} (expected 2xx, or 404 for nothing recorded)",
                    status.as_u16()
                ));
            }
            let body = Limited::new(rsp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("the answer could not be read: {e}"))?
                .to_bytes();
            Ok(Some(body))
        };
        let body = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(format!("no answer within {} ms", self.timeout.as_millis()));
            }
            Ok(Err(e)) => return Err(e),
            // FAIL-CLOSED: "nothing recorded" is an empty state, which grants only what needs
            // no consent (or a legitimate interest without objection).
            Ok(Ok(None)) => return Ok(ConsentState::default()),
            Ok(Ok(Some(body))) => body,
        };
        let value = parse_strict(&body)?;
        self.answer.read(&value)
    }
}

/// The innermost cause of a client error, which names neither the URL nor the subject.
fn transport_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

impl ConsentStore for HttpConsentStore {
    fn append<'a>(&'a self, _events: &'a [ConsentEvent]) -> StoreFuture<'a, ()> {
        Box::pin(async {
            Err(StoreError::Unsupported(
                "recording consent (the external platform keeps the record)",
            ))
        })
    }

    fn lookup<'a>(
        &'a self,
        purpose: &'a str,
        subjects: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<ConsentState>> {
        Box::pin(async move {
            self.lookup_subjects(purpose, subjects)
                .await
                .into_iter()
                .collect()
        })
    }

    fn lookup_each<'a>(
        &'a self,
        purpose: &'a str,
        subjects: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<Result<ConsentState, StoreError>>> {
        Box::pin(async move { Ok(self.lookup_subjects(purpose, subjects).await) })
    }

    fn history<'a>(&'a self, _subject: &'a str) -> StoreFuture<'a, Vec<ConsentEvent>> {
        Box::pin(async {
            Err(StoreError::Unsupported(
                "reading history (ask the external platform)",
            ))
        })
    }

    fn erase<'a>(
        &'a self,
        _subject: &'a str,
        _record: &'a ErasureRecord,
    ) -> StoreFuture<'a, ErasureRecord> {
        Box::pin(async {
            Err(StoreError::Unsupported(
                "erasure (erase the subject on the external platform)",
            ))
        })
    }

    fn erasures<'a>(&'a self, _subject_pseudonym: &'a str) -> StoreFuture<'a, Vec<ErasureRecord>> {
        Box::pin(async {
            Err(StoreError::Unsupported(
                "erasure records (the external platform keeps them)",
            ))
        })
    }

    fn export_page(&self, _after: i64, _limit: u32) -> StoreFuture<'_, Vec<ExportedEvent>> {
        Box::pin(async {
            Err(StoreError::Unsupported(
                "export (export from the external platform)",
            ))
        })
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        // The platform cannot tell us: the cache TTL bounds staleness.
        None
    }
}

// ------------------------------------------------------------------------------------------
// The URL template.

/// A piece of the URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Subject,
    Purpose,
}

/// `http://host/path?query` with `{subject}` and `{purpose}` in the path or the query.
#[derive(Debug, Clone)]
struct UrlTemplate {
    parts: Vec<Part>,
    /// Bytes of literal text, to size the rendered URL.
    text_len: usize,
}

impl UrlTemplate {
    fn parse(template: &str) -> Result<Self, HttpConfigError> {
        let key = "http.url";
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (None, None) => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                (Some(o), Some(c)) if o < c && !rest[o + 1..c].contains('{') => {
                    if o > 0 {
                        parts.push(Part::Text(rest[..o].to_owned()));
                    }
                    let name = &rest[o + 1..c];
                    parts.push(match name {
                        "subject" => Part::Subject,
                        "purpose" => Part::Purpose,
                        other => {
                            return Err(config_error(
                                key,
                                format!(
                                    "unknown placeholder `{{{other}}}` in `{template}` \
                                     (expected `{{subject}}` or `{{purpose}}`)"
                                ),
                            ));
                        }
                    });
                    rest = &rest[c + 1..];
                }
                _ => {
                    return Err(config_error(
                        key,
                        format!("unbalanced `{{` or `}}` in `{template}`"),
                    ));
                }
            }
        }
        for (part, name) in [(Part::Subject, "subject"), (Part::Purpose, "purpose")] {
            if !parts.contains(&part) {
                return Err(config_error(
                    key,
                    format!(
                        "`{template}` has no `{{{name}}}`: every {name} would get the same answer"
                    ),
                ));
            }
        }
        // The scheme and host must be fixed: placeholders go in the path or the query.
        let Some(Part::Text(head)) = parts.first() else {
            return Err(config_error(
                key,
                format!("`{template}` must start with `http://` and a host"),
            ));
        };
        if head.starts_with("https://") {
            return Err(config_error(
                key,
                format!(
                    "`{template}`: https is not supported; reach the platform over http:// on a \
                     private network or through a local TLS proxy"
                ),
            ));
        }
        let Some(after_scheme) = head.strip_prefix("http://") else {
            return Err(config_error(
                key,
                format!("`{template}` must start with `http://`"),
            ));
        };
        if !after_scheme.contains(['/', '?']) || after_scheme.starts_with(['/', '?']) {
            return Err(config_error(
                key,
                format!(
                    "`{template}`: the placeholders must come after the host, in the path or the query"
                ),
            ));
        }
        if template.contains('#') {
            return Err(config_error(
                key,
                format!("`{template}` has a fragment (`#`), which is never sent"),
            ));
        }
        let text_len = parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Subject | Part::Purpose => 0,
            })
            .sum();
        let url = Self { parts, text_len };
        // What the values cannot break (they are percent-encoded), the text can.
        let sample = url
            .render("subject-1", "purpose-1")
            .map_err(|e| config_error(key, format!("`{template}`: {e}")))?;
        if sample.host().is_none_or(str::is_empty) {
            return Err(config_error(key, format!("`{template}` has no host")));
        }
        Ok(url)
    }

    /// The URL for one subject and purpose, each percent-encoded.
    fn render(&self, subject: &str, purpose: &str) -> Result<Uri, String> {
        for (what, value) in [("subject", subject), ("purpose", purpose)] {
            // A dot segment would climb the path instead of naming a subject.
            if value.is_empty() || value == "." || value == ".." {
                return Err(format!("the {what} id cannot be put in a URL"));
            }
        }
        let mut text = String::with_capacity(self.text_len + 3 * (subject.len() + purpose.len()));
        for part in &self.parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Subject => text.extend(utf8_percent_encode(subject, COMPONENT)),
                Part::Purpose => text.extend(utf8_percent_encode(purpose, COMPONENT)),
            }
        }
        Uri::try_from(text).map_err(|_| "not a valid URL".to_owned())
    }
}

// ------------------------------------------------------------------------------------------
// The answer.

/// How an answer becomes a [`ConsentState`].
#[derive(Debug, Clone)]
struct AnswerMapping {
    status: JsonPointer,
    /// The platform's words, each with the kind it means (`None`: nothing recorded).
    values: Vec<(Value, Option<EventKind>)>,
    at: Option<JsonPointer>,
    expires_at: Option<JsonPointer>,
    opt_out_all: Option<JsonPointer>,
}

/// Checks the status value table: scalars only, each in one list, at least one grant.
fn status_values(
    status: &crate::config::HttpStatusConfig,
) -> Result<Vec<(Value, Option<EventKind>)>, HttpConfigError> {
    let crate::config::HttpStatusConfig {
        path: _,
        granted,
        withdrawn,
        objected,
        opted_out,
        none,
    } = status;
    if granted.is_empty() {
        return Err(config_error(
            "http.status.granted",
            "needs at least one value (the platform's word for a grant)",
        ));
    }
    let lists = [
        ("granted", Some(EventKind::Granted), granted),
        ("withdrawn", Some(EventKind::Withdrawn), withdrawn),
        ("objected", Some(EventKind::Objected), objected),
        ("opted_out", Some(EventKind::OptedOut), opted_out),
        ("none", None, none),
    ];
    let mut values: Vec<(Value, Option<EventKind>, &str)> = Vec::new();
    for (list, kind, words) in lists {
        for word in words {
            if word.is_array() || word.is_object() {
                return Err(config_error(
                    &format!("http.status.{list}"),
                    format!("`{word}` is not a single value (use strings, numbers, booleans)"),
                ));
            }
            if let Some((_, _, other)) = values.iter().find(|(v, _, _)| v == word) {
                return Err(config_error(
                    &format!("http.status.{list}"),
                    format!("`{word}` is also in `status.{other}`: a value must mean one thing"),
                ));
            }
            values.push((word.clone(), kind, list));
        }
    }
    Ok(values.into_iter().map(|(v, k, _)| (v, k)).collect())
}

impl AnswerMapping {
    /// The state an answer describes; an error if any configured path cannot be read.
    fn read(&self, answer: &Value) -> Result<ConsentState, String> {
        let status = self
            .status
            .find(answer)
            .ok_or_else(|| format!("the answer has no status at `{}`", self.status.text))?;
        let kind = self
            .values
            .iter()
            .find(|(word, _)| word == status)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                format!(
                    "the status {} is in no list of `consent.http.status`",
                    describe(status)
                )
            })?;
        let opted_out_all = match &self.opt_out_all {
            None => None,
            Some(path) => match path.find(answer) {
                Some(Value::Bool(true)) => Some(CURRENT),
                Some(Value::Bool(false)) => None,
                Some(other) => {
                    return Err(format!(
                        "`{}` is {}, not a boolean",
                        path.text,
                        describe(other)
                    ));
                }
                None => return Err(format!("the answer has nothing at `{}`", path.text)),
            },
        };
        let Some(kind) = kind else {
            return Ok(ConsentState {
                latest: None,
                opted_out_all,
            });
        };
        let at_ms = match &self.at {
            Some(path) => read_time(path, answer)?,
            None => None,
        };
        let expires_at_ms = match &self.expires_at {
            // Only a grant lapses.
            Some(path) if kind == EventKind::Granted => read_time(path, answer)?,
            _ => None,
        };
        Ok(ConsentState {
            latest: Some(LatestEvent {
                kind,
                order: EventOrder {
                    at_ms: at_ms.unwrap_or(0),
                    seq: 0,
                },
                expires_at_ms,
            }),
            opted_out_all,
        })
    }
}

/// A time in the answer: RFC 3339 text or unix milliseconds; absent or `null`: not given.
fn read_time(path: &JsonPointer, answer: &Value) -> Result<Option<i64>, String> {
    match path.find(answer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => parse_rfc3339_ms(text)
            .map(Some)
            .map_err(|_| format!("`{}` is not an RFC 3339 time", path.text)),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("`{}` is not a whole number of milliseconds", path.text)),
        Some(other) => Err(format!(
            "`{}` is {}, not a time",
            path.text,
            describe(other)
        )),
    }
}

/// A value for an error message: scalars shortened, containers by kind only (they may hold
/// personal data).
fn describe(v: &Value) -> String {
    match v {
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        scalar => {
            let text = scalar.to_string();
            if text.chars().count() > 40 {
                let short: String = text.chars().take(40).collect();
                format!("`{short}...`")
            } else {
                format!("`{text}`")
            }
        }
    }
}

/// One step of a singular JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Name(String),
    /// From the end when negative.
    Index(i64),
}

/// A JSONPath that names at most one value (`$.a.b`, `$['a'][0]`), compiled to its steps.
#[derive(Debug, Clone)]
struct JsonPointer {
    text: String,
    steps: Vec<Step>,
}

impl JsonPointer {
    /// Parses `text` (RFC 9535) once, at start-up; only names and indices are accepted, so
    /// that the path names one value or none.
    fn compile(key: &str, text: &str) -> Result<Self, HttpConfigError> {
        let query = jsonpath_rust::parser::parse_json_path(text).map_err(|e| {
            let (col, reason) = describe_jsonpath_error(&e.to_string());
            let at = col.map(|c| format!(" at column {c}")).unwrap_or_default();
            config_error(
                key,
                format!("`{text}` is not a valid JSONPath{at}: {reason}"),
            )
        })?;
        let not_singular = |what: &str| {
            config_error(
                key,
                format!(
                    "`{text}` uses {what}; it must name one value (names and indices only, \
                     such as `$.consent.status` or `$.items[0].state`)"
                ),
            )
        };
        let mut steps = Vec::with_capacity(query.segments.len());
        for segment in &query.segments {
            let selector = match segment {
                Segment::Selector(s) => s,
                Segment::Selectors(list) => match list.as_slice() {
                    [one] => one,
                    _ => return Err(not_singular("a union")),
                },
                Segment::Descendant(_) => return Err(not_singular("`..`")),
            };
            steps.push(match selector {
                Selector::Name(name) => Step::Name(name.clone()),
                Selector::Index(i) => Step::Index(*i),
                Selector::Wildcard => return Err(not_singular("a wildcard")),
                Selector::Slice(..) => return Err(not_singular("a slice")),
                Selector::Filter(_) => return Err(not_singular("a filter")),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            steps,
        })
    }

    /// The value the path names in `root`, if there is one.
    fn find<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.steps.iter().try_fold(root, |v, step| match step {
            Step::Name(name) => v.as_object()?.get(name),
            Step::Index(i) => {
                let items = v.as_array()?;
                let at = if *i < 0 {
                    items
                        .len()
                        .checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
                } else {
                    usize::try_from(*i).ok()?
                };
                items.get(at)
            }
        })
    }
}

/// The column (counted from the start of the expression) and the reason of a JSONPath syntax
/// error, from the parser's message.
fn describe_jsonpath_error(text: &str) -> (Option<usize>, String) {
    let col = text
        .split_once("--> ")
        .and_then(|(_, rest)| rest.split_once(':'))
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
    let reason = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("= "))
        .unwrap_or("unexpected syntax")
        .to_owned();
    (col, reason)
}

/// Parses an answer as JSON, refusing duplicate keys: `{"status":"granted","status":"withdrawn"}`
/// means nothing certain.
fn parse_strict(body: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de
        .deserialize_any(StrictVisitor)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| format!("the answer cannot be read as JSON: {e}"))?;
    Ok(value)
}

/// A [`Value`] that refuses duplicate keys at any depth.
struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key `{}` appears twice",
                    key.chars().take(40).collect::<String>()
                )));
            }
            let Strict(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests;
