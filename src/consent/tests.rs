//! Cache, service and CLI tests against real SQLite files in temporary directories. What every
//! store must do is in `conformance.rs`, run against SQLite and PostgreSQL alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};

use super::cache::{CacheConfig, ConsentService};
use super::decide::Consent;
use super::event::{ConsentEvent, EventKind, now_ms};
use super::sqlite::{SqliteStore, SqliteStoreOptions};
use super::store::ConsentStore;
use crate::cli::consent::{ConsentCommand, run};
use crate::policy::compiled::{LawfulBasis, Purpose};

const HOUR: i64 = 3_600_000;

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("consent.db")
}

fn ev(subject: &str, purpose: &str, kind: EventKind, at_ms: i64) -> ConsentEvent {
    ConsentEvent {
        subject: subject.into(),
        purpose: purpose.into(),
        kind,
        at_ms,
        expires_at_ms: None,
        source: Some("test".into()),
        proof: None,
        actor: None,
        recorded_at_ms: None,
    }
}

fn purpose(name: &str, basis: LawfulBasis, sale_or_sharing: bool) -> Purpose {
    Purpose {
        name: name.into(),
        basis,
        sale_or_sharing,
    }
}

async fn store(path: &Path) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(path).await.unwrap())
}

/// A store without the change watcher, so a test controls invalidation itself.
async fn quiet_store(path: &Path) -> Arc<SqliteStore> {
    let options = SqliteStoreOptions {
        watch_interval: None,
        ..SqliteStoreOptions::default()
    };
    Arc::new(SqliteStore::open_with(path, options).await.unwrap())
}

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn decisions_through_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&db(&dir)).await;
    let service = ConsentService::new(s.clone(), CacheConfig::default());
    let now = now_ms();
    let marketing = purpose("marketing", LawfulBasis::Consent, false);
    let profiling = purpose("profiling", LawfulBasis::LegitimateInterest, false);
    let sale = purpose("data_sale", LawfulBasis::Consent, true);
    let support = purpose("support", LawfulBasis::Contract, false);

    let mut expired = ev("expired", "marketing", EventKind::Granted, now - 2 * HOUR);
    expired.expires_at_ms = Some(now - HOUR);
    let mut live = ev("live", "marketing", EventKind::Granted, now - 2 * HOUR);
    live.expires_at_ms = Some(now + HOUR);
    service
        .record(&[
            expired,
            live,
            ev("withdrew", "marketing", EventKind::Granted, now - 2 * HOUR),
            ev("withdrew", "marketing", EventKind::Withdrawn, now - HOUR),
            ev("objector", "profiling", EventKind::Objected, now - HOUR),
            ev("sold", "data_sale", EventKind::Granted, now - 3 * HOUR),
            ev("sold", "*", EventKind::OptedOut, now - 2 * HOUR),
            ev("regranted", "data_sale", EventKind::Granted, now - 3 * HOUR),
            ev("regranted", "*", EventKind::OptedOut, now - 2 * HOUR),
            ev("regranted", "data_sale", EventKind::Granted, now - HOUR),
        ])
        .await
        .unwrap();

    let subjects = ["expired", "live", "withdrew", "nobody"];
    assert_eq!(
        service.decide_batch(&marketing, &subjects, false).await,
        [
            Consent::Denied,
            Consent::Granted,
            Consent::Denied,
            Consent::Denied
        ]
    );
    assert_eq!(
        service
            .decide_batch(&profiling, &["objector", "nobody"], false)
            .await,
        [Consent::Denied, Consent::Granted]
    );
    assert_eq!(
        service
            .decide_batch(&sale, &["sold", "regranted", "nobody"], false)
            .await,
        [Consent::Denied, Consent::Granted, Consent::Denied]
    );
    assert_eq!(
        service.decide_batch(&sale, &["regranted"], true).await,
        [Consent::Denied]
    );
    // The `*` opt-out does not touch a purpose that is not sale or sharing.
    assert_eq!(
        service.decide_batch(&support, &["sold"], false).await,
        [Consent::Granted]
    );

    // A withdrawal through the service applies at once (its cache entry is dropped).
    service
        .record(&[ev("live", "marketing", EventKind::Withdrawn, now)])
        .await
        .unwrap();
    assert_eq!(
        service.decide_batch(&marketing, &["live"], false).await,
        [Consent::Denied]
    );
    // And a `*` opt-out drops the subject's cached sale state too.
    service
        .record(&[ev("regranted", "*", EventKind::OptedOut, now)])
        .await
        .unwrap();
    assert_eq!(
        service.decide_batch(&sale, &["regranted"], false).await,
        [Consent::Denied]
    );
}

#[tokio::test]
async fn reopening_keeps_events_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = store(&path).await;
    s.append(&[ev("a", "m", EventKind::Granted, now_ms())])
        .await
        .unwrap();
    s.close().await;
    drop(s);
    let s = store(&path).await;
    assert_eq!(s.history("a").await.unwrap().len(), 1);
}

#[tokio::test]
async fn cache_hits_do_not_query_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = quiet_store(&path).await;
    let service = ConsentService::new(s.clone(), CacheConfig::default());
    let marketing = purpose("marketing", LawfulBasis::Consent, false);
    s.append(&[
        ev("warm", "marketing", EventKind::Granted, now_ms()),
        ev("cold", "marketing", EventKind::Granted, now_ms()),
    ])
    .await
    .unwrap();
    assert_eq!(
        service.decide_batch(&marketing, &["warm"], false).await,
        [Consent::Granted]
    );

    sqlx::query("DROP TABLE consent_events")
        .execute(&mut raw(&path).await)
        .await
        .unwrap();

    // FAIL-CLOSED: the hit still answers; the miss cannot be looked up and is Unknown.
    assert_eq!(
        service
            .decide_batch(&marketing, &["warm", "cold"], false)
            .await,
        [Consent::Granted, Consent::Unknown]
    );
    service.invalidate_all();
    assert_eq!(
        service.decide_batch(&marketing, &["warm"], false).await,
        [Consent::Unknown]
    );
}

#[tokio::test]
async fn a_failing_store_yields_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = quiet_store(&path).await;
    let service = ConsentService::new(s.clone(), CacheConfig::default());
    sqlx::query("DROP TABLE consent_events")
        .execute(&mut raw(&path).await)
        .await
        .unwrap();
    let consent = purpose("marketing", LawfulBasis::Consent, false);
    let li = purpose("profiling", LawfulBasis::LegitimateInterest, false);
    let contract = purpose("support", LawfulBasis::Contract, false);
    assert_eq!(
        service.decide_batch(&consent, &["a", "b"], false).await,
        [Consent::Unknown, Consent::Unknown]
    );
    // Even where "nothing recorded" would be a grant.
    assert_eq!(
        service.decide_batch(&li, &["a"], false).await,
        [Consent::Unknown]
    );
    // No lookup at all for a basis that needs none.
    assert_eq!(
        service.decide_batch(&contract, &["a"], false).await,
        [Consent::Granted]
    );
    assert!(
        service
            .record(&[ev("a", "marketing", EventKind::Granted, now_ms())])
            .await
            .is_err()
    );
    assert_eq!(service.cached_subjects(), 0);
}

#[tokio::test]
async fn a_lookup_over_its_time_budget_yields_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteStoreOptions {
        watch_interval: None,
        max_connections: 1,
        ..SqliteStoreOptions::default()
    };
    let s = Arc::new(SqliteStore::open_with(db(&dir), options).await.unwrap());
    s.append(&[ev("a", "m", EventKind::Granted, now_ms())])
        .await
        .unwrap();
    let config = CacheConfig {
        lookup_timeout: Duration::from_millis(100),
        ..CacheConfig::default()
    };
    let service = ConsentService::new(s.clone(), config);
    let m = purpose("m", LawfulBasis::Consent, false);

    // Holding the only connection makes the lookup wait (seconds) far past its budget.
    let held = s.pool().acquire().await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        service.decide_batch(&m, &["a"], false).await,
        [Consent::Unknown]
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(service.cached_subjects(), 0);

    drop(held);
    assert_eq!(
        service.decide_batch(&m, &["a"], false).await,
        [Consent::Granted]
    );
}

#[tokio::test]
async fn the_size_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = quiet_store(&db(&dir)).await;
    let config = CacheConfig {
        max_subjects: 10,
        ..CacheConfig::default()
    };
    let service = ConsentService::new(s, config);
    let m = purpose("m", LawfulBasis::Consent, false);
    for i in 0..25 {
        let id = format!("s{i}");
        service.decide_batch(&m, &[id.as_str()], false).await;
        assert!(service.cached_subjects() <= 10);
    }
    assert!(service.cached_subjects() > 0);
}

#[tokio::test]
async fn another_process_writing_invalidates_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let gateway = store(&path).await;
    let service = ConsentService::new(gateway.clone(), CacheConfig::default());
    let m = purpose("m", LawfulBasis::Consent, false);
    service
        .record(&[
            ev("a", "m", EventKind::Granted, now_ms()),
            ev("b", "m", EventKind::Granted, now_ms()),
        ])
        .await
        .unwrap();
    assert_eq!(
        service.decide_batch(&m, &["a", "b"], false).await,
        [Consent::Granted, Consent::Granted]
    );

    // Our own writes do not flush the cache: only the recorded subject is dropped.
    service
        .record(&[ev("c", "m", EventKind::Granted, now_ms())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(service.cached_subjects(), 2);

    // A second store on the same file (as the CLI would be) withdraws `a`.
    let cli = quiet_store(&path).await;
    cli.append(&[ev("a", "m", EventKind::Withdrawn, now_ms())])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while service.cached_subjects() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not invalidate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        service.decide_batch(&m, &["a", "b"], false).await,
        [Consent::Denied, Consent::Granted]
    );
}

#[tokio::test]
async fn cli_records_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = crate::config::Config {
        data_dir: data.clone(),
        ..crate::config::Config::default()
    };
    run(
        &config,
        ConsentCommand::Grant {
            subject: "42".into(),
            purpose: "marketing".into(),
            expires: Some("2999-01-01T00:00:00Z".into()),
            source: "cli".into(),
            proof: Some("ticket-1".into()),
        },
    )
    .await
    .unwrap();
    run(
        &config,
        ConsentCommand::OptOut {
            subject: "42".into(),
            purpose: "*".into(),
            source: "cli".into(),
            proof: None,
        },
    )
    .await
    .unwrap();

    let csv = dir.path().join("events.csv");
    std::fs::write(
        &csv,
        "subject,purpose,kind,at,expires_at,source,proof\n\
         42,analytics,granted,2024-01-01T00:00:00Z,,web_form,\"form, v2\"\n\
         43,analytics,objected,2024-01-02T00:00:00Z,,,\n",
    )
    .unwrap();
    run(
        &config,
        ConsentCommand::Import {
            file: csv,
            format: None,
            source: "import".into(),
        },
    )
    .await
    .unwrap();

    let jsonl = dir.path().join("events.ndjson");
    std::fs::write(
        &jsonl,
        "{\"subject\":\"44\",\"purpose\":\"ads\",\"kind\":\"granted\"}\n\
         {\"subject\":\"44\",\"purpose\":\"*\",\"kind\":\"opted_out\",\"at\":\"2024-01-01T00:00:00Z\",\"source\":\"gpc\"}\n",
    )
    .unwrap();
    run(
        &config,
        ConsentCommand::Import {
            file: jsonl,
            format: None,
            source: "import".into(),
        },
    )
    .await
    .unwrap();

    let s = store(&data.join("consent.db")).await;
    let h42 = s.history("42").await.unwrap();
    assert_eq!(h42.len(), 3);
    // Oldest first: the imported 2024 grant precedes the CLI events.
    assert_eq!(h42[0].purpose, "analytics");
    assert_eq!(h42[0].proof.as_deref(), Some("form, v2"));
    assert_eq!(h42[1].kind, EventKind::Granted);
    assert_eq!(h42[1].proof.as_deref(), Some("ticket-1"));
    assert!(h42[1].expires_at_ms.is_some());
    assert_eq!(h42[2].kind, EventKind::OptedOut);
    assert_eq!(h42[2].purpose, "*");
    let h43 = s.history("43").await.unwrap();
    assert_eq!(h43[0].source.as_deref(), Some("import"));
    let h44 = s.history("44").await.unwrap();
    assert_eq!(h44.len(), 2);
    assert_eq!(h44[0].source.as_deref(), Some("gpc"));
    assert_eq!(h44[1].source.as_deref(), Some("import"));
    // Every event names who recorded it: the shell user for commands and imports alike.
    assert!(
        h42.iter()
            .chain(&h43)
            .chain(&h44)
            .all(|e| e.actor.as_deref().is_some_and(|a| a.starts_with("cli:"))),
        "{h42:?}"
    );
    assert!(h42.iter().all(|e| e.recorded_at_ms.is_some()));

    // A data subject request: erase 42; the history goes, a pseudonymised record stays.
    run(
        &config,
        ConsentCommand::Erase {
            subject: "42".into(),
            request_ref: Some("dsr-7".into()),
        },
    )
    .await
    .unwrap();
    assert!(s.history("42").await.unwrap().is_empty());
    assert_eq!(s.history("43").await.unwrap().len(), 1);
    let key = super::erasure::ErasureKey::load_or_create(&config.erasure_key_path()).unwrap();
    let erasures = s.erasures(&key.pseudonym("42")).await.unwrap();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].events_removed, 3);
    assert_eq!(erasures[0].request_ref.as_deref(), Some("dsr-7"));
    assert!(s.erasures(&key.pseudonym("43")).await.unwrap().is_empty());
    // Nothing in the database names the erased subject any more.
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM consent_events WHERE subject = '42' \
         UNION ALL SELECT count(*) FROM erasures WHERE subject_pseudonym = '42'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn an_import_with_a_bad_line_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = crate::config::Config {
        data_dir: data.clone(),
        ..crate::config::Config::default()
    };
    let csv = dir.path().join("events.txt");
    std::fs::write(
        &csv,
        "subject,purpose,kind,at,expires_at,source,proof\n\
         1,m,granted,,,,\n\
         2,m,granted,,,,\n\
         3,m,granted,not-a-date,,,\n\
         4,m,granted,,,,\n",
    )
    .unwrap();
    // No known extension: the format must be given.
    let cmd = |format| ConsentCommand::Import {
        file: csv.clone(),
        format,
        source: "import".into(),
    };
    assert!(run(&config, cmd(None)).await.is_err());
    let err = run(&config, cmd(Some(crate::cli::consent::ImportFormat::Csv)))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("line 4"), "{err:#}");

    let jsonl = dir.path().join("events.jsonl");
    std::fs::write(
        &jsonl,
        "{\"subject\":\"1\",\"purpose\":\"m\",\"kind\":\"granted\"}\n\
         {\"subject\":\"2\",\"purpose\":\"m\",\"kind\":\"grant\"}\n",
    )
    .unwrap();
    let err = run(
        &config,
        ConsentCommand::Import {
            file: jsonl,
            format: None,
            source: "import".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("line 2"), "{err:#}");

    let s = store(&data.join("consent.db")).await;
    for subject in ["1", "2", "3", "4"] {
        assert!(s.history(subject).await.unwrap().is_empty());
    }
}
