//! Cache, service and CLI tests against real SQLite files in temporary directories (the cache's
//! load tests wrap the real store to count and slow its lookups, never to fake answers). What
//! every store must do is in `conformance.rs`, run against SQLite and PostgreSQL alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};

use super::cache::{CacheConfig, ConsentService};
use super::decide::Consent;
use super::event::{ConsentEvent, EventKind, now_ms};
use super::sqlite::{SqliteStore, SqliteStoreOptions};
use super::store::{ConsentState, ConsentStore, ErasureRecord, ExportedEvent, StoreFuture};
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

// ------------------------------------------------------------------------------------------
// Holding load: coalesced misses and the bound on store lookups.

/// A real store behind a wrapper that counts lookups and how many run at once, and answers
/// each one `delay` after reading it (the answer is always the real store's).
struct Counting {
    inner: Arc<SqliteStore>,
    delay: Duration,
    calls: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<SqliteStore>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            delay,
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Counts a lookup as finished when dropped, cancelled ones included.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConsentStore for Counting {
    fn append<'a>(&'a self, events: &'a [ConsentEvent]) -> StoreFuture<'a, ()> {
        self.inner.append(events)
    }

    fn lookup<'a>(
        &'a self,
        purpose: &'a str,
        subjects: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<ConsentState>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let _finished = Finished(&self.running);
            let states = self.inner.lookup(purpose, subjects).await;
            tokio::time::sleep(self.delay).await;
            states
        })
    }

    fn history<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Vec<ConsentEvent>> {
        self.inner.history(subject)
    }

    fn erase<'a>(
        &'a self,
        subject: &'a str,
        record: &'a ErasureRecord,
    ) -> StoreFuture<'a, ErasureRecord> {
        self.inner.erase(subject, record)
    }

    fn erasures<'a>(&'a self, subject_pseudonym: &'a str) -> StoreFuture<'a, Vec<ErasureRecord>> {
        self.inner.erasures(subject_pseudonym)
    }

    fn export_page(&self, after: i64, limit: u32) -> StoreFuture<'_, Vec<ExportedEvent>> {
        self.inner.export_page(after, limit)
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A quiet store with `granted` subjects granted `m`, behind a counting wrapper.
async fn counting(dir: &tempfile::TempDir, granted: &[&str], delay: Duration) -> Arc<Counting> {
    let s = quiet_store(&db(dir)).await;
    let events: Vec<_> = granted
        .iter()
        .map(|id| ev(id, "m", EventKind::Granted, now_ms()))
        .collect();
    s.append(&events).await.unwrap();
    Counting::new(s, delay)
}

/// Decides `m` for `subjects` in a task of its own.
fn spawn_decide(
    service: &Arc<ConsentService>,
    subjects: &'static [&'static str],
) -> tokio::task::JoinHandle<Vec<Consent>> {
    let service = Arc::clone(service);
    tokio::spawn(async move {
        let m = purpose("m", LawfulBasis::Consent, false);
        service.decide_batch(&m, subjects, false).await
    })
}

#[tokio::test]
async fn concurrent_misses_for_one_subject_cause_one_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let store = counting(&dir, &["cold"], Duration::from_millis(300)).await;
    let config = CacheConfig {
        lookup_timeout: Duration::from_secs(5),
        ..CacheConfig::default()
    };
    let service = ConsentService::new(store.clone(), config);
    let mut tasks: Vec<_> = (0..20).map(|_| spawn_decide(&service, &["cold"])).collect();
    // The same subject twice in one response waits for one answer too.
    tasks.push(spawn_decide(&service, &["cold", "cold"]));
    for task in tasks {
        assert!(task.await.unwrap().iter().all(|c| *c == Consent::Granted));
    }
    assert_eq!(store.calls(), 1);
    assert_eq!(service.flights_in_progress(), 0);
}

#[tokio::test]
async fn store_lookups_in_flight_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    const SUBJECTS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let store = counting(&dir, &SUBJECTS, Duration::from_millis(100)).await;
    let config = CacheConfig {
        lookup_timeout: Duration::from_secs(5),
        max_concurrent_lookups: 2,
        ..CacheConfig::default()
    };
    let service = ConsentService::new(store.clone(), config);
    let tasks: Vec<_> = SUBJECTS
        .iter()
        .map(|s| spawn_decide(&service, std::slice::from_ref(s)))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), [Consent::Granted]);
    }
    assert_eq!(store.calls(), 8);
    assert_eq!(store.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn waiting_for_a_lookup_slot_counts_against_the_time_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = counting(&dir, &["a", "b", "c"], Duration::from_millis(400)).await;
    let config = CacheConfig {
        lookup_timeout: Duration::from_millis(600),
        max_concurrent_lookups: 1,
        ..CacheConfig::default()
    };
    let service = ConsentService::new(store.clone(), config);
    let started = std::time::Instant::now();
    let tasks = [
        spawn_decide(&service, &["a"]),
        spawn_decide(&service, &["b"]),
        spawn_decide(&service, &["c"]),
    ];
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    // One slot, 400 ms a lookup, 600 ms of budget: the first is answered; the second gets the
    // slot too late and the third not at all. Neither waits past its budget.
    outcomes.sort_by_key(|c| *c != Consent::Granted);
    assert_eq!(
        outcomes,
        [Consent::Granted, Consent::Unknown, Consent::Unknown]
    );
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert_eq!(store.max_running.load(Ordering::SeqCst), 1);
    // Nothing was stuck: the two left out are answered by the next (one) lookup.
    let m = purpose("m", LawfulBasis::Consent, false);
    assert_eq!(
        service.decide_batch(&m, &["a", "b", "c"], false).await,
        [Consent::Granted; 3]
    );
    assert_eq!(service.flights_in_progress(), 0);
}

#[tokio::test]
async fn a_dropped_request_does_not_strand_those_waiting_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = counting(&dir, &["x"], Duration::from_millis(300)).await;
    let service = ConsentService::new(
        store.clone(),
        CacheConfig {
            lookup_timeout: Duration::from_secs(5),
            ..CacheConfig::default()
        },
    );
    let first = spawn_decide(&service, &["x"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = spawn_decide(&service, &["x"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The request that started the lookup goes away (its client disconnected).
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let answer = tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .expect("the waiting request is answered")
        .unwrap();
    assert_eq!(answer, [Consent::Granted]);
    assert_eq!(store.calls(), 1);
    assert_eq!(service.flights_in_progress(), 0);
    // And the answer was cached for the next request.
    assert_eq!(service.cached_subjects(), 1);
}

#[tokio::test]
async fn a_request_after_a_write_does_not_take_an_answer_read_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = counting(&dir, &["x"], Duration::from_millis(300)).await;
    let service = ConsentService::new(
        store.clone(),
        CacheConfig {
            lookup_timeout: Duration::from_secs(5),
            ..CacheConfig::default()
        },
    );
    let m = purpose("m", LawfulBasis::Consent, false);
    // This lookup reads the grant at once, then answers 300 ms later.
    let before = spawn_decide(&service, &["x"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    service
        .record(&[ev("x", "m", EventKind::Withdrawn, now_ms())])
        .await
        .unwrap();
    assert_eq!(
        service.decide_batch(&m, &["x"], false).await,
        [Consent::Denied]
    );
    // The request that was in flight before the withdrawal may still see the grant.
    assert_eq!(before.await.unwrap(), [Consent::Granted]);
    assert_eq!(store.calls(), 2);
    // Its stale answer was not cached.
    assert_eq!(
        service.decide_batch(&m, &["x"], false).await,
        [Consent::Denied]
    );
}

/// After an erasure no byte of the subject's events is left in the database file or its
/// write-ahead log (secure_delete and a checkpoint), while other subjects' events stay.
#[tokio::test]
async fn an_erased_subject_leaves_no_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = quiet_store(&path).await;
    let mut events = Vec::new();
    for i in 0..50 {
        let mut e = ev(
            "subject-zq81-erased",
            &format!("purpose{i}"),
            EventKind::Granted,
            10,
        );
        e.proof = Some(format!("proof-zq81-{i}"));
        events.push(e);
        events.push(ev(
            "subject-kept-77",
            &format!("purpose{i}"),
            EventKind::Granted,
            10,
        ));
    }
    s.append(&events).await.unwrap();
    let on_disk = |needle: &str| {
        let mut found = false;
        for suffix in ["", "-wal"] {
            let file = format!("{}{suffix}", path.display());
            if let Ok(bytes) = std::fs::read(&file) {
                found |= bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            }
        }
        found
    };
    assert!(on_disk("zq81"));
    let record = super::store::ErasureRecord {
        subject_pseudonym: "p".repeat(64),
        at_ms: 20,
        actor: None,
        request_ref: None,
        events_removed: 0,
    };
    assert_eq!(
        s.erase("subject-zq81-erased", &record)
            .await
            .unwrap()
            .events_removed,
        50
    );
    assert!(!on_disk("zq81"), "erased bytes are still on disk");
    assert!(on_disk("subject-kept-77"));
    assert_eq!(s.history("subject-kept-77").await.unwrap().len(), 50);
}

/// A store that answers the first lookup only when told to, so that a write can land while a
/// lookup that read before it is still being cached.
struct Gated {
    inner: Arc<SqliteStore>,
    first: std::sync::atomic::AtomicBool,
    read: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl ConsentStore for Gated {
    fn append<'a>(&'a self, e: &'a [ConsentEvent]) -> StoreFuture<'a, ()> {
        self.inner.append(e)
    }
    fn lookup<'a>(&'a self, p: &'a str, s: &'a [&'a str]) -> StoreFuture<'a, Vec<ConsentState>> {
        Box::pin(async move {
            let states = self.inner.lookup(p, s).await;
            if self.first.swap(false, Ordering::SeqCst) {
                self.read.notify_one();
                self.release.notified().await;
            }
            states
        })
    }
    fn history<'a>(&'a self, s: &'a str) -> StoreFuture<'a, Vec<ConsentEvent>> {
        self.inner.history(s)
    }
    fn erase<'a>(&'a self, s: &'a str, r: &'a ErasureRecord) -> StoreFuture<'a, ErasureRecord> {
        self.inner.erase(s, r)
    }
    fn erasures<'a>(&'a self, p: &'a str) -> StoreFuture<'a, Vec<ErasureRecord>> {
        self.inner.erasures(p)
    }
    fn export_page(&self, a: i64, l: u32) -> StoreFuture<'_, Vec<ExportedEvent>> {
        self.inner.export_page(a, l)
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// While a large lookup that read a grant before a withdrawal is being cached, no request made
/// after the withdrawal returned sees that grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_cached_across_a_withdrawal_never_shows_its_grant() {
    let dir = tempfile::tempdir().unwrap();
    let s = quiet_store(&db(&dir)).await;
    s.append(&[ev("x", "m", EventKind::Granted, now_ms() - HOUR)])
        .await
        .unwrap();
    let store = Arc::new(Gated {
        inner: s,
        first: true.into(),
        read: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let service = ConsentService::new(
        store.clone(),
        CacheConfig {
            lookup_timeout: Duration::from_secs(60),
            max_subjects: 1_000_000,
            ..CacheConfig::default()
        },
    );
    let m = purpose("m", LawfulBasis::Consent, false);
    let mut subjects = vec!["x".to_owned()];
    subjects.extend((0..100_000).map(|i| format!("other-{i}")));
    let big = {
        let (service, m) = (Arc::clone(&service), m.clone());
        tokio::spawn(async move {
            let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
            service.decide_batch(&m, &refs, false).await[0]
        })
    };
    store.read.notified().await;
    service
        .record(&[ev("x", "m", EventKind::Withdrawn, now_ms())])
        .await
        .unwrap();
    store.release.notify_one();
    let (mut granted, mut asked) = (0usize, 0usize);
    while !big.is_finished() {
        asked += 1;
        if service.decide_batch(&m, &["x"], false).await == [Consent::Granted] {
            granted += 1;
        }
    }
    assert_eq!(
        granted, 0,
        "{granted} of {asked} requests after the withdrawal got the stale grant"
    );
}

/// A reader that holds an old snapshot during an erasure keeps the write-ahead log from being
/// emptied at once; once it is gone, the log is emptied without waiting for another erasure.
#[tokio::test]
async fn erased_bytes_leave_the_log_once_a_blocking_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = Arc::new(
        SqliteStore::open_with(
            &path,
            SqliteStoreOptions {
                watch_interval: None,
                busy_timeout: Duration::from_millis(200),
                ..SqliteStoreOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let mut e = ev("subject-zq81-erased", "m", EventKind::Granted, 10);
    e.proof = Some("proof-zq81".into());
    s.append(&[e]).await.unwrap();
    let in_wal = |n: &str| {
        std::fs::read(format!("{}-wal", path.display()))
            .map(|b| b.windows(n.len()).any(|w| w == n.as_bytes()))
            .unwrap_or(false)
    };
    assert!(in_wal("zq81"));
    let mut reader = raw(&path).await;
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM consent_events;")
        .execute(&mut reader)
        .await
        .unwrap();
    let record = ErasureRecord {
        subject_pseudonym: "p".repeat(64),
        at_ms: 20,
        actor: None,
        request_ref: None,
        events_removed: 0,
    };
    s.erase("subject-zq81-erased", &record).await.unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    drop(reader);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while in_wal("zq81") {
        assert!(
            std::time::Instant::now() < deadline,
            "the erased subject's id and proof are still in consent.db-wal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.history("subject-zq81-erased").await.unwrap(), []);
}
