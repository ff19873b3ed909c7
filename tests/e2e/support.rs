//! Builders for the end-to-end tests: a scripted upstream on loopback, a consent platform on
//! loopback, the gateway in-process with a policy and a SQLite data dir in a temp dir (or a
//! PostgreSQL schema: [`postgres`]), and
//! HTTP/1.1, HTTP/2 and raw TCP clients.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use consentry::config::AdminToken;
use consentry::config::{Config, HttpStatusConfig, HttpStoreConfig, StoreKind};
use consentry::consent::event::{ConsentEvent, EventKind, now_ms};
use consentry::lanes::Lanes;
use consentry::proxy::Gateway;
use consentry::proxy::body::{BoxError, ChannelBody};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod postgres;

/// The key of the caller that may declare every purpose of the test policy.
pub const APP_KEY: &str = "e2e-app-key";
/// The key of a caller that may only declare `marketing`.
pub const NEWSLETTER_KEY: &str = "e2e-newsletter-key";
/// The key of the `hash` action in the test policy.
pub const PSEUDONYM_KEY: &[u8] = b"e2e-pseudonym-key";

/// The admin token the test gateways accept (configured by its digest, as `ops`).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// How long any single network wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// The policy and the fixtures.

/// The test policy: purposes on every lawful basis (three of them sale or sharing), two callers, contacts with ordinary and special
/// categories, tickets served to `billing` only.
pub fn policy() -> String {
    let app = hex::encode(Sha256::digest(APP_KEY));
    let newsletter = hex::encode(Sha256::digest(NEWSLETTER_KEY));
    format!(
        r##"
purposes:
  marketing: {{ basis: consent }}
  support: {{ basis: contract }}
  analytics: {{ basis: legitimate_interest }}
  showcase: {{ basis: contract }}
  audit: {{ basis: legal_obligation }}
  billing: {{ basis: contract }}
  care: {{ basis: vital_interest }}
  registry: {{ basis: public_task }}
  ad_sharing: {{ basis: consent, sale_or_sharing: true }}
  partner_offers: {{ basis: legitimate_interest, sale_or_sharing: true }}
  data_sale: {{ basis: contract, sale_or_sharing: true }}

categories:
  user.loyalty: {{}}
  user.loyalty.points: {{}}

callers:
  crm-app:
    api_key: {{ sha256: {app} }}
    purposes: [marketing, support, analytics, showcase, audit, billing, care, registry,
               ad_sharing, partner_offers, data_sale]
  newsletter:
    api_key: {{ sha256: {newsletter} }}
    purposes: [marketing]

pseudonym_key: {{ file: pseudonym.key }}

objects:
  contact:
    subject: $.id
    fields:
      $.id: user.unique_id
      $.properties.firstname: user.name.first
      $.properties.lastname: user.name.last
      $.properties.email: user.contact.email
      $.properties.phone: user.contact.phone_number
      $.properties.city: user.contact.address.city
      $.properties.date_of_birth: user.demographic.date_of_birth
      $.properties.points: user.loyalty.points
      $.properties.health_notes: user.health_and_medical
      $.properties.ethnicity: user.demographic.race_ethnicity
      $.properties.lifecyclestage: system.operations
      $.createdAt: system.operations
      $.updatedAt: system.operations
    rules:
      marketing:
        - {{ paths: [$.id, $.createdAt], action: keep }}
        - {{ category: user.name, action: keep }}
        - {{ category: user.contact.email, action: keep }}
        - {{ path: $.properties.phone, action: mask, last: 4 }}
      support:
        - {{ paths: [$.id, $.properties, $.createdAt, $.updatedAt], action: keep }}
        - {{ category: user.health_and_medical, action: keep, special: true }}
      analytics:
        - {{ path: $.id, action: hash }}
        - {{ path: $.properties.city, action: keep }}
        - {{ path: $.createdAt, action: generalise, to: month }}
      showcase:
        - {{ path: $.id, action: keep }}
        - {{ path: $.properties.firstname, action: keep }}
        - {{ path: $.properties.lastname, action: drop }}
        - {{ path: $.properties.email, action: hash }}
        - {{ path: $.properties.phone, action: mask, first: 2, last: 2, with: "#" }}
        - {{ path: $.properties.city, action: generalise, prefix: 3 }}
        - {{ path: $.properties.date_of_birth, action: generalise, to: year }}
        - {{ path: $.createdAt, action: generalise, to: month }}
        - {{ path: $.properties.points, action: generalise, width: 1000 }}
        - {{ path: $.properties.lifecyclestage, action: constant, value: {{ redacted: true }} }}
        - {{ path: $.updatedAt, action: "null" }}
      audit:
        - {{ paths: [$.id, $.properties], action: keep }}
      care:
        - {{ paths: [$.id, $.properties.email], action: keep }}
      registry:
        - {{ paths: [$.id, $.properties.email], action: keep }}
      ad_sharing:
        - {{ paths: [$.id, $.properties.email], action: keep }}
      partner_offers:
        - {{ paths: [$.id, $.properties.email], action: keep }}
      data_sale:
        - {{ paths: [$.id, $.properties.email], action: keep }}
  ticket:
    subject: $.contactId
    fields:
      $.contactId: user.unique_id
      $.subject: system.operations
    rules:
      billing:
        - {{ paths: [$.contactId, $.subject], action: keep }}

routes:
  - name: contacts-list
    method: GET
    path: /crm/v3/objects/contacts
    object: contact
    records: $.results[*]
    envelope: [$.paging]
    without_basis: omit
  - name: contacts-search
    method: POST
    path: /crm/v3/objects/contacts/search
    object: contact
    records: $.results[*]
    without_basis: omit
  - name: contact
    method: GET
    path: /crm/v3/objects/contacts/{{id}}
    object: contact
    records: $
    subject_param: id
    without_basis: refuse
  - name: contacts-digest
    method: GET
    path: /crm/v3/digest/contacts
    object: contact
    records: $.results[*]
    without_basis: non_personal
  - name: tickets
    method: GET
    path: /crm/v3/objects/tickets
    object: ticket
    records: $.results[*]

passthrough:
  - {{ method: GET, path: /health }}
"##
    )
}

/// A contact as the CRM returns it, with every kind of field the policy knows and one it does
/// not (`internal`).
pub fn contact(id: &str) -> Value {
    json!({
        "id": id,
        "properties": {
            "firstname": "Ada",
            "lastname": "Lovelace",
            "email": format!("ada{id}@example.com"),
            "phone": "+1 555 0100",
            "city": "London",
            "date_of_birth": "1815-12-10",
            "points": 1234,
            "health_notes": "asthma",
            "ethnicity": "british",
            "lifecyclestage": "lead",
            "internal": "crm-only"
        },
        "createdAt": "2024-03-05T10:00:00Z",
        "updatedAt": "2024-04-01T00:00:00Z",
        "archived": false
    })
}

/// A list response of contacts, with an envelope the policy keeps (`paging`) and members it
/// does not (`total`, `debug`).
pub fn contacts(ids: &[&str]) -> Value {
    json!({
        "results": ids.iter().map(|id| contact(id)).collect::<Vec<_>>(),
        "paging": { "next": { "after": "abc" } },
        "total": ids.len(),
        "debug": { "query": "email = ada@example.com" }
    })
}

/// Hex HMAC-SHA-256 of `text` under `key`, computed independently of the gateway.
pub fn hmac_hex(key: &[u8], text: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

// ------------------------------------------------------------------------------------------
// Content codings.

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("in memory");
    e.finish().expect("in memory")
}

/// `deflate` as HTTP means it: the zlib format (RFC 9110 §8.4.1.2).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("in memory");
    e.finish().expect("in memory")
}

pub fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("in memory");
    }
    out
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).expect("in memory")
}

// ------------------------------------------------------------------------------------------
// The upstream.

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The gateway's end of the upstream connection the request came on.
    pub peer: SocketAddr,
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Trailer fields after the body, if any came.
    pub trailers: Option<HeaderMap>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A scripted upstream response.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body, each part sent after its delay; one undelayed part is sent with a length.
    parts: Vec<(Duration, Bytes)>,
    /// How long the response head is held back.
    head_delay: Duration,
}

impl Reply {
    /// 200, `application/json`, the value as body.
    pub fn json(v: &Value) -> Self {
        Self::bytes(v.to_string()).header("content-type", "application/json")
    }

    /// 200 with these body bytes and no content type.
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            parts: vec![(Duration::ZERO, body.into())],
            head_delay: Duration::ZERO,
        }
    }

    /// 200, `application/json`, the value's text encoded with `coding` (`gzip`, `deflate`,
    /// `br`, `zstd`).
    pub fn coded(v: &Value, coding: &str) -> Self {
        let plain = v.to_string().into_bytes();
        let body = match coding {
            "gzip" => gzip(&plain),
            "deflate" => deflate(&plain),
            "br" => brotli(&plain),
            "zstd" => zstd(&plain),
            other => panic!("no encoder for {other}"),
        };
        Self::bytes(body)
            .header("content-type", "application/json")
            .header("content-encoding", coding)
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a header line (a second call with the same name adds a second line).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends the body as it is, in parts of `size` bytes, each after `delay` (chunked: no
    /// Content-Length).
    pub fn in_parts(mut self, size: usize, delay: Duration) -> Self {
        let whole: Vec<u8> = self.parts.iter().flat_map(|(_, b)| b.to_vec()).collect();
        self.parts = whole
            .chunks(size.max(1))
            .map(|c| (delay, Bytes::copy_from_slice(c)))
            .collect();
        self
    }

    /// Holds the response head back for `delay`.
    pub fn head_after(mut self, delay: Duration) -> Self {
        self.head_delay = delay;
        self
    }

    /// Sends the first `n` bytes of the body, then nothing for an hour (no Content-Length).
    pub fn stall_after(mut self, n: usize) -> Self {
        let whole: Vec<u8> = self.parts.iter().flat_map(|(_, b)| b.to_vec()).collect();
        let n = n.min(whole.len());
        self.parts = vec![
            (
                Duration::from_millis(1),
                Bytes::copy_from_slice(&whole[..n]),
            ),
            (
                Duration::from_secs(3600),
                Bytes::copy_from_slice(&whole[n..]),
            ),
        ];
        self
    }

    fn into_response(self) -> Response<BoxBody<Bytes, BoxError>> {
        let body = match self.parts.as_slice() {
            [(delay, bytes)] if delay.is_zero() => Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed(),
            _ => {
                let (tx, body) = ChannelBody::new(1);
                let parts = self.parts;
                tokio::spawn(async move {
                    for (delay, bytes) in parts {
                        tokio::time::sleep(delay).await;
                        if tx.send(Ok(bytes)).await.is_err() {
                            return;
                        }
                    }
                });
                body.boxed()
            }
        };
        let mut rsp = Response::new(body);
        *rsp.status_mut() = StatusCode::from_u16(self.status).expect("a valid status");
        for (name, value) in self.headers {
            rsp.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(&value).expect("a valid header value"),
            );
        }
        rsp
    }
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An HTTP server on `127.0.0.1:0` that answers as scripted and records what it received.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Answers every request with `reply`.
    pub async fn replying(reply: Reply) -> Self {
        Self::serve(move |_| reply.clone()).await
    }

    /// Answers each request with what `script` makes of it.
    pub async fn serve(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let log = log.clone();
                let script = script.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    let script = script.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let collected = body.collect().await?;
                        let trailers = collected.trailers().cloned();
                        let seen = Seen {
                            peer,
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            headers: parts.headers,
                            body: collected.to_bytes(),
                            trailers,
                        };
                        let reply = script(&seen);
                        log.lock().expect("not poisoned").push(seen);
                        tokio::time::sleep(reply.head_delay).await;
                        Ok::<_, hyper::Error>(reply.into_response())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// A raw TCP upstream: reads each request head, writes `bytes` as they are, and closes the
    /// connection. For responses no HTTP library would send (bodies that break off).
    pub async fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        let bytes: Arc<[u8]> = bytes.into().into();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                let bytes = bytes.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    log.lock()
                        .expect("not poisoned")
                        .push(parse_head(&head, peer));
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.flush().await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// The base URL of this upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    /// Waits until the upstream has received `n` requests.
    pub async fn wait_for(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.seen.lock().expect("not poisoned").len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the upstream received the request in time");
    }
}

/// Reads up to and including the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

fn parse_head(head: &[u8], peer: SocketAddr) -> Seen {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    Seen {
        peer,
        method,
        target,
        headers,
        body: Bytes::new(),
        trailers: None,
    }
}

// ------------------------------------------------------------------------------------------
// The consent platform.

/// A consent-management platform on `127.0.0.1:0`, for gateways with `consent.store: http`.
///
/// `GET /consents/{subject}/{purpose}` answers `{"status": "opt_in"|"opt_out", "updated_at":
/// ...}` for the pairs it was told about and 404 for the others. Taken down, it drops every
/// connection without an answer, as a crashed platform would.
pub struct ConsentPlatform {
    pub addr: SocketAddr,
    /// (subject, purpose) -> granted?
    answers: Arc<Mutex<HashMap<(String, String), bool>>>,
    down: Arc<AtomicBool>,
    /// Requests received, answered or not, with their targets (path and query, as sent).
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for ConsentPlatform {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConsentPlatform {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let answers: Arc<Mutex<HashMap<(String, String), bool>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (table, is_down, log) = (answers.clone(), down.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let (table, is_down, log) = (table.clone(), is_down.clone(), log.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let target = req.uri().to_string();
                    log.lock().expect("not poisoned").push(target.clone());
                    if is_down.load(Ordering::SeqCst) {
                        // An error closes the connection without a response.
                        return std::future::ready(Err("down"));
                    }
                    let path = req.uri().path();
                    let mut parts = path.strip_prefix("/consents/").unwrap_or("").split('/');
                    let key = (
                        parts.next().unwrap_or_default().to_owned(),
                        parts.next().unwrap_or_default().to_owned(),
                    );
                    let granted = table.lock().expect("not poisoned").get(&key).copied();
                    let rsp = match granted {
                        None => Reply::bytes("").status(404),
                        Some(g) => Reply::json(&json!({
                            "status": if g { "opt_in" } else { "opt_out" },
                            "updated_at": "2025-01-01T00:00:00Z"
                        })),
                    };
                    std::future::ready(Ok(rsp.into_response()))
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            answers,
            down,
            seen,
            task,
        }
    }

    /// From now on the platform says `subject` granted `purpose`.
    pub fn grant(&self, subject: &str, purpose: &str) {
        self.set(subject, purpose, true);
    }

    /// From now on the platform says `subject` withdrew `purpose`.
    pub fn withdraw(&self, subject: &str, purpose: &str) {
        self.set(subject, purpose, false);
    }

    fn set(&self, subject: &str, purpose: &str, granted: bool) {
        self.answers
            .lock()
            .expect("not poisoned")
            .insert((subject.to_owned(), purpose.to_owned()), granted);
    }

    /// Takes the platform down (`true`) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The targets of every request received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// The `consent.http` settings of a gateway that reads this platform.
    pub fn settings(&self) -> HttpStoreConfig {
        HttpStoreConfig {
            url: format!("http://{}/consents/{{subject}}/{{purpose}}", self.addr),
            header: None,
            token_env: None,
            timeout_ms: 500,
            max_concurrent: 8,
            status: HttpStatusConfig {
                path: "$.status".to_owned(),
                granted: vec![json!("opt_in")],
                withdrawn: vec![json!("opt_out")],
                objected: Vec::new(),
                opted_out: Vec::new(),
                none: Vec::new(),
            },
            at: Some("$.updated_at".to_owned()),
            expires_at: None,
            opt_out_all: None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// The gateway.

/// Starts a gateway in front of `upstream` with the test policy.
pub fn gateway(upstream: &Upstream) -> GatewayBuilder {
    GatewayBuilder {
        policy: policy(),
        key: PSEUDONYM_KEY.to_vec(),
        config: Config {
            upstream: upstream.url(),
            ..Config::default()
        },
        // Connections served on lanes, as `consentry serve` does.
        lanes: 2,
    }
}

pub struct GatewayBuilder {
    policy: String,
    key: Vec<u8>,
    config: Config,
    lanes: usize,
}

impl GatewayBuilder {
    /// Serves connections on `n` lanes (0: on the test's runtime).
    pub fn lanes(mut self, n: usize) -> Self {
        self.lanes = n;
        self
    }

    /// Another pseudonym key for the `hash` action.
    pub fn pseudonym_key(mut self, key: &[u8]) -> Self {
        self.key = key.to_vec();
        self
    }

    /// Replaces the whole policy file.
    pub fn with_policy(mut self, policy: String) -> Self {
        self.policy = policy;
        self
    }

    /// Adjusts the operations settings.
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Reads consent from `platform` (`consent.store: http`) instead of the embedded store.
    pub fn consent_platform(self, platform: &ConsentPlatform) -> Self {
        let settings = platform.settings();
        self.config(|c| {
            c.consent.store = StoreKind::Http;
            c.consent.http = Some(settings);
        })
    }

    /// Also starts the admin listener (on a free port), accepting [`ADMIN_TOKEN`] as the token
    /// named `ops`, with a rate limit no ordinary test reaches.
    pub fn admin(self) -> Self {
        self.config(|c| {
            c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            c.admin.tokens = vec![AdminToken::from_secret("ops", ADMIN_TOKEN)];
            c.admin.rate_per_second = 1000;
            c.admin.burst = 1000;
        })
    }

    pub async fn start(self) -> Gw {
        let dir = tempfile::tempdir().expect("temp dir");
        let policies = dir.path().join("policy");
        std::fs::create_dir_all(&policies).expect("policy dir");
        std::fs::write(policies.join("policy.yaml"), &self.policy).expect("policy file");
        std::fs::write(policies.join("pseudonym.key"), &self.key).expect("key file");
        let mut config = self.config;
        if self.lanes > 0 {
            // As `consentry serve` does: one upstream pool per lane.
            config.workers = self.lanes;
        }
        config.policies = policies;
        config.data_dir = dir.path().join("data");
        config.timeouts.shutdown_ms = 5_000;
        let gateway = match consentry::server::build(&config).await {
            Ok(g) => g,
            Err(e) => panic!("the gateway does not start: {e}"),
        };
        let mut admin_addr = None;
        let mut admin_shutdown = None;
        if config.admin.listen.is_some() {
            let admin = match consentry::admin::Admin::new(gateway.clone(), &config.admin) {
                Ok(a) => a,
                Err(e) => panic!("the admin API does not start: {e}"),
            };
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            admin_addr = Some(listener.local_addr().expect("local addr"));
            let (tx, rx) = oneshot::channel::<()>();
            admin_shutdown = Some(tx);
            let config = config.clone();
            tokio::spawn(async move {
                consentry::admin::serve(listener, admin, &config, async {
                    let _ = rx.await;
                })
                .await;
            });
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let gw = gateway.clone();
        let lanes =
            (self.lanes > 0).then(|| Arc::new(Lanes::start(self.lanes).expect("the lanes start")));
        let on = lanes.clone();
        let server = tokio::spawn(async move {
            consentry::server::run_on(listener, gw, on.as_deref(), &config, async {
                let _ = rx.await;
            })
            .await;
        });
        Gw {
            addr,
            lanes,
            admin_addr,
            admin_shutdown,
            gateway,
            data_dir: dir.path().join("data"),
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        }
    }
}

/// A running gateway; shut down when dropped.
pub struct Gw {
    pub addr: SocketAddr,
    /// The lanes serving the proxy's connections, if any.
    pub lanes: Option<Arc<Lanes>>,
    /// The admin listener, when started with [`GatewayBuilder::admin`].
    pub admin_addr: Option<SocketAddr>,
    admin_shutdown: Option<oneshot::Sender<()>>,
    pub gateway: Arc<Gateway>,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.admin_shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Gw {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Records a consent event now, through the gateway's consent service.
    pub async fn record(
        &self,
        subject: &str,
        purpose: &str,
        kind: EventKind,
        expires_at_ms: Option<i64>,
    ) {
        let event = ConsentEvent {
            subject: subject.to_owned(),
            purpose: purpose.to_owned(),
            kind,
            at_ms: now_ms(),
            expires_at_ms,
            source: Some("e2e".to_owned()),
            proof: None,
            actor: None,
            recorded_at_ms: None,
        };
        // Through the record of consent, as the admin API and the CLI write: with an actor.
        self.gateway
            .records
            .record(vec![event], "e2e")
            .await
            .expect("the consent event is recorded");
    }

    /// Grants `purpose` to `subject`, without expiry.
    pub async fn grant(&self, subject: &str, purpose: &str) {
        self.record(subject, purpose, EventKind::Granted, None)
            .await;
    }

    /// The path of the SQLite consent file.
    pub fn consent_db(&self) -> PathBuf {
        self.data_dir.join("consent.db")
    }

    /// Starts shutting down; the returned task ends once requests in flight are drained.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("not shut down yet")
    }

    pub fn call(&self, method: Method, path: &str) -> Call {
        Call {
            base: self.url(),
            proto: Proto::H1,
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(&self, path: &str) -> Call {
        self.call(Method::GET, path)
    }

    /// A request to the admin listener, without a token.
    pub fn admin_call(&self, method: Method, path: &str) -> Call {
        let addr = self
            .admin_addr
            .expect("the gateway was started with .admin()");
        Call {
            base: format!("http://{addr}"),
            proto: Proto::H1,
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A request to the admin listener with [`ADMIN_TOKEN`].
    pub fn admin(&self, method: Method, path: &str) -> Call {
        self.admin_call(method, path).bearer(ADMIN_TOKEN)
    }
}

// ------------------------------------------------------------------------------------------
// Clients.

/// The protocol a client speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2,
}

/// A request to the gateway, being built.
pub struct Call {
    base: String,
    proto: Proto,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Call {
    pub fn over(mut self, proto: Proto) -> Self {
        self.proto = proto;
        self
    }

    /// Presents the all-purpose caller's key and declares `purpose`.
    pub fn purpose(self, purpose: &str) -> Self {
        self.header("x-api-key", APP_KEY)
            .header("x-purpose", purpose)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Presents `token` as `Authorization: Bearer`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sends `value` as an `application/json` body.
    pub fn json(self, value: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request and reads the whole response; the transfer must complete.
    pub async fn send(self) -> Resp {
        let (status, headers, body) = self.exchange().await;
        let body = body.unwrap_or_else(|e| panic!("the response body broke off: {e}"));
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Sends the request; the body is whatever the transfer yields, an error if it broke off.
    pub async fn exchange(self) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
        let mut builder = Client::builder(TokioExecutor::new());
        if self.proto == Proto::H2 {
            builder.http2_only(true);
        }
        let client: Client<_, Full<Bytes>> = builder.build_http();
        let mut req = Request::new(Full::new(self.body));
        *req.method_mut() = self.method;
        *req.uri_mut() = format!("{}{}", self.base, self.path)
            .parse()
            .expect("a valid URI");
        for (name, value) in &self.headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        let rsp = tokio::time::timeout(WAIT, client.request(req))
            .await
            .expect("the gateway answered in time")
            .expect("the gateway answered");
        let (parts, body) = rsp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("the body ended in time")
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| format!("{e:?}"));
        (parts.status, parts.headers, body)
    }
}

/// A complete response from the gateway.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts a 200 with a JSON body and returns that body.
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()
    }

    /// Asserts a refusal: the status, an `application/problem+json` body with the reason.
    pub fn assert_refused(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text()
        );
        let problem = self.json();
        assert_eq!(problem["reason"], reason, "problem: {problem}");
        assert_eq!(problem["status"], status, "problem: {problem}");
    }
}

/// Sends `request` as raw bytes to `addr` and reads until the peer closes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closed the connection in time");
    out
}

/// Writes `request` to a new connection to `addr` and reads for at most `wait`: what arrived,
/// and whether the gateway closed the connection in that time.
pub async fn raw_try(addr: SocketAddr, request: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    raw_read(&mut stream, wait).await
}

/// Reads from `stream` for at most `wait`: what arrived, and whether the peer closed.
pub async fn raw_read(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"))
}

/// Declares a test run once over HTTP/1.1 and once over HTTP/2: `both!(name, |proto| ...)`
/// expands to a module `name` with tests `h1` and `h2` calling the async fn `name(proto)`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn h1() {
                super::$name($crate::support::Proto::H1).await;
            }
            #[tokio::test]
            async fn h2() {
                super::$name($crate::support::Proto::H2).await;
            }
        }
    };
}
