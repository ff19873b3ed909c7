//! Gateways on PostgreSQL: two replicas on one database honour each other's writes within a
//! second, and a database that goes away means refusals (never data) until it comes back, when
//! service resumes by itself.

use std::time::{Duration, Instant};

use consentry::consent::event::{ConsentEvent, EventKind, now_ms};
use consentry::consent::postgres::{PostgresStore, PostgresStoreOptions};
use consentry::consent::store::ConsentStore;
use http::StatusCode;
use serde_json::json;

use crate::support::postgres::{PgSchema, Relay};
use crate::support::{Call, Gw, Reply, Resp, Upstream, contact, contacts};

/// One contact per id in the path, a list of `1` and `2` otherwise.
async fn crm() -> Upstream {
    Upstream::serve(|seen| match seen.target.rsplit_once('/') {
        Some((_, id)) if id != "contacts" => Reply::json(&contact(id)),
        _ => Reply::json(&contacts(&["1", "2"])),
    })
    .await
}

fn marketing(gw: &Gw, id: &str) -> Call {
    gw.get(&format!("/crm/v3/objects/contacts/{id}"))
        .purpose("marketing")
}

/// Sends `call()` until it answers `want`, for at most `within`; every other answer must be
/// `before`. How long it took.
async fn until(
    call: impl Fn() -> Call,
    before: StatusCode,
    want: StatusCode,
    within: Duration,
) -> (Duration, Resp) {
    let started = Instant::now();
    loop {
        let rsp = call().send().await;
        if rsp.status == want {
            return (started.elapsed(), rsp);
        }
        assert_eq!(rsp.status, before, "{}", rsp.text());
        assert!(
            started.elapsed() < within,
            "still {} after {within:?}",
            rsp.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_replicas_on_one_database_honour_each_others_grants_and_withdrawals() {
    let Some(db) = PgSchema::create("replicas::two_replicas_on_one_database").await else {
        return;
    };
    let up = crm().await;
    let a = crate::support::gateway(&up)
        .postgres(&db.url())
        .start()
        .await;
    let b = crate::support::gateway(&up)
        .postgres(&db.url())
        .start()
        .await;
    let second = Duration::from_secs(1);

    // B asks first: nothing is recorded, so it refuses, and caches that answer (for a minute).
    marketing(&b, "1")
        .send()
        .await
        .assert_refused(403, "no_lawful_basis");
    assert_eq!(b.gateway.consent.cached_subjects(), 1);

    // A grant recorded through A is honoured by B within a second, cached answer or not.
    a.grant("1", "marketing").await;
    let (took, rsp) = until(
        || marketing(&b, "1"),
        StatusCode::FORBIDDEN,
        StatusCode::OK,
        second,
    )
    .await;
    assert_eq!(rsp.ok_json()["id"], "1");
    eprintln!("B honoured A's grant after {took:?}");

    // B's cache is warm with the grant: the answers below come from memory.
    for _ in 0..3 {
        assert_eq!(marketing(&b, "1").send().await.ok_json()["id"], "1");
        assert_eq!(b.gateway.consent.cached_subjects(), 1);
    }

    // A withdrawal recorded through A: B refuses within a second, long before its cache's TTL.
    a.record("1", "marketing", EventKind::Withdrawn, None).await;
    let (took, rsp) = until(
        || marketing(&b, "1"),
        StatusCode::OK,
        StatusCode::FORBIDDEN,
        second,
    )
    .await;
    rsp.assert_refused(403, "no_lawful_basis");
    assert!(!rsp.text().contains("ada1"));
    eprintln!("B refused after A's withdrawal within {took:?}");
    // A, which recorded it, refuses at once.
    marketing(&a, "1")
        .send()
        .await
        .assert_refused(403, "no_lawful_basis");

    // The same the other way round, and for lists.
    b.grant("2", "marketing").await;
    let list = || a.get("/crm/v3/objects/contacts").purpose("marketing");
    let started = Instant::now();
    loop {
        let body = list().send().await.ok_json();
        if body["results"].as_array().map(Vec::len) == Some(1) {
            assert_eq!(body["results"][0]["id"], "2");
            break;
        }
        assert_eq!(body["results"], json!([]));
        assert!(started.elapsed() < second, "A did not see B's grant");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_unreachable_database_means_refusals_then_service_resumes_by_itself() {
    let Some(db) = PgSchema::create("replicas::an_unreachable_database").await else {
        return;
    };
    let lookup_timeout = Duration::from_millis(1_000);
    let mut relay = Relay::start(db.server()).await;
    let up = crm().await;
    // The default cache TTL (a minute): what ends cached grants in an outage is the lost
    // change listener, not their age.
    let gw = crate::support::gateway(&up)
        .postgres(&db.url_via(relay.addr))
        .config(|c| {
            c.consent.lookup_timeout_ms = 1_000;
            c.consent.postgres.connect_timeout_ms = 300;
        })
        .start()
        .await;
    gw.grant("1", "marketing").await;
    assert_eq!(marketing(&gw, "1").send().await.ok_json()["id"], "1");
    assert_eq!(gw.gateway.consent.cached_subjects(), 1);

    relay.cut().await;

    // The gateway cannot hear about withdrawals any more: it forgets what it cached, and
    // refuses within a second.
    let (took, _) = until(
        || marketing(&gw, "1"),
        StatusCode::OK,
        StatusCode::FORBIDDEN,
        Duration::from_secs(1),
    )
    .await;
    eprintln!("refusing {took:?} after the cut");
    // While the database is away, every answer that needs consent is a refusal, never data,
    // and comes within the lookup timeout: nothing hangs.
    for _ in 0..3 {
        let started = Instant::now();
        let rsp = marketing(&gw, "1").send().await;
        rsp.assert_refused(403, "no_lawful_basis");
        assert!(!rsp.text().contains("ada1"));
        assert!(
            started.elapsed() < lookup_timeout + Duration::from_millis(500),
            "a refusal took {:?}",
            started.elapsed()
        );
    }
    let rsp = gw
        .get("/crm/v3/objects/contacts")
        .purpose("marketing")
        .send()
        .await;
    assert_eq!(rsp.ok_json()["results"], json!([]));
    assert!(!rsp.text().contains("example.com"));
    // The gateway itself is up: a purpose that needs no consent lookup is served.
    assert_eq!(
        gw.get("/crm/v3/objects/contacts/1")
            .purpose("support")
            .send()
            .await
            .ok_json()["id"],
        "1"
    );

    relay.restore().await;

    // Service resumes by itself.
    let (took, rsp) = until(
        || marketing(&gw, "1"),
        StatusCode::FORBIDDEN,
        StatusCode::OK,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(rsp.ok_json()["id"], "1");
    eprintln!("serving again {took:?} after the restore");
    // The change listener comes back too (it retries with backoff)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while db.listeners().await != 1 {
        assert!(
            Instant::now() < deadline,
            "the change listener did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...new grants apply (and, once the notifications of this write have passed, stay
    // cached)...
    gw.grant("2", "marketing").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(marketing(&gw, "2").send().await.ok_json()["id"], "2");
    assert!(gw.gateway.consent.cached_subjects() >= 1);
    // ...and a withdrawal written elsewhere (another replica, the CLI) ends the cached grant
    // within a second.
    let other = PostgresStore::open(
        &db.url(),
        PostgresStoreOptions {
            listen: false,
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .unwrap();
    other
        .append(&[ConsentEvent {
            subject: "2".into(),
            purpose: "marketing".into(),
            kind: EventKind::Withdrawn,
            at_ms: now_ms(),
            expires_at_ms: None,
            source: Some("cli".into()),
            proof: None,
            actor: None,
            recorded_at_ms: None,
        }])
        .await
        .unwrap();
    let (took, rsp) = until(
        || marketing(&gw, "2"),
        StatusCode::OK,
        StatusCode::FORBIDDEN,
        Duration::from_secs(1),
    )
    .await;
    rsp.assert_refused(403, "no_lawful_basis");
    eprintln!("a withdrawal written elsewhere was honoured after {took:?}");
}
