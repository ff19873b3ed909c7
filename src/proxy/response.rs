//! Protecting a response on a protected route: status, type and coding checks, then the body
//! through the streaming redactor with consent decided batch by batch.
//!
//! Nothing of the upstream body reaches the client unexamined. Small bodies are redacted whole
//! before the response head goes out, so any failure is a clean error response; a body larger
//! than [`HOLD_BYTES`] streams, and a failure after the head aborts the transfer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::Gateway;
use super::body::{self, Body, BoxError, ChannelBody, Coding, Decoded};
use super::refusal::Refusal;
use crate::consent::decide::Consent;
use crate::policy::compiled::{CompiledPolicy, PurposeId};
use crate::redact::links::{Links, Public};
use crate::redact::{Limits, RedactError, Redactor, spare};

/// Output held back before the response head is sent.
pub const HOLD_BYTES: usize = 32 * 1024;

/// The only upstream headers a protected response passes on. Anything else the upstream sends
/// in its head (a Location, Link or cookie naming a subject, a debug header) is not examined, so
/// it is not passed; headers describing the original body are recomputed.
static PASSED_HEADERS: [HeaderName; 7] = [
    header::DATE,
    header::RETRY_AFTER,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("request-id"),
    HeaderName::from_static("x-correlation-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Everything the body task needs to know about the request.
pub struct Protected {
    pub policy: Arc<CompiledPolicy>,
    pub route_index: usize,
    pub purpose_id: PurposeId,
    pub path_subject: Option<String>,
    pub gpc: bool,
    pub head: bool,
    pub caller: Arc<str>,
    /// The host the client addressed, for links that name the gateway (without `public_url`).
    pub public_host: Option<HeaderValue>,
    /// The end of the whole exchange with the upstream (`timeouts.total_ms`).
    pub deadline: tokio::time::Instant,
}

/// Checks an upstream response and redacts its body: inline until the body is complete or
/// [`HOLD_BYTES`] of output are ready, then (for large bodies) in a task of its own.
pub async fn protect(
    gw: Arc<Gateway>,
    rsp: Response<Incoming>,
    req: Protected,
) -> Result<Response<Body>, Refusal> {
    let status = rsp.status();
    if status == StatusCode::NO_CONTENT || status == StatusCode::RESET_CONTENT {
        return Ok(finish_head(rsp.into_parts().0, body::empty(), Some(0)));
    }
    // 206 is a part of a body and 304 refers to one the client is assumed to hold: neither can
    // be examined as a whole. Redirects and errors are not passed on with their bodies.
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        // An error keeps its status, and with it what a client needs to act on it: when to
        // retry a 429 or 503, and the ids to report it by. Nothing else of its head.
        let passed = if status.is_client_error() || status.is_server_error() {
            passed_fields(rsp.headers())
        } else {
            Vec::new()
        };
        return Err(Refusal::UpstreamStatus(status, passed));
    }
    let headers = rsp.headers();
    if !is_json(headers) {
        return Err(Refusal::UpstreamUnreadable("the upstream body is not JSON"));
    }
    let mut codings = headers.get_all(header::CONTENT_ENCODING).iter();
    let coding = match (codings.next(), codings.next()) {
        (None, _) => Coding::Identity,
        (Some(v), None) => Coding::parse(v.as_bytes()).ok_or(Refusal::UpstreamUnreadable(
            "the upstream body has an unknown content coding",
        ))?,
        (Some(_), Some(_)) => {
            return Err(Refusal::UpstreamUnreadable(
                "the upstream body has stacked content codings",
            ));
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if coding == Coding::Identity && declared.is_some_and(|len| len > gw.limits.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }
    let (parts, incoming) = rsp.into_parts();
    let mut job = BodyJob::new(&gw, req, Decoded::new(incoming, coding))?;
    match job.fill(&gw).await {
        // The caller writes the decision line of a refusal.
        Err(refusal) => Err(refusal),
        Ok(true) => {
            job.decision_line(Ok(()), "redacted");
            let len = job.discarded + job.held.len() as u64;
            let body = if job.req.head {
                body::empty()
            } else {
                body::full(spare::into_bytes(std::mem::take(&mut job.held)))
            };
            Ok(finish_head(parts, body, Some(len)))
        }
        Ok(false) => {
            let (tx, rest) = ChannelBody::new(1);
            tokio::spawn(job.stream(gw, tx));
            Ok(finish_head(
                parts,
                http_body_util::BodyExt::boxed(rest),
                None,
            ))
        }
    }
}

/// The response head for a redacted body: the few upstream headers in [`PASSED_HEADERS`], plus
/// the gateway's content type, length and caching rules.
fn finish_head(mut parts: http::response::Parts, body: Body, len: Option<u64>) -> Response<Body> {
    let upstream = std::mem::replace(&mut parts.headers, HeaderMap::with_capacity(8));
    for (name, value) in passed(&upstream) {
        parts.headers.append(name.clone(), value.clone());
    }
    let h = &mut parts.headers;
    if parts.status != StatusCode::NO_CONTENT && parts.status != StatusCode::RESET_CONTENT {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    // One purpose's view must never be served to another by a shared cache.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("X-Api-Key, X-Purpose, Authorization, Sec-GPC"),
    );
    Response::from_parts(parts, body)
}

/// The upstream's fields named in [`PASSED_HEADERS`], in their order. The fields are looked
/// over once: a lookup by name hashes the name, and most of the passed names are absent.
fn passed(upstream: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    upstream
        .iter()
        .filter(|(name, _)| PASSED_HEADERS.contains(name))
}

/// [`passed`], kept for an error response.
pub(super) fn passed_fields(upstream: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    passed(upstream)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Links from the upstream's base URL to the origin the client reached the gateway at:
/// `public_url`, or `http://` and the request's host when that is a plain host and port.
fn links(gw: &Gateway, host: Option<&HeaderValue>) -> Option<Links> {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']');
    let public = match (&gw.public_url, host) {
        (Some(url), _) => Public::Origin(Arc::clone(url)),
        (None, Some(host)) if !host.is_empty() && host.as_bytes().iter().all(plain) => {
            Public::Host(host.clone())
        }
        _ => return None,
    };
    Some(Links::new(Arc::clone(&gw.upstream.bases), public))
}

/// `application/json` or `application/*+json`, in UTF-8.
fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut params = text.split(';');
    let essence = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let utf8 = params.all(|p| {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        !name.trim().eq_ignore_ascii_case("charset")
            || value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    });
    json && utf8
}

fn refusal_of(e: &RedactError) -> Refusal {
    match e {
        RedactError::NoLawfulBasis => Refusal::NoLawfulBasis,
        RedactError::SubjectMismatch => Refusal::SubjectMismatch,
        RedactError::NoSubject => {
            Refusal::UpstreamUnreadable("a record has no readable subject id")
        }
        RedactError::Unreadable(crate::redact::frame::FrameError::ValueTooLarge) => {
            Refusal::BodyTooLarge
        }
        RedactError::Unreadable(_) => {
            Refusal::UpstreamUnreadable("the upstream body is not valid JSON of the declared shape")
        }
        RedactError::TooManyRecords => Refusal::BodyTooLarge,
        RedactError::Protocol => Refusal::Internal,
    }
}

/// One protected body on its way through the redactor.
struct BodyJob {
    req: Protected,
    redactor: Redactor,
    decoded: Decoded,
    /// Redacted output not sent yet.
    held: Vec<u8>,
    /// Output examined and discarded (HEAD): counted for the Content-Length GET would have.
    discarded: u64,
    /// Decoded upstream bytes so far.
    read: u64,
    deadline: tokio::time::Instant,
    started: Instant,
}

impl BodyJob {
    fn new(gw: &Gateway, req: Protected, decoded: Decoded) -> Result<Self, Refusal> {
        let route = req
            .policy
            .routes
            .get(req.route_index)
            .ok_or(Refusal::Internal)?;
        let view = route
            .views
            .get(usize::from(req.purpose_id))
            .and_then(Option::clone)
            .ok_or(Refusal::Internal)?;
        let limits = Limits {
            max_record_bytes: gw.limits.max_record_bytes,
            max_depth: gw.limits.max_depth,
            batch: 128,
            max_records: gw.limits.max_records,
        };
        let redactor = Redactor::new(
            &route.records,
            &route.subject,
            route.without_basis,
            view,
            req.path_subject.as_deref(),
            limits,
        )
        // A single record has no envelope, so nothing of it is a link to rewrite.
        .with_links(
            matches!(route.records, crate::policy::compiled::RecordsAt::List(_))
                .then(|| links(gw, req.public_host.as_ref()))
                .flatten(),
        );
        Ok(Self {
            deadline: req.deadline,
            req,
            redactor,
            decoded,
            held: Vec::new(),
            discarded: 0,
            read: 0,
            started: Instant::now(),
        })
    }

    /// Reads and redacts until the body is complete (`true`) or, unless this is a HEAD
    /// request, [`HOLD_BYTES`] of output are held (`false`).
    async fn fill(&mut self, gw: &Gateway) -> Result<bool, Refusal> {
        loop {
            let chunk =
                match tokio::time::timeout_at(self.deadline, self.decoded.next_chunk()).await {
                    Err(_) => return Err(Refusal::UpstreamTimeout),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "upstream body broke off");
                        return Err(Refusal::UpstreamUnreadable("the upstream body broke off"));
                    }
                    Ok(Ok(chunk)) => chunk,
                };
            let last = chunk.is_none();
            match chunk {
                Some(bytes) => {
                    self.read += bytes.len() as u64;
                    if self.read > gw.limits.max_body_bytes {
                        return Err(Refusal::BodyTooLarge);
                    }
                    self.redactor
                        .push_bytes(bytes)
                        .map_err(|e| refusal_of(&e))?;
                }
                None => self.redactor.finish().map_err(|e| refusal_of(&e))?,
            }
            while self.redactor.has_pending() {
                let purpose = self
                    .req
                    .policy
                    .purposes
                    .get(usize::from(self.req.purpose_id))
                    .ok_or(Refusal::Internal)?;
                let subjects: Vec<&str> = self.redactor.pending_subjects().collect();
                let decisions = gw
                    .consent
                    .decide_batch(purpose, &subjects, self.req.gpc)
                    .await;
                // FAIL-CLOSED: only Granted is a lawful basis; Denied and Unknown are not.
                let lawful: Vec<bool> = decisions
                    .iter()
                    .map(|c| matches!(c, Consent::Granted))
                    .collect();
                self.redactor.resolve(&lawful).map_err(|e| refusal_of(&e))?;
            }
            if self.req.head {
                // HEAD: the body is examined for the status and its length, then discarded.
                let discarded = self.redactor.take_output();
                self.discarded += discarded.len() as u64;
                spare::give(discarded);
            } else {
                self.redactor.drain_output_into(&mut self.held);
            }
            if last {
                if !self.redactor.is_complete() {
                    return Err(Refusal::UpstreamUnreadable("the upstream body ended early"));
                }
                return Ok(true);
            }
            if !self.req.head && self.held.len() >= HOLD_BYTES {
                return Ok(false);
            }
        }
    }

    /// Streams the rest of a large body after its head went out. A failure now aborts the
    /// transfer, so the client sees a broken body, never a complete-looking one.
    async fn stream(mut self, gw: Arc<Gateway>, tx: mpsc::Sender<Result<Bytes, BoxError>>) {
        loop {
            let first = spare::into_bytes(std::mem::take(&mut self.held));
            if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
                // The client went away.
                self.decision_line(Ok(()), "client_gone");
                return;
            }
            match self.fill(&gw).await {
                Ok(false) => continue,
                Ok(true) => {
                    let last = spare::into_bytes(std::mem::take(&mut self.held));
                    if !last.is_empty() {
                        let _ = tx.send(Ok(last)).await;
                    }
                    self.decision_line(Ok(()), "redacted");
                    return;
                }
                Err(refusal) => {
                    self.decision_line(Err(&refusal), "aborted");
                    // FAIL-CLOSED: an error item aborts the response.
                    let _ = tx.send(Err(Box::new(refusal))).await;
                    return;
                }
            }
        }
    }

    fn decision_line(&self, result: Result<(), &Refusal>, outcome: &str) {
        let (status, reason) = match result {
            Ok(()) => (200, "-"),
            Err(r) => (r.status().as_u16(), r.reason()),
        };
        let route = self
            .req
            .policy
            .routes
            .get(self.req.route_index)
            .map_or("-", |r| &*r.name);
        let purpose = self
            .req
            .policy
            .purposes
            .get(usize::from(self.req.purpose_id))
            .map_or("-", |p| &*p.name);
        let counts = self.redactor.counts();
        tracing::info!(
            target: "consentry::decision",
            caller = &*self.req.caller,
            purpose,
            route,
            status,
            outcome,
            reason,
            kept = counts.kept,
            reduced = counts.reduced,
            omitted = counts.omitted,
            elapsed_us = self.started.elapsed().as_micros() as u64,
        );
    }
}
