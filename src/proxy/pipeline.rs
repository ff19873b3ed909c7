//! THE request path, top to bottom: normalise, identify, resolve the purpose, match the route,
//! forward, protect the response. Its caller turns a [`Refusal`] into a response and writes
//! the decision line, once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::Limited;
use hyper::body::Incoming;

use super::Gateway;
use super::body::{self, Body};
use super::path;
use super::refusal::Refusal;
use super::request;
use super::response::{self, Protected};
use crate::identity;
use crate::policy::matcher::Matched;

/// The Global Privacy Control signal (parsed once: a lookup by a string parses it each time).
static SEC_GPC: http::HeaderName = http::HeaderName::from_static("sec-gpc");

/// What the decision line says about one request.
#[derive(Debug, Default)]
pub struct Decision {
    pub caller: Option<Arc<str>>,
    pub purpose: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
}

/// Handles one client request; never fails: refusals become problem+json responses.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let mut decision = Decision::default();
    match process(&gw, req, client, &mut decision).await {
        Ok(Outcome::Passthrough(rsp)) => {
            tracing::info!(
                target: "consentry::decision",
                method = %method,
                status = rsp.status().as_u16(),
                outcome = "passthrough",
                elapsed_us = started.elapsed().as_micros() as u64,
            );
            rsp
        }
        // The protected path writes its own decision line once the body is done.
        Ok(Outcome::Protected(rsp)) => rsp,
        Err(refusal) => {
            tracing::info!(
                target: "consentry::decision",
                method = %method,
                caller = decision.caller.as_deref().unwrap_or("-"),
                purpose = decision.purpose.as_deref().unwrap_or("-"),
                route = decision.route.as_deref().unwrap_or("-"),
                status = refusal.status().as_u16(),
                outcome = "refused",
                reason = refusal.reason(),
                elapsed_us = started.elapsed().as_micros() as u64,
            );
            let mut rsp = refusal.into_response();
            if method == Method::HEAD {
                // A response to HEAD has no content (RFC 9110 §9.3.2): HTTP/2 clients reset a
                // stream that carries some. The length stays the one GET would have.
                let len = refusal.problem_json().len();
                rsp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                *rsp.body_mut() = body::empty();
            }
            rsp
        }
    }
}

enum Outcome {
    Passthrough(Response<Body>),
    Protected(Response<Body>),
}

async fn process(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    client: SocketAddr,
    decision: &mut Decision,
) -> Result<Outcome, Refusal> {
    // The HTTP/1 reader cannot be set below 8 KiB: a smaller configured limit is enforced here,
    // on the request target and the header fields.
    let target = req.uri().path_and_query().map_or(0, |t| t.as_str().len());
    if target + header_bytes(req.headers()) > gw.limits.max_header_bytes
        // HTTP/1 stops at the count while parsing; HTTP/2 header lists are counted here.
        || req.headers().len() > gw.limits.max_headers
    {
        return Err(Refusal::HeadersTooLarge);
    }
    // `timeouts.total_ms` bounds the whole exchange with the upstream, from here on.
    let deadline = tokio::time::Instant::now() + gw.total_timeout;
    let policy = gw.policy.load_full();
    let original_host = host_of(&req)?;
    let normal = path::normalise(req.uri().path()).map_err(|e| Refusal::BadPath(e.to_string()))?;

    let matched = policy.match_path(req.method(), &normal.segments);
    if let Matched::Passthrough = matched {
        let rsp = forward(
            gw,
            req,
            &normal.text,
            client,
            original_host,
            false,
            deadline,
        )
        .await?;
        let (mut parts, incoming) = rsp.into_parts();
        request::strip_hop_by_hop(&mut parts.headers);
        return Ok(Outcome::Passthrough(Response::from_parts(
            parts,
            body::passthrough(incoming),
        )));
    }

    let caller = identity::identify(req.headers(), &policy)?;
    decision.caller = Some(caller.name.clone());
    let (purpose_id, purpose) = identity::resolve_purpose(req.headers(), caller, &policy)?;
    decision.purpose = Some(purpose.name.clone());
    let Matched::Route(route_index, route, params) = matched else {
        return Err(Refusal::RouteNotCovered);
    };
    decision.route = Some(route.name.clone());
    let head = req.method() == Method::HEAD;
    let effective = if head { &Method::GET } else { req.method() };
    if !route.methods.contains(effective) {
        return Err(Refusal::MethodNotAllowed);
    }
    if route
        .views
        .get(usize::from(purpose_id))
        .and_then(Option::as_ref)
        .is_none()
    {
        return Err(Refusal::PurposeNotCovered(purpose.name.to_string()));
    }
    let path_subject = match &route.subject {
        crate::policy::compiled::SubjectAt::Param(i)
        | crate::policy::compiled::SubjectAt::ParamAndField(i, _) => {
            Some(params.get(*i).ok_or(Refusal::Internal)?.to_string())
        }
        crate::policy::compiled::SubjectAt::Field(_) => None,
    };
    // FAIL-CLOSED: a `1` anywhere (a second field line, a comma-joined list) is a signal; the
    // spec allows one field line, but a signal must not be hidden behind a `0`.
    let gpc = req.headers().get_all(&SEC_GPC).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii() == b"1")
    });
    if content_length(req.headers()).is_some_and(|len| len > gw.limits.max_request_body_bytes) {
        return Err(Refusal::RequestTooLarge);
    }

    let mut req = req;
    if head {
        *req.method_mut() = Method::GET;
    }
    let public_host = original_host.clone();
    let rsp = forward(gw, req, &normal.text, client, original_host, true, deadline).await?;
    let protected = Protected {
        public_host,
        deadline,
        policy: policy.clone(),
        route_index,
        purpose_id,
        path_subject,
        gpc,
        head,
        caller: caller.name.clone(),
    };
    response::protect(gw.clone(), rsp, protected)
        .await
        .map(Outcome::Protected)
}

/// Sends the request upstream with the normalised path.
async fn forward(
    gw: &Gateway,
    req: Request<Incoming>,
    path: &str,
    client: SocketAddr,
    original_host: Option<HeaderValue>,
    protected: bool,
    deadline: tokio::time::Instant,
) -> Result<Response<Incoming>, Refusal> {
    let (parts, incoming) = req.into_parts();
    let uri = gw.upstream.uri_for(path, parts.uri.query())?;
    let headers = request::upstream_headers(
        parts.headers,
        client,
        original_host,
        &gw.upstream.host,
        protected,
    );
    let limit = usize::try_from(gw.limits.max_request_body_bytes).unwrap_or(usize::MAX);
    let mut up = Request::new(Limited::new(incoming, limit));
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;
    tokio::time::timeout_at(deadline, gw.upstream.send(up))
        .await
        .map_err(|_| Refusal::UpstreamTimeout)?
}

/// The host the client addressed. An absolute-form target naming another host than `Host`
/// is refused: the gateway would otherwise judge one request and forward another.
fn host_of(req: &Request<Incoming>) -> Result<Option<HeaderValue>, Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header"));
    }
    match (req.uri().authority(), &host) {
        (Some(authority), Some(h)) if authority.as_str().as_bytes() != h.as_bytes() => {
            Err(Refusal::BadRequest("the request target names another host"))
        }
        (Some(authority), None) => Ok(HeaderValue::from_str(authority.as_str()).ok()),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
        (None, None) if req.version() == http::Version::HTTP_11 => Err(Refusal::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        )),
        _ => Ok(host),
    }
}

/// The size of the header fields as HTTP/1.1 writes them (`name: value` and CRLF each).
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
