//! The admin API's handlers and [`table`], the one list of routes: the router is built from
//! it, and the OpenAPI drift tests check the document against it.
//!
//! Each route's method and path come from its `#[utoipa::path]` attribute, so the router
//! cannot serve a path the document spells differently. Every handler goes through
//! [`ConsentRecords`](crate::consent::requests::ConsentRecords), as the CLI does; none touches a
//! store directly, and none logs a subject id.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{ExtensionRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::handler::Handler;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use utoipa::openapi::path::HttpMethod;

use crate::consent::event::{ImportDefaults, now_ms};
use crate::consent::requests::{ConsentRecords, EXPORT_PAGE, Format};
use crate::consent::store::{ExportedEvent, StoreError};

use super::Admin;
use super::auth::Actor;
use super::model::{
    EraseQuery, ErasureView, EventBatch, EventInput, EventView, EventsRequest, ExportQuery, Health,
    History, ImportQuery, Imported, PurposeDecision, PurposeStatus, Recorded, SubjectConsent,
    SubjectExportView,
};
use super::problem::{Problem, ProblemBody, json_problem};

/// The rate-limit key of requests that present no valid token (names cannot hold a NUL).
const ANONYMOUS: &str = "\0anonymous";

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the admin listener (health, the OpenAPI document).
    Public,
    /// A configured admin token.
    Token,
}

/// One route of the admin API.
pub struct Route {
    /// The methods, as its `#[utoipa::path]` declares them.
    pub methods: Vec<Method>,
    /// The path template (`/v1/subjects/{id}/consent`), as its `#[utoipa::path]` declares it.
    pub path: String,
    /// The operation id (the handler's name), for logs.
    pub operation: Arc<str>,
    /// Who may call it.
    pub access: Access,
    /// The handler, for those methods.
    pub handler: MethodRouter<Admin>,
}

/// Every route of the admin API.
pub fn table() -> Vec<Route> {
    vec![
        route::<__path_record_events, _, _>(Access::Token, record_events),
        route::<__path_subject_consent, _, _>(Access::Token, subject_consent),
        route::<__path_subject_history, _, _>(Access::Token, subject_history),
        route::<__path_import_events, _, _>(Access::Token, import_events),
        route::<__path_export_events, _, _>(Access::Token, export_events),
        route::<__path_export_subject, _, _>(Access::Token, export_subject),
        route::<__path_erase_subject, _, _>(Access::Token, erase_subject),
        route::<__path_openapi_document, _, _>(Access::Public, openapi_document),
        route::<__path_health, _, _>(Access::Public, health),
    ]
}

fn route<P, H, T>(access: Access, handler: H) -> Route
where
    P: utoipa::Path,
    H: Handler<T, Admin>,
    T: 'static,
{
    let methods: Vec<(Method, MethodFilter)> = P::methods().into_iter().map(method).collect();
    let handler = methods
        .iter()
        .fold(MethodRouter::new(), |router, (_, filter)| {
            router.on(*filter, handler.clone())
        });
    Route {
        methods: methods.into_iter().map(|(m, _)| m).collect(),
        path: P::path(),
        operation: P::operation()
            .operation_id
            .unwrap_or_else(|| P::path())
            .into(),
        access,
        handler,
    }
}

fn method(m: HttpMethod) -> (Method, MethodFilter) {
    match m {
        HttpMethod::Get => (Method::GET, MethodFilter::GET),
        HttpMethod::Post => (Method::POST, MethodFilter::POST),
        HttpMethod::Put => (Method::PUT, MethodFilter::PUT),
        HttpMethod::Delete => (Method::DELETE, MethodFilter::DELETE),
        HttpMethod::Options => (Method::OPTIONS, MethodFilter::OPTIONS),
        HttpMethod::Head => (Method::HEAD, MethodFilter::HEAD),
        HttpMethod::Patch => (Method::PATCH, MethodFilter::PATCH),
        HttpMethod::Trace => (Method::TRACE, MethodFilter::TRACE),
    }
}

/// Runs around every route: authenticates (for [`Access::Token`]), applies the token's rate
/// limit, and writes one log line (operation, actor, status; never a subject id or a token).
pub async fn guard(
    admin: Admin,
    operation: Arc<str>,
    access: Access,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let actor = match access {
        Access::Public => None,
        Access::Token => {
            let Some(actor) = admin.inner.tokens.identify(req.headers()) else {
                // Failed attempts share one bucket: guessing is slowed, holders are not.
                if let Err(retry_after) = admin.inner.limiter.check(ANONYMOUS, Instant::now()) {
                    return Problem::RateLimited { retry_after }.into_response();
                }
                tracing::info!(
                    target: "consentry::admin",
                    operation = &*operation,
                    status = 401,
                    "admin request without a valid token"
                );
                return Problem::Unauthorized.into_response();
            };
            if let Err(retry_after) = admin.inner.limiter.check(&actor.token, Instant::now()) {
                return Problem::RateLimited { retry_after }.into_response();
            }
            req.extensions_mut().insert(actor.clone());
            Some(actor)
        }
    };
    let rsp = next.run(req).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match actor {
        Some(actor) => tracing::info!(
            target: "consentry::admin",
            operation = &*operation,
            actor = %actor.recorded_as(),
            status = rsp.status().as_u16(),
            ms,
            "admin request"
        ),
        None => tracing::debug!(
            target: "consentry::admin",
            operation = &*operation,
            status = rsp.status().as_u16(),
            ms,
            "admin request"
        ),
    }
    rsp
}

/// The actor the guard put on the request; a route without one is a wiring mistake.
fn actor_of(ext: Result<Extension<Actor>, ExtensionRejection>) -> Result<Actor, Problem> {
    ext.map(|Extension(a)| a).map_err(|_| Problem::Internal)
}

/// The whole body, at most `admin.max_body_bytes`.
async fn read_body(admin: &Admin, headers: &HeaderMap, body: Body) -> Result<Bytes, Problem> {
    let limit = admin.inner.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Problem::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|e| {
            let over = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over {
                Problem::BodyTooLarge { limit }
            } else {
                Problem::InvalidBody {
                    detail: "the request body broke off".to_owned(),
                }
            }
        })
}

/// A JSON body as `T`, with problems that name the field.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| json_problem(&e))?;
    de.end().map_err(|e| Problem::MalformedJson {
        detail: e.to_string(),
    })?;
    Ok(value)
}

/// The subject id of the path (percent-decoded).
fn subject_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    match path {
        Ok(Path(id)) if !id.is_empty() => Ok(id),
        Ok(_) => Err(Problem::invalid("id", "the subject id is empty")),
        Err(e) => Err(Problem::invalid("id", e.body_text())),
    }
}

/// The query parameters as `T`, with problems that name the parameter: the decoded pairs
/// become a JSON object of strings (a parameter given twice is refused), which `T` is read
/// from.
fn query<T: serde::de::DeserializeOwned>(
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<T, Problem> {
    let Query(pairs) = pairs.map_err(|e| Problem::invalid("query", e.body_text()))?;
    let mut object = serde_json::Map::new();
    for (name, value) in pairs {
        if object.contains_key(&name) {
            return Err(Problem::invalid(
                name.clone(),
                format!("the parameter `{name}` is given twice"),
            ));
        }
        object.insert(name, serde_json::Value::String(value));
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(object))
        .map_err(|e| json_problem(&e))
}

/// Record consent events.
///
/// One event object, or `{"events": [...]}` for several; all are recorded in one
/// transaction, or none. Each event is recorded with the token's name as actor
/// (`admin:<name>`) and applies to the very next proxied request.
#[utoipa::path(
    post,
    path = "/v1/consent/events",
    tag = "consent",
    request_body(content = EventsRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded, in the order sent", body = Recorded),
        (status = 400, description = "Bad input; `field` names it (`events[1].kind`); nothing was recorded", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over `admin.max_body_bytes`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable; nothing was recorded", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn record_events(
    State(admin): State<Admin>,
    ext: Result<Extension<Actor>, ExtensionRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Recorded>), Problem> {
    let actor = actor_of(ext)?;
    let bytes = read_body(&admin, &headers, body).await?;
    // Which form it is: a first, lenient look. The real parse below rejects duplicate keys.
    let shape: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Problem::MalformedJson {
            detail: e.to_string(),
        })?;
    let inputs: Vec<(String, EventInput)> = match &shape {
        serde_json::Value::Object(o) if o.contains_key("events") => {
            let batch: EventBatch = parse_json(&bytes)?;
            if batch.events.is_empty() {
                return Err(Problem::invalid("events", "at least one event is needed"));
            }
            batch
                .events
                .into_iter()
                .enumerate()
                .map(|(i, e)| (format!("events[{i}]."), e))
                .collect()
        }
        serde_json::Value::Object(_) => vec![(String::new(), parse_json::<EventInput>(&bytes)?)],
        _ => {
            return Err(Problem::InvalidBody {
                detail: "the body must be an event object or {\"events\": [...]}".to_owned(),
            });
        }
    };
    let now = now_ms();
    let events = inputs
        .into_iter()
        .map(|(prefix, e)| e.into_event(now, &prefix))
        .collect::<Result<Vec<_>, _>>()?;
    let recorded = admin.records().record(events, &actor.recorded_as()).await?;
    Ok((
        StatusCode::CREATED,
        Json(Recorded {
            recorded: recorded.iter().map(EventView::from).collect(),
        }),
    ))
}

/// A subject's current consent state.
///
/// Per purpose the subject has said something about, the latest event and what it means now
/// (`granted`, `expired`, `withdrawn`, `objected`, `opted_out`); and for each purpose of the
/// running policy, the decision the gateway would take now for a request without a Global
/// Privacy Control signal.
#[utoipa::path(
    get,
    path = "/v1/subjects/{id}/consent",
    tag = "subjects",
    params(("id" = String, Path, description = "The subject id, percent-encoded")),
    responses(
        (status = 200, description = "The current state", body = SubjectConsent),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn subject_consent(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubjectConsent>, Problem> {
    let subject = subject_id(path)?;
    let now = now_ms();
    let records = admin.records();
    let purposes = records.state(&subject, now).await?;
    let policy = admin.inner.gateway.policy.load_full();
    let decisions = records.decisions(&subject, &policy.purposes).await;
    Ok(Json(SubjectConsent {
        evaluated_at: crate::consent::event::format_rfc3339_ms(now),
        purposes: purposes.iter().map(PurposeStatus::from).collect(),
        decisions: policy
            .purposes
            .iter()
            .zip(decisions)
            .map(|(p, d)| PurposeDecision::new(p, d))
            .collect(),
        subject,
    }))
}

/// A subject's history: every event, oldest first, with who recorded it and when.
#[utoipa::path(
    get,
    path = "/v1/subjects/{id}/history",
    tag = "subjects",
    params(("id" = String, Path, description = "The subject id, percent-encoded")),
    responses(
        (status = 200, description = "Every event, oldest first", body = History),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn subject_history(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<History>, Problem> {
    let subject = subject_id(path)?;
    let events = admin.records().history(&subject).await?;
    Ok(Json(History {
        subject,
        events: events.iter().map(EventView::from).collect(),
    }))
}

/// Import events in bulk, all or nothing.
///
/// The body is CSV with a header line (`text/csv`) or JSON lines (`application/x-ndjson` or
/// `application/jsonl`), or the format given by `?format=`. The columns are those of the
/// export; `at` defaults to now, lines without `actor` get the token's (`admin:<name>`), so an
/// export imports back unchanged. One bad line rejects the whole import with its line number
/// and field, and nothing is written.
#[utoipa::path(
    post,
    path = "/v1/consent/import",
    tag = "consent",
    params(ImportQuery),
    request_body(
        content(
            (String = "text/csv"),
            (String = "application/x-ndjson"),
            (String = "application/jsonl"),
        ),
        description = "CSV (header: subject,purpose,kind,at,expires_at,source,proof,actor,recorded_at; subject, purpose and kind required) or JSON lines with the same names"
    ),
    responses(
        (status = 200, description = "Every line was recorded, in one transaction", body = Imported),
        (status = 400, description = "A bad line; `line` and `field` name it; nothing was written", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over `admin.max_body_bytes`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Neither Content-Type nor `format` tells the format", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable; nothing was written", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn import_events(
    State(admin): State<Admin>,
    ext: Result<Extension<Actor>, ExtensionRejection>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Imported>, Problem> {
    let actor = actor_of(ext)?;
    let q: ImportQuery = query(q)?;
    let format = q
        .format
        .map(Format::from)
        .or_else(|| format_of(&headers))
        .ok_or(Problem::UnsupportedMediaType)?;
    let bytes = read_body(&admin, &headers, body).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Problem::InvalidEncoding)?;
    let recorded_as = actor.recorded_as();
    let defaults = ImportDefaults {
        source: q.source.as_deref().filter(|s| !s.is_empty()),
        actor: Some(&recorded_as),
    };
    let imported = admin.records().import(text, format, &defaults).await?;
    Ok(Json(Imported { imported }))
}

/// The import format a Content-Type names.
fn format_of(headers: &HeaderMap) -> Option<Format> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        "text/csv" => Some(Format::Csv),
        "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
            Some(Format::Jsonl)
        }
        _ => None,
    }
}

/// Export every event.
///
/// Streams the whole record of consent, in the order it was recorded, page by page (memory
/// stays bounded by a page). The output imports back unchanged through
/// `POST /v1/consent/import`. If the store fails midway, the transfer is aborted rather than
/// ended short.
#[utoipa::path(
    get,
    path = "/v1/consent/export",
    tag = "consent",
    params(ExportQuery),
    responses(
        (status = 200, description = "Every event", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        )),
        (status = 400, description = "An unknown format or parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn export_events(
    State(admin): State<Admin>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    let q: ExportQuery = query(q)?;
    let format = q.format.map_or(Format::Jsonl, Format::from);
    let records = admin.records().clone();
    // The first page before the head: a store that is down gets a 503, not a broken 200.
    let first = records.export_page(0, EXPORT_PAGE).await?;
    let pages = Pages {
        records,
        format,
        prefix: format.header(),
        next: Some(first),
        after: 0,
        done: false,
    };
    let stream = futures_util::stream::try_unfold(pages, Pages::next);
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Jsonl => "application/x-ndjson",
    };
    let mut rsp = Body::from_stream(stream).into_response();
    let headers = rsp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(rsp)
}

/// The state of a streamed export.
struct Pages {
    records: ConsentRecords,
    format: Format,
    /// Text to send before the first events (the CSV header).
    prefix: String,
    /// A page fetched ahead.
    next: Option<Vec<ExportedEvent>>,
    /// The sequence of the last event sent.
    after: i64,
    done: bool,
}

impl Pages {
    /// The next chunk: the prefix and one page. Ends after an empty page (not a short one: a
    /// store may cap the page size below what was asked).
    async fn next(mut self) -> Result<Option<(Bytes, Self)>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = match self.next.take() {
            Some(page) => page,
            None => self
                .records
                .export_page(self.after, EXPORT_PAGE)
                .await
                .inspect_err(|error| {
                    tracing::warn!(
                        target: "consentry::admin",
                        %error,
                        "consent export aborted: the store failed midway"
                    );
                })?,
        };
        let mut out = std::mem::take(&mut self.prefix);
        match page.last() {
            None => self.done = true,
            Some(last) => self.after = last.seq,
        }
        for e in &page {
            out.push_str(&self.format.line(&e.event));
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some((Bytes::from(out), self)))
    }
}

/// Everything held about a subject (a data subject access request).
///
/// The subject's consent events, and the records of earlier erasures of the same subject id
/// (found by its keyed pseudonym; they hold no id).
#[utoipa::path(
    get,
    path = "/v1/subjects/{id}/export",
    tag = "subjects",
    params(("id" = String, Path, description = "The subject id, percent-encoded")),
    responses(
        (status = 200, description = "Everything held", body = SubjectExportView),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn export_subject(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubjectExportView>, Problem> {
    let subject = subject_id(path)?;
    let export = admin.records().export_subject(&subject).await?;
    Ok(Json(SubjectExportView::from(&export)))
}

/// Erase a subject (right to erasure).
///
/// Removes every consent event of the subject in one transaction and keeps a record of the
/// erasure under a keyed pseudonym of the id (never the id). The gateway's cache forgets the
/// subject: from the next request on it has no consent (records are omitted or refused).
#[utoipa::path(
    delete,
    path = "/v1/subjects/{id}",
    tag = "subjects",
    params(("id" = String, Path, description = "The subject id, percent-encoded"), EraseQuery),
    responses(
        (status = 200, description = "Erased; the record kept", body = ErasureView),
        (status = 401, description = "No valid admin token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of the token; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The consent store is unavailable; nothing was erased", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin_token" = []))
)]
pub async fn erase_subject(
    State(admin): State<Admin>,
    ext: Result<Extension<Actor>, ExtensionRejection>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<ErasureView>, Problem> {
    let actor = actor_of(ext)?;
    let subject = subject_id(path)?;
    let q: EraseQuery = query(q)?;
    let record = admin
        .records()
        .erase(
            &subject,
            &actor.recorded_as(),
            q.request_ref.as_deref().filter(|r| !r.is_empty()),
        )
        .await?;
    Ok(Json(ErasureView::from(&record)))
}

/// This document.
///
/// Served without a token: it describes the API, holds no data, and is in the repository
/// anyway (`docs/openapi.json`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_document(State(admin): State<Admin>) -> Response {
    let mut rsp = admin.inner.openapi.to_string().into_response();
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

/// Whether the consent store answers.
///
/// Served without a token, for probes: it tells only whether the store is reachable.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The store answers", body = Health),
        (status = 503, description = "The store does not answer", body = Health),
    ),
)]
pub async fn health(State(admin): State<Admin>) -> (StatusCode, Json<Health>) {
    if admin.records().store_reachable().await {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok".to_owned(),
                store: "reachable".to_owned(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable".to_owned(),
                store: "unreachable".to_owned(),
            }),
        )
    }
}
