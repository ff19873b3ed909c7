//! Protecting a response on a protected route: status, type and coding checks, then the body
//! through the streaming redactor with consent decided batch by batch.
//!
//! Nothing of the upstream body reaches the client unexamined. Small bodies are redacted whole
//! before the response head goes out, so any failure is a clean error response; a body larger
//! than [`HOLD_BYTES`] streams, and a failure after the head aborts the transfer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::Gateway;
use super::body::{self, Body, BoxError, ChannelBody, Coding, Decoded};
use super::refusal::Refusal;
use super::request::strip_hop_by_hop;
use crate::consent::decide::Consent;
use crate::policy::compiled::{CompiledPolicy, PurposeId};
use crate::redact::{Counts, Limits, RedactError, Redactor};

/// Output held back before the response head is sent.
pub const HOLD_BYTES: usize = 64 * 1024;

/// Headers that describe the upstream's body, not the redacted one.
const BODY_HEADERS: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-type",
    "content-md5",
    "content-range",
    "content-digest",
    "repr-digest",
    "digest",
    "want-digest",
    "etag",
    "last-modified",
    "accept-ranges",
    "cache-control",
    "expires",
    "vary",
];

/// Everything the body task needs to know about the request.
pub struct Protected {
    pub policy: Arc<CompiledPolicy>,
    pub route_index: usize,
    pub purpose_id: PurposeId,
    pub path_subject: Option<String>,
    pub gpc: bool,
    pub head: bool,
    pub caller: Box<str>,
}

/// What the body task reports before the response head goes out.
enum Head {
    /// The whole redacted body (empty for HEAD) and its length.
    Complete(Bytes, u64),
    /// The redacted body, streaming through the channel.
    Streaming(ChannelBody),
}

/// Checks an upstream response and redacts its body.
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
        return Err(Refusal::UpstreamStatus(status));
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
    let decoded = Decoded::new(incoming, coding);
    let (head_tx, head_rx) = oneshot::channel();
    let head = req.head;
    tokio::spawn(redact_body(gw, req, decoded, head_tx));
    match head_rx.await {
        Ok(Ok(Head::Complete(bytes, len))) => {
            let body = if head {
                body::empty()
            } else {
                body::full(bytes)
            };
            Ok(finish_head(parts, body, Some(len)))
        }
        Ok(Ok(Head::Streaming(rest))) => Ok(finish_head(
            parts,
            http_body_util::BodyExt::boxed(rest),
            None,
        )),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => Err(Refusal::Internal),
    }
}

/// The response head for a redacted body: the upstream's end-to-end headers, minus those
/// that describe the original body, plus the gateway's caching rules.
fn finish_head(mut parts: http::response::Parts, body: Body, len: Option<u64>) -> Response<Body> {
    strip_hop_by_hop(&mut parts.headers);
    for name in BODY_HEADERS {
        parts.headers.remove(*name);
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
        RedactError::Protocol => Refusal::Internal,
    }
}

/// Where the redacted output goes: held until the head is sent, then streamed.
struct Sink {
    /// Set until the response head is decided.
    head: Option<oneshot::Sender<Result<Head, Refusal>>>,
    /// Set once the body streams.
    stream: Option<mpsc::Sender<Result<Bytes, BoxError>>>,
    held: Vec<u8>,
    /// Output examined and discarded (HEAD): counted for the Content-Length GET would have.
    discarded: u64,
}

impl Sink {
    /// Sends what is held once it is large enough to stream. Returns false when the client is
    /// gone.
    async fn flush_if_large(&mut self) -> bool {
        if self.held.len() < HOLD_BYTES {
            return true;
        }
        if let Some(head) = self.head.take() {
            let (tx, rest) = ChannelBody::new(2);
            if head.send(Ok(Head::Streaming(rest))).is_err() {
                return false;
            }
            self.stream = Some(tx);
        }
        match &self.stream {
            Some(tx) => tx
                .send(Ok(Bytes::from(std::mem::take(&mut self.held))))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// The body is complete: sends it whole, or its last part.
    async fn complete(&mut self) {
        let bytes = Bytes::from(std::mem::take(&mut self.held));
        if let Some(head) = self.head.take() {
            let len = self.discarded + bytes.len() as u64;
            let _ = head.send(Ok(Head::Complete(bytes, len)));
        } else if let Some(tx) = &self.stream
            && !bytes.is_empty()
        {
            let _ = tx.send(Ok(bytes)).await;
        }
    }

    /// The body failed: a refusal before the head, an aborted transfer after it.
    async fn fail(&mut self, refusal: Refusal) {
        if let Some(head) = self.head.take() {
            let _ = head.send(Err(refusal));
        } else if let Some(tx) = &self.stream {
            // FAIL-CLOSED: the client must see a broken transfer, never a complete body.
            let _ = tx.send(Err(Box::new(refusal))).await;
        }
    }
}

/// The body task: reads, decodes, redacts with consent decided per batch, and sends.
async fn redact_body(
    gw: Arc<Gateway>,
    req: Protected,
    mut decoded: Decoded,
    head_tx: oneshot::Sender<Result<Head, Refusal>>,
) {
    let started = Instant::now();
    let policy = req.policy.clone();
    let mut sink = Sink {
        head: Some(head_tx),
        stream: None,
        held: Vec::new(),
        discarded: 0,
    };
    let route = policy.routes.get(req.route_index);
    let view = route.and_then(|r| r.views.get(usize::from(req.purpose_id))?.as_deref());
    let purpose = policy.purposes.get(usize::from(req.purpose_id));
    let (Some(route), Some(view), Some(purpose)) = (route, view, purpose) else {
        sink.fail(Refusal::Internal).await;
        return;
    };
    let limits = Limits {
        max_record_bytes: gw.limits.max_record_bytes,
        max_depth: gw.limits.max_depth,
        batch: 128,
    };
    let mut redactor = Redactor::new(
        &route.records,
        &route.subject,
        route.without_basis,
        view,
        req.path_subject.as_deref(),
        limits,
    );
    let result = pump(&gw, &req, purpose, &mut decoded, &mut redactor, &mut sink).await;
    let outcome = match (&result, sink.head.is_some()) {
        (Ok(()), _) => "redacted",
        (Err(_), true) => "refused",
        (Err(_), false) => "aborted",
    };
    decision_line(
        &req,
        route.name.as_ref(),
        purpose.name.as_ref(),
        redactor.counts(),
        &result,
        outcome,
        started,
    );
    match result {
        Ok(()) => sink.complete().await,
        Err(refusal) => sink.fail(refusal).await,
    }
}

/// Moves the body from the upstream through the redactor to the sink.
async fn pump(
    gw: &Gateway,
    req: &Protected,
    purpose: &crate::policy::compiled::Purpose,
    decoded: &mut Decoded,
    redactor: &mut Redactor<'_>,
    sink: &mut Sink,
) -> Result<(), Refusal> {
    let deadline = tokio::time::Instant::now() + gw.total_timeout;
    let mut read: u64 = 0;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, decoded.next_chunk()).await {
            Err(_) => return Err(Refusal::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream body broke off");
                return Err(Refusal::UpstreamUnreadable("the upstream body broke off"));
            }
            Ok(Ok(chunk)) => chunk,
        };
        match &chunk {
            Some(bytes) => {
                read += bytes.len() as u64;
                if read > gw.limits.max_body_bytes {
                    return Err(Refusal::BodyTooLarge);
                }
                redactor.push(bytes).map_err(|e| refusal_of(&e))?;
            }
            None => redactor.finish().map_err(|e| refusal_of(&e))?,
        }
        while redactor.has_pending() {
            let subjects: Vec<&str> = redactor.pending_subjects().collect();
            let decisions = gw.consent.decide_batch(purpose, &subjects, req.gpc).await;
            // FAIL-CLOSED: only Granted is a lawful basis; Denied and Unknown are not.
            let lawful: Vec<bool> = decisions
                .iter()
                .map(|c| matches!(c, Consent::Granted))
                .collect();
            redactor.resolve(&lawful).map_err(|e| refusal_of(&e))?;
        }
        if req.head {
            // HEAD: the body is examined for the status and its length, then discarded.
            sink.discarded += redactor.take_output().len() as u64;
        } else {
            redactor.drain_output_into(&mut sink.held);
        }
        if chunk.is_none() {
            if !redactor.is_complete() {
                return Err(Refusal::UpstreamUnreadable("the upstream body ended early"));
            }
            return Ok(());
        }
        if !sink.flush_if_large().await {
            // The client went away; nothing more to do.
            return Ok(());
        }
    }
}

fn decision_line(
    req: &Protected,
    route: &str,
    purpose: &str,
    counts: Counts,
    result: &Result<(), Refusal>,
    outcome: &str,
    started: Instant,
) {
    let (status, reason) = match result {
        Ok(()) => (200, "-"),
        Err(r) => (r.status().as_u16(), r.reason()),
    };
    tracing::info!(
        target: "consentry::decision",
        caller = &*req.caller,
        purpose,
        route,
        status,
        outcome,
        reason,
        kept = counts.kept,
        reduced = counts.reduced,
        omitted = counts.omitted,
        elapsed_us = started.elapsed().as_micros() as u64,
    );
}
