//! The HTTP consent store against a real HTTP server started in the test, on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::HttpConsentStore;
use crate::config::{Config, HttpStatusConfig, HttpStoreConfig, StoreKind};
use crate::consent::cache::{CacheConfig, ConsentService};
use crate::consent::decide::Consent;
use crate::consent::event::{EventKind, parse_rfc3339_ms};
use crate::consent::store::{ConsentState, ConsentStore, ErasureRecord, StoreError};
use crate::policy::compiled::{LawfulBasis, Purpose};

/// What the platform answers to one request: status, body, and a delay before the head.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

fn answer(status: u16, body: impl Into<String>) -> Answer {
    Answer {
        status,
        body: body.into(),
        delay: Duration::ZERO,
    }
}

/// A 200 whose consent state is `state`, with the other fields the test mapping reads.
fn state(state: Value) -> Answer {
    answer(
        200,
        json!({
            "consent": { "state": state, "updated": "2024-05-01T00:00:00Z", "expires": null },
            "do_not_sell_all": false
        })
        .to_string(),
    )
}

/// A request the platform received.
#[derive(Debug, Clone)]
struct Received {
    /// Path and query, as sent (still percent-encoded).
    target: String,
    authorization: Option<String>,
    accept: Option<String>,
}

/// A consent platform: answers each request by the subject segment of its path (still
/// percent-encoded), and records what it received and how many requests it served at once.
struct Platform {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    max_running: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Platform {
    async fn start(script: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (log, run, max) = (received.clone(), running.clone(), max_running.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, run, max, script) =
                    (log.clone(), run.clone(), max.clone(), script.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, run, max, script) =
                        (log.clone(), run.clone(), max.clone(), script.clone());
                    async move {
                        let now = run.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        let target = req.uri().to_string();
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        log.lock().unwrap().push(Received {
                            target: target.clone(),
                            authorization: header("authorization"),
                            accept: header("accept"),
                        });
                        // `/v1/subjects/{subject}/...`, or else the last segment of the path.
                        let path = target.split('?').next().unwrap_or_default();
                        let subject = match path.strip_prefix("/v1/subjects/") {
                            Some(rest) => rest.split('/').next().unwrap_or_default(),
                            None => path.rsplit('/').next().unwrap_or_default(),
                        };
                        let a = script(subject);
                        tokio::time::sleep(a.delay).await;
                        run.fetch_sub(1, Ordering::SeqCst);
                        let mut rsp = Response::new(Full::new(Bytes::from(a.body)));
                        *rsp.status_mut() = http::StatusCode::from_u16(a.status).unwrap();
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
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
            received,
            max_running,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The test mapping: `$.consent.state` with a word and a boolean for grants and withdrawals.
fn settings(addr: SocketAddr) -> HttpStoreConfig {
    HttpStoreConfig {
        url: format!("http://{addr}/v1/subjects/{{subject}}/consents/{{purpose}}?view=full"),
        header: None,
        token_env: Some("CMP_TOKEN".into()),
        timeout_ms: 300,
        max_concurrent: 4,
        status: HttpStatusConfig {
            path: "$.consent.state".into(),
            granted: vec![json!("opt_in"), json!(true)],
            withdrawn: vec![json!("opt_out"), json!(false)],
            objected: vec![json!("objected")],
            opted_out: vec![json!("do_not_sell")],
            none: vec![json!("not_asked")],
        },
        at: Some("$.consent.updated".into()),
        expires_at: Some("$.consent.expires".into()),
        opt_out_all: Some("$.do_not_sell_all".into()),
    }
}

fn env(name: &str) -> Option<String> {
    (name == "CMP_TOKEN").then(|| "Bearer t0ken".to_owned())
}

fn open(config: &HttpStoreConfig) -> Arc<HttpConsentStore> {
    Arc::new(HttpConsentStore::with_env(config, env).unwrap())
}

fn service(store: Arc<HttpConsentStore>) -> Arc<ConsentService> {
    let config = CacheConfig {
        lookup_timeout: Duration::from_secs(3),
        ..CacheConfig::default()
    };
    ConsentService::new(store, config)
}

fn purpose(basis: LawfulBasis, sale_or_sharing: bool) -> Purpose {
    Purpose {
        name: "marketing".into(),
        basis,
        sale_or_sharing,
    }
}

fn kind(r: &Result<ConsentState, StoreError>) -> Result<Option<EventKind>, String> {
    match r {
        Ok(s) => Ok(s.latest.map(|l| l.kind)),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn each_status_value_maps_to_its_kind() {
    let platform = Platform::start(|subject| match subject {
        "g1" => state(json!("opt_in")),
        "g2" => state(json!(true)),
        "w1" => state(json!("opt_out")),
        "w2" => state(json!(false)),
        "o" => state(json!("objected")),
        "x" => state(json!("do_not_sell")),
        "n" => state(json!("not_asked")),
        _ => answer(404, "no such subject"),
    })
    .await;
    let store = open(&settings(platform.addr));
    let subjects = ["g1", "g2", "w1", "w2", "o", "x", "n", "unknown"];
    let got = store.lookup_each("marketing", &subjects).await.unwrap();
    let kinds: Vec<_> = got.iter().map(kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [
            Ok(Some(Granted)),
            Ok(Some(Granted)),
            Ok(Some(Withdrawn)),
            Ok(Some(Withdrawn)),
            Ok(Some(Objected)),
            Ok(Some(OptedOut)),
            Ok(None),
            Ok(None),
        ]
    );
    let at = got[0].as_ref().unwrap().latest.unwrap().order.at_ms;
    assert_eq!(at, parse_rfc3339_ms("2024-05-01T00:00:00Z").unwrap());
    // A 404 is the empty state: nothing recorded.
    assert_eq!(*got[7].as_ref().unwrap(), ConsentState::default());

    let received = platform.received();
    assert_eq!(received.len(), subjects.len());
    let first = received.iter().find(|r| r.target.contains("/g1/")).unwrap();
    assert_eq!(first.target, "/v1/subjects/g1/consents/marketing?view=full");
    assert_eq!(first.authorization.as_deref(), Some("Bearer t0ken"));
    assert_eq!(first.accept.as_deref(), Some("application/json"));

    // Through the cache: a grant is granted, everything else is not; a 404 is no consent, but
    // no objection either.
    let service = service(store);
    let consent = purpose(LawfulBasis::Consent, false);
    let decisions = service.decide_batch(&consent, &subjects, false).await;
    assert_eq!(
        decisions,
        [
            Consent::Granted,
            Consent::Granted,
            Consent::Denied,
            Consent::Denied,
            Consent::Denied,
            Consent::Denied,
            Consent::Denied,
            Consent::Denied,
        ]
    );
    let li = purpose(LawfulBasis::LegitimateInterest, false);
    assert_eq!(
        service.decide_batch(&li, &["o", "unknown"], false).await,
        [Consent::Denied, Consent::Granted]
    );
}

#[tokio::test]
async fn expiry_and_times_in_both_forms() {
    let hour = 3_600_000;
    let now = crate::consent::event::now_ms();
    let platform = Platform::start(move |subject| {
        let (updated, expires) = match subject {
            "live-rfc" => (json!("2024-05-01T00:00:00Z"), json!("2999-01-01T00:00:00Z")),
            "live-ms" => (json!(now - hour), json!(now + hour)),
            "lapsed" => (json!(now - 2 * hour), json!(now - hour)),
            "no-expiry" => (json!(null), json!(null)),
            "bad-text" => (json!(now), json!("next tuesday")),
            "bad-number" => (json!(now), json!(1.5)),
            _ => (json!(now), json!({ "at": now })),
        };
        answer(
            200,
            json!({
                "consent": { "state": "opt_in", "updated": updated, "expires": expires },
                "do_not_sell_all": false
            })
            .to_string(),
        )
    })
    .await;
    let store = open(&settings(platform.addr));
    let subjects = [
        "live-rfc",
        "live-ms",
        "lapsed",
        "no-expiry",
        "bad-text",
        "bad-number",
        "bad-type",
    ];
    let got = store.lookup_each("marketing", &subjects).await.unwrap();
    let expiry = |i: usize| got[i].as_ref().unwrap().latest.unwrap().expires_at_ms;
    assert_eq!(
        expiry(0),
        Some(parse_rfc3339_ms("2999-01-01T00:00:00Z").unwrap())
    );
    assert_eq!(expiry(1), Some(now + hour));
    assert_eq!(
        got[1].as_ref().unwrap().latest.unwrap().order.at_ms,
        now - hour
    );
    assert_eq!(expiry(2), Some(now - hour));
    assert_eq!(expiry(3), None);
    for (i, needle) in [(4, "RFC 3339"), (5, "whole number"), (6, "an object")] {
        let err = kind(&got[i]).unwrap_err();
        assert!(err.contains(needle), "{}: {err}", subjects[i]);
    }

    let decisions = service(store)
        .decide_batch(&purpose(LawfulBasis::Consent, false), &subjects, false)
        .await;
    use Consent::{Denied, Granted, Unknown};
    assert_eq!(
        decisions,
        [Granted, Granted, Denied, Granted, Unknown, Unknown, Unknown]
    );
}

#[tokio::test]
async fn an_opt_out_of_everything_stops_sale_purposes_only() {
    let platform = Platform::start(|subject| {
        let all = match subject {
            "all-out" => json!(true),
            "not-out" => json!(false),
            _ => json!("yes"),
        };
        answer(
            200,
            json!({ "consent": { "state": "opt_in" }, "do_not_sell_all": all }).to_string(),
        )
    })
    .await;
    let service = service(open(&settings(platform.addr)));
    let subjects = ["all-out", "not-out", "unreadable"];
    assert_eq!(
        service
            .decide_batch(&purpose(LawfulBasis::Consent, true), &subjects, false)
            .await,
        [Consent::Denied, Consent::Granted, Consent::Unknown]
    );
    // A purpose that is not sale or sharing ignores the opt-out, but not an unreadable answer.
    service.invalidate_all();
    assert_eq!(
        service
            .decide_batch(&purpose(LawfulBasis::Consent, false), &subjects, false)
            .await,
        [Consent::Granted, Consent::Granted, Consent::Unknown]
    );
}

#[tokio::test]
async fn unreadable_answers_are_errors_for_their_subject_alone() {
    let platform = Platform::start(|subject| match subject {
        "ok" => state(json!("opt_in")),
        "e500" => answer(
            500,
            r#"{"consent":{"state":"opt_in"},"do_not_sell_all":false}"#,
        ),
        "e503" => answer(503, ""),
        "e302" => answer(302, ""),
        "e401" => answer(401, ""),
        "html" => answer(200, "<html>maintenance</html>"),
        "cut" => answer(200, r#"{"consent":{"state":"opt_in""#),
        "dup-key" => answer(
            200,
            r#"{"consent":{"state":"opt_out","state":"opt_in"},"do_not_sell_all":false}"#,
        ),
        "odd-word" => state(json!("maybe")),
        "nested" => state(json!({ "value": "opt_in" })),
        "no-status" => answer(200, r#"{"consent":{},"do_not_sell_all":false}"#),
        "no-flag" => answer(200, r#"{"consent":{"state":"opt_in"}}"#),
        "slow" => Answer {
            delay: Duration::from_millis(1_000),
            ..state(json!("opt_in"))
        },
        _ => answer(404, ""),
    })
    .await;
    let store = open(&settings(platform.addr));
    let cases = [
        ("e500", "answered 500"),
        ("e503", "answered 503"),
        ("e302", "answered 302"),
        ("e401", "answered 401"),
        ("html", "cannot be read as JSON"),
        ("cut", "cannot be read as JSON"),
        ("dup-key", "appears twice"),
        ("odd-word", "`\"maybe\"` is in no list"),
        ("nested", "an object"),
        ("no-status", "no status at `$.consent.state`"),
        ("no-flag", "nothing at `$.do_not_sell_all`"),
        ("slow", "no answer within 300 ms"),
    ];
    let mut subjects = vec!["ok"];
    subjects.extend(cases.iter().map(|(s, _)| *s));
    let started = std::time::Instant::now();
    let got = store.lookup_each("marketing", &subjects).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(kind(&got[0]), Ok(Some(EventKind::Granted)));
    for ((subject, needle), result) in cases.iter().zip(&got[1..]) {
        let err = kind(result).unwrap_err();
        assert!(err.contains(needle), "{subject}: {err}");
        // The subject id never appears in the error (the URL carries it).
        assert!(!err.contains(subject), "{subject}: {err}");
    }
    // The all-or-nothing lookup fails the batch.
    assert!(store.lookup("marketing", &["ok", "e500"]).await.is_err());

    // FAIL-CLOSED: through the cache, each unreadable subject is Unknown, even for a
    // legitimate interest (where "nothing recorded" would be a grant); the readable one is
    // decided.
    let li = purpose(LawfulBasis::LegitimateInterest, false);
    let decisions = service(store).decide_batch(&li, &subjects, false).await;
    assert_eq!(decisions[0], Consent::Granted);
    assert!(
        decisions[1..].iter().all(|c| *c == Consent::Unknown),
        "{decisions:?}"
    );
}

#[tokio::test]
async fn subjects_are_percent_encoded_in_the_url() {
    let platform = Platform::start(|_| state(json!("opt_in"))).await;
    let store = open(&settings(platform.addr));
    let got = store
        .lookup_each("marketing", &["a/b c?d#e%f&g=h", "zoë", ".."])
        .await
        .unwrap();
    assert!(got[0].is_ok() && got[1].is_ok());
    // A dot segment would climb the path: it is never sent.
    assert!(
        kind(&got[2])
            .unwrap_err()
            .contains("cannot be put in a URL")
    );
    let mut targets: Vec<_> = platform.received().into_iter().map(|r| r.target).collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "/v1/subjects/a%2Fb%20c%3Fd%23e%25f%26g%3Dh/consents/marketing?view=full",
            "/v1/subjects/zo%C3%AB/consents/marketing?view=full",
        ]
    );
}

#[tokio::test]
async fn requests_in_flight_are_bounded_and_each_subject_is_asked_once() {
    let platform = Platform::start(|_| Answer {
        delay: Duration::from_millis(100),
        ..state(json!("opt_in"))
    })
    .await;
    let config = HttpStoreConfig {
        max_concurrent: 3,
        timeout_ms: 2_000,
        ..settings(platform.addr)
    };
    let store = open(&config);
    let ids: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let mut subjects: Vec<&str> = ids.iter().map(String::as_str).collect();
    subjects.extend(["s0", "s5"]);
    let got = store.lookup_each("marketing", &subjects).await.unwrap();
    assert_eq!(got.len(), 14);
    assert!(got.iter().all(|r| kind(r) == Ok(Some(EventKind::Granted))));
    assert_eq!(platform.received().len(), 12);
    assert_eq!(platform.max_running.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_unreachable_platform_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let store = open(&settings(addr));
    let got = store.lookup_each("marketing", &["a", "b"]).await.unwrap();
    for r in &got {
        assert!(kind(r).unwrap_err().contains("request failed"), "{r:?}");
    }
    assert_eq!(
        service(store)
            .decide_batch(&purpose(LawfulBasis::Consent, false), &["a"], false)
            .await,
        [Consent::Unknown]
    );
}

#[tokio::test]
async fn the_platform_is_only_read() {
    let store = open(&settings("127.0.0.1:9".parse().unwrap()));
    assert!(matches!(
        store.append(&[]).await,
        Err(StoreError::Unsupported(_))
    ));
    assert!(matches!(
        store.history("a").await,
        Err(StoreError::Unsupported(_))
    ));
    let record = ErasureRecord {
        subject_pseudonym: "p".into(),
        at_ms: 0,
        actor: None,
        request_ref: None,
        events_removed: 0,
    };
    assert!(matches!(
        store.erase("a", &record).await,
        Err(StoreError::Unsupported(_))
    ));
    assert!(matches!(
        store.erasures("p").await,
        Err(StoreError::Unsupported(_))
    ));
    assert!(matches!(
        store.export_page(0, 10).await,
        Err(StoreError::Unsupported(_))
    ));
    assert!(store.changes().is_none());
}

#[test]
fn settings_that_cannot_work_are_refused_naming_the_key() {
    let base = || settings("127.0.0.1:9".parse().unwrap());
    type Edit = fn(&mut HttpStoreConfig);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            |c| c.url = "http://cmp/v1/{purpose}".into(),
            "http.url",
            "no `{subject}`",
        ),
        (
            |c| c.url = "http://cmp/v1/{subject}".into(),
            "http.url",
            "no `{purpose}`",
        ),
        (
            |c| c.url = "http://cmp/{subj}/{purpose}".into(),
            "http.url",
            "unknown placeholder `{subj}`",
        ),
        (
            |c| c.url = "http://cmp/{subject/{purpose}".into(),
            "http.url",
            "unbalanced",
        ),
        (
            |c| c.url = "http://cmp/}{subject}/{purpose}".into(),
            "http.url",
            "unbalanced",
        ),
        (
            |c| c.url = "https://cmp/{subject}/{purpose}".into(),
            "http.url",
            "https is not supported",
        ),
        (
            |c| c.url = "ftp://cmp/{subject}/{purpose}".into(),
            "http.url",
            "must start with `http://`",
        ),
        (
            |c| c.url = "http://{subject}.cmp/{purpose}".into(),
            "http.url",
            "after the host",
        ),
        (
            |c| c.url = "{subject}/{purpose}".into(),
            "http.url",
            "must start with `http://`",
        ),
        (
            |c| c.url = "http://cmp/{subject}/{purpose}#x".into(),
            "http.url",
            "fragment",
        ),
        (
            |c| c.url = "http://cmp/a b/{subject}/{purpose}".into(),
            "http.url",
            "not a valid URL",
        ),
        (
            |c| c.status.path = "$.consent[".into(),
            "http.status.path",
            "not a valid JSONPath at column",
        ),
        (
            |c| c.status.path = "consent.state".into(),
            "http.status.path",
            "at column 1",
        ),
        (
            |c| c.status.path = "$..state".into(),
            "http.status.path",
            "uses `..`",
        ),
        (
            |c| c.status.path = "$.items[*].state".into(),
            "http.status.path",
            "a wildcard",
        ),
        (|c| c.at = Some("$.a['b','c']".into()), "http.at", "a union"),
        (
            |c| c.expires_at = Some("$.a[1:2]".into()),
            "http.expires_at",
            "a slice",
        ),
        (
            |c| c.opt_out_all = Some("$.a[?@.b]".into()),
            "http.opt_out_all",
            "a filter",
        ),
        (
            |c| c.status.granted.clear(),
            "http.status.granted",
            "at least one value",
        ),
        (
            |c| c.status.objected.push(json!(true)),
            "http.status.objected",
            "also in `status.granted`",
        ),
        (
            |c| c.status.none.push(json!(["a"])),
            "http.status.none",
            "not a single value",
        ),
        (
            |c| c.token_env = Some("NOT_SET".into()),
            "http.token_env",
            "`NOT_SET` is not set",
        ),
        (|c| c.token_env = None, "http.header", "needs `token_env`"),
        (
            |c| c.header = Some("bad header".into()),
            "http.header",
            "not a header name",
        ),
        (|c| c.timeout_ms = 0, "http.timeout_ms", "greater than zero"),
        (
            |c| c.max_concurrent = 0,
            "http.max_concurrent",
            "greater than zero",
        ),
    ];
    for (edit, key, needle) in cases {
        let mut c = base();
        if key == "http.header" && needle.contains("token_env") {
            c.header = Some("x-token".into());
        }
        edit(&mut c);
        let err = HttpConsentStore::with_env(&c, env).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(err.message.contains(needle), "{err}");
        assert!(
            err.to_string().starts_with(&format!("consent.{key}: ")),
            "{err}"
        );
    }
    // The root itself is a valid path (the whole answer is the status).
    let mut c = base();
    c.status.path = "$".into();
    assert!(HttpConsentStore::with_env(&c, env).is_ok());
}

#[tokio::test]
async fn the_yaml_settings_reach_the_store() {
    let platform = Platform::start(|subject| match subject {
        "1" => answer(200, r#"{"purposes":[{"status":"GRANTED"}],"dns":false}"#),
        _ => answer(200, r#"{"purposes":[{"status":1}],"dns":false}"#),
    })
    .await;
    let yaml = format!(
        r#"
consent:
  store: http
  http:
    url: "http://{}/consent/{{subject}}?purpose={{purpose}}"
    header: x-api-token
    token_env: CMP_TOKEN
    status:
      path: $.purposes[0].status
      granted: [GRANTED, "true", true]
      withdrawn: [1]
    opt_out_all: $.dns
"#,
        platform.addr
    );
    let config = Config::from_yaml(&yaml).unwrap();
    config.validate().unwrap();
    assert_eq!(config.consent.store, StoreKind::Http);
    let http = config.consent.http.as_ref().unwrap();
    assert_eq!(
        http.status.granted,
        [json!("GRANTED"), json!("true"), json!(true)]
    );
    assert_eq!(http.timeout_ms, 800);
    assert_eq!(http.max_concurrent, 16);
    let store = HttpConsentStore::with_env(http, env).unwrap();
    let got = store.lookup_each("ads", &["1", "2"]).await.unwrap();
    assert_eq!(kind(&got[0]), Ok(Some(EventKind::Granted)));
    assert_eq!(kind(&got[1]), Ok(Some(EventKind::Withdrawn)));
    assert_eq!(platform.received()[0].target, "/consent/1?purpose=ads");

    // `store: http` without its section is refused before anything opens.
    let err = Config::from_yaml("consent:\n  store: http\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("consent.http"), "{err}");
    // And an unknown store kind names the choices.
    let err = Config::from_yaml("consent:\n  store: mongo\n").unwrap_err();
    assert!(err.contains("sqlite") && err.contains("http"), "{err}");
}

#[test]
fn the_documented_settings_parse_and_compile() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/consentry.yaml"
    ))
    .unwrap();
    let config = Config::from_yaml(&text).unwrap();
    config.validate().unwrap();
    assert_eq!(config.consent.store, StoreKind::Sqlite);
    assert!(config.consent.http.is_none());

    // The commented `http:` block, switched on.
    let mut on = String::new();
    let mut in_block = false;
    for line in text.lines() {
        in_block |= line == "  # http:";
        let line = match line.strip_prefix("  # ") {
            Some(rest) if in_block => format!("  {rest}"),
            _ => line.to_owned(),
        };
        on.push_str(&line.replace("store: sqlite", "store: http"));
        on.push('\n');
    }
    let config = Config::from_yaml(&on).unwrap_or_else(|e| panic!("{e}\n{on}"));
    config.validate().unwrap();
    assert_eq!(config.consent.store, StoreKind::Http);
    let http = config.consent.http.as_ref().unwrap();
    assert_eq!(http.token_env.as_deref(), Some("CMP_TOKEN"));
    assert_eq!(http.opt_out_all.as_deref(), Some("$.do_not_sell"));
    HttpConsentStore::with_env(http, env).unwrap();
}
