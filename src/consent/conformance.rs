//! The store conformance suite: the same test functions run against [`SqliteStore`] (a file in
//! a temporary directory) and [`PostgresStore`] (a fresh schema of the test database), so that
//! the two cannot drift apart on what the rest of the gateway relies on.
//!
//! It owns what every [`ConsentStore`] must do, and the test databases. It must never mock a
//! database, and never touch anything outside its own temporary directory or schema.
//!
//! PostgreSQL tests need `CONSENTRY_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Without it they print that they were skipped and
//! pass, unless `CONSENTRY_TEST_REQUIRE_POSTGRES=1`, which makes them fail instead (CI sets both).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, SqliteConnection};

use super::event::{ConsentEvent, EventKind, now_ms};
use super::postgres::{PostgresStore, PostgresStoreOptions};
use super::sqlite::{SqliteStore, SqliteStoreOptions};
use super::store::{ConsentState, ConsentStore, ErasureRecord};

const HOUR: i64 = 3_600_000;
/// How long a change may take to be announced before a test fails.
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(3);

// ------------------------------------------------------------------------------------------
// The test PostgreSQL database.

/// The test database's address, or `None` (with a line saying so) when the tests may skip.
pub(crate) fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("CONSENTRY_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CONSENTRY_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{test}: CONSENTRY_TEST_REQUIRE_POSTGRES=1 but CONSENTRY_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipped {test}: CONSENTRY_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A schema of its own in the test database, dropped (with everything in it) on drop.
pub(crate) struct TestSchema {
    base: PgConnectOptions,
    name: String,
}

impl TestSchema {
    /// A new, empty schema; `None` when PostgreSQL tests are skipped.
    pub(crate) async fn create(test: &str) -> Option<Self> {
        let url = postgres_url(test)?;
        let base = PgConnectOptions::from_str(&url).expect("CONSENTRY_TEST_POSTGRES_URL parses");
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("randomness");
        let name = format!("t_{}", hex::encode(random));
        let mut conn = PgConnection::connect_with(&base)
            .await
            .expect("the test database is reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        conn.close().await.expect("close");
        Some(Self { base, name })
    }

    /// Connect options whose `search_path` is this schema.
    pub(crate) fn options(&self) -> PgConnectOptions {
        self.base.clone().options([("search_path", &self.name)])
    }

    /// A connection to this schema, outside any store.
    pub(crate) async fn connect(&self) -> PgConnection {
        PgConnection::connect_with(&self.options())
            .await
            .expect("connect to the test schema")
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let base = self.base.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&base).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test schema {}", self.name);
        }
    }
}

// ------------------------------------------------------------------------------------------
// One harness, two stores.

/// Where a test's stores live: several store instances may be opened on it, as several
/// processes or replicas would.
enum Harness {
    Sqlite(tempfile::TempDir),
    Postgres(Box<TestSchema>),
}

impl Harness {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("a temp dir"))
    }

    async fn postgres(test: &str) -> Option<Self> {
        TestSchema::create(test)
            .await
            .map(|s| Self::Postgres(Box::new(s)))
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// A store instance that announces changes made elsewhere.
    async fn open(&self) -> Arc<dyn ConsentStore> {
        self.open_with(true).await
    }

    /// A store instance without a change feed (as a one-shot command opens it).
    async fn quiet(&self) -> Arc<dyn ConsentStore> {
        self.open_with(false).await
    }

    async fn open_with(&self, feed: bool) -> Arc<dyn ConsentStore> {
        match self {
            Self::Sqlite(dir) => {
                let options = SqliteStoreOptions {
                    watch_interval: feed.then_some(Duration::from_millis(50)),
                    ..SqliteStoreOptions::default()
                };
                Arc::new(
                    SqliteStore::open_with(dir.path().join("consent.db"), options)
                        .await
                        .expect("the SQLite store opens"),
                )
            }
            Self::Postgres(schema) => {
                let options = PostgresStoreOptions {
                    max_connections: 4,
                    acquire_timeout: Duration::from_secs(5),
                    listen: feed,
                    ..PostgresStoreOptions::default()
                };
                Arc::new(
                    PostgresStore::open_with(schema.options(), options)
                        .await
                        .expect("the PostgreSQL store opens"),
                )
            }
        }
    }

    /// Runs SQL on a connection of its own, outside any store; the database's error as text.
    async fn exec(&self, sql: &str) -> Result<u64, String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(dir) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("consent.db"));
                let mut conn = SqliteConnection::connect_with(&options)
                    .await
                    .expect("open");
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| e.to_string())
            }
            Self::Postgres(schema) => sqlx::raw_sql(sql)
                .execute(&mut schema.connect().await)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string()),
        }
    }
}

/// Declares each listed `async fn name(&Harness)` as two tests, `sqlite::name` and
/// `postgres::name`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Harness::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let test = concat!("postgres::", stringify!($name));
                    if let Some(h) = super::Harness::postgres(test).await {
                        super::$name(&h).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    append_and_lookup,
    an_invalid_event_writes_nothing,
    an_append_the_database_refuses_midway_writes_nothing,
    ties_in_time_go_to_the_later_row,
    opt_outs_of_every_purpose,
    history_is_oldest_first,
    erasure_removes_events_and_keeps_a_record,
    the_record_is_append_only_in_the_database,
    export_pages_cover_every_event_in_order,
    a_lookup_larger_than_a_chunk_keeps_the_order_of_subjects,
    a_write_through_another_instance_is_announced,
    migrations_run_twice_and_at_once,
);

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

fn kinds(states: &[ConsentState]) -> Vec<Option<EventKind>> {
    states.iter().map(|s| s.latest.map(|l| l.kind)).collect()
}

fn erasure(pseudonym: &str, at_ms: i64) -> ErasureRecord {
    ErasureRecord {
        subject_pseudonym: pseudonym.into(),
        at_ms,
        actor: Some("admin:dpo".into()),
        request_ref: Some("dsr-1".into()),
        events_removed: 999,
    }
}

// ------------------------------------------------------------------------------------------
// The suite.

async fn append_and_lookup(h: &Harness) {
    let s = h.quiet().await;
    let now = now_ms();
    let mut grant = ev("1", "marketing", EventKind::Granted, now - HOUR);
    grant.expires_at_ms = Some(now + HOUR);
    grant.proof = Some("form-7".into());
    grant.actor = Some("admin:web".into());
    s.append(&[grant, ev("2", "analytics", EventKind::Granted, now)])
        .await
        .unwrap();

    let states = s.lookup("marketing", &["1", "2", "3"]).await.unwrap();
    assert_eq!(kinds(&states), [Some(EventKind::Granted), None, None]);
    let latest = states[0].latest.unwrap();
    assert_eq!(latest.order.at_ms, now - HOUR);
    assert_eq!(latest.expires_at_ms, Some(now + HOUR));
    assert_eq!(states[0].opted_out_all, None);
    assert!(s.lookup("marketing", &[]).await.unwrap().is_empty());

    // Every field comes back as written; the store stamps when it recorded.
    let history = s.history("1").await.unwrap();
    assert_eq!(history.len(), 1);
    let e = &history[0];
    assert_eq!(
        (e.source.as_deref(), e.proof.as_deref(), e.actor.as_deref()),
        (Some("test"), Some("form-7"), Some("admin:web"))
    );
    let recorded = e.recorded_at_ms.expect("the store records when");
    assert!((now - 1000..=now_ms()).contains(&recorded), "{recorded}");
    // An import of an export keeps the original recording time.
    let mut imported = ev("3", "marketing", EventKind::Withdrawn, now - 2 * HOUR);
    imported.recorded_at_ms = Some(now - 2 * HOUR + 5);
    s.append(&[imported.clone()]).await.unwrap();
    assert_eq!(s.history("3").await.unwrap(), [imported]);
}

async fn an_invalid_event_writes_nothing(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    let err = s
        .append(&[
            ev("a", "m", EventKind::Granted, t),
            ev("a", "*", EventKind::Granted, t),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("event 1"), "{err}");
    let mut lapsing_withdrawal = ev("b", "m", EventKind::Withdrawn, t);
    lapsing_withdrawal.expires_at_ms = Some(t + HOUR);
    assert!(
        s.append(&[ev("b", "m", EventKind::Granted, t), lapsing_withdrawal])
            .await
            .is_err()
    );
    assert!(s.history("a").await.unwrap().is_empty());
    assert!(s.history("b").await.unwrap().is_empty());
    assert!(s.export_page(0, 100).await.unwrap().is_empty());
}

async fn an_append_the_database_refuses_midway_writes_nothing(h: &Harness) {
    let s = h.quiet().await;
    // The database itself refuses one row, after others of the batch went in.
    let refuse = if h.is_postgres() {
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'refused'; END $$; \
         CREATE TRIGGER refuse_boom BEFORE INSERT ON consent_events FOR EACH ROW \
         WHEN (NEW.subject = 'boom') EXECUTE FUNCTION refuse_boom();"
    } else {
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON consent_events WHEN NEW.subject = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END;"
    };
    h.exec(refuse).await.unwrap();
    let t = now_ms();
    // Past the first statement of a chunked append too.
    let mut batch: Vec<_> = (0..1500)
        .map(|i| ev(&format!("fine{i}"), "m", EventKind::Granted, t))
        .collect();
    batch.push(ev("boom", "m", EventKind::Granted, t));
    let err = s.append(&batch).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(s.history("fine0").await.unwrap().is_empty());
    assert!(s.history("fine1499").await.unwrap().is_empty());
    assert!(s.export_page(0, 100).await.unwrap().is_empty());
}

async fn ties_in_time_go_to_the_later_row(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    // In one batch, the later event of the batch wins.
    s.append(&[
        ev("a", "m", EventKind::Granted, t),
        ev("a", "m", EventKind::Withdrawn, t),
        ev("c", "m", EventKind::Withdrawn, t),
        ev("c", "m", EventKind::Granted, t),
    ])
    .await
    .unwrap();
    // Across batches, the later batch wins.
    s.append(&[ev("b", "m", EventKind::Withdrawn, t)])
        .await
        .unwrap();
    s.append(&[ev("b", "m", EventKind::Granted, t)])
        .await
        .unwrap();
    // An older event appended later does not win.
    s.append(&[ev("b", "m", EventKind::Objected, t - 1)])
        .await
        .unwrap();
    let states = s.lookup("m", &["a", "b", "c"]).await.unwrap();
    assert_eq!(
        kinds(&states),
        [
            Some(EventKind::Withdrawn),
            Some(EventKind::Granted),
            Some(EventKind::Granted)
        ]
    );
    let (a, b) = (states[0].latest.unwrap(), states[1].latest.unwrap());
    assert_eq!(a.order.at_ms, t);
    assert!(a.order.seq < b.order.seq, "insertion order breaks ties");
}

async fn opt_outs_of_every_purpose(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    s.append(&[
        ev("x", "sale", EventKind::Granted, t - 3 * HOUR),
        ev("x", "*", EventKind::OptedOut, t - 2 * HOUR),
        ev("x", "*", EventKind::OptedOut, t - HOUR),
        ev("y", "sale", EventKind::Granted, t - 3 * HOUR),
        ev("y", "*", EventKind::OptedOut, t - 2 * HOUR),
        ev("y", "sale", EventKind::Granted, t - HOUR),
        ev("z", "*", EventKind::OptedOut, t - HOUR),
    ])
    .await
    .unwrap();
    let states = s.lookup("sale", &["x", "y", "z", "w"]).await.unwrap();
    assert_eq!(
        kinds(&states),
        [
            Some(EventKind::Granted),
            Some(EventKind::Granted),
            None,
            None
        ]
    );
    // The latest `*` opt-out, with its place in the history, for the decision to compare.
    let x_out = states[0].opted_out_all.unwrap();
    assert_eq!(x_out.at_ms, t - HOUR);
    let y_out = states[1].opted_out_all.unwrap();
    assert!(y_out < states[1].latest.unwrap().order);
    assert_eq!(states[2].opted_out_all.map(|o| o.at_ms), Some(t - HOUR));
    assert_eq!(states[3].opted_out_all, None);
    // The `*` opt-out is reported for any purpose looked up, even one never named.
    let other = s.lookup("newsletter", &["x"]).await.unwrap();
    assert_eq!(other[0].latest, None);
    assert_eq!(other[0].opted_out_all, Some(x_out));
}

async fn history_is_oldest_first(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    s.append(&[
        ev("h", "b", EventKind::Granted, t),
        ev("h", "a", EventKind::Granted, t - HOUR),
        ev("other", "a", EventKind::Granted, t - 2 * HOUR),
    ])
    .await
    .unwrap();
    s.append(&[
        ev("h", "c", EventKind::Granted, t),
        ev("h", "a", EventKind::Withdrawn, t - 2 * HOUR),
    ])
    .await
    .unwrap();
    let history = s.history("h").await.unwrap();
    let got: Vec<_> = history
        .iter()
        .map(|e| (e.purpose.as_str(), e.kind, e.at_ms))
        .collect();
    assert_eq!(
        got,
        [
            ("a", EventKind::Withdrawn, t - 2 * HOUR),
            ("a", EventKind::Granted, t - HOUR),
            // Same time: in the order they were recorded.
            ("b", EventKind::Granted, t),
            ("c", EventKind::Granted, t),
        ]
    );
    assert!(s.history("nobody").await.unwrap().is_empty());
}

async fn erasure_removes_events_and_keeps_a_record(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    s.append(&[
        ev("gone", "m", EventKind::Granted, t - HOUR),
        ev("gone", "*", EventKind::OptedOut, t),
        ev("stays", "m", EventKind::Granted, t),
    ])
    .await
    .unwrap();
    s.append(&[ev("gone", "m", EventKind::Withdrawn, t)])
        .await
        .unwrap();

    let stored = s.erase("gone", &erasure("p-gone", t)).await.unwrap();
    assert_eq!(stored.events_removed, 3);
    assert_eq!(stored.subject_pseudonym, "p-gone");
    assert!(s.history("gone").await.unwrap().is_empty());
    assert_eq!(
        s.lookup("m", &["gone"]).await.unwrap(),
        [ConsentState::default()]
    );
    // Other subjects are untouched.
    assert_eq!(s.history("stays").await.unwrap().len(), 1);
    // The record stays, as stored; nothing in it names the subject.
    assert_eq!(
        s.erasures("p-gone").await.unwrap(),
        std::slice::from_ref(&stored)
    );
    let exported = s.export_page(0, 100).await.unwrap();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].event.subject, "stays");

    // Erasing a subject the store never heard of is still carried out, and recorded.
    let nobody = s.erase("nobody", &erasure("p-nobody", t)).await.unwrap();
    assert_eq!(nobody.events_removed, 0);
    assert_eq!(s.erasures("p-nobody").await.unwrap(), [nobody]);
    // A second erasure of the same subject is a second record, oldest first.
    let again = s.erase("gone", &erasure("p-gone", t + 1)).await.unwrap();
    assert_eq!(again.events_removed, 0);
    assert_eq!(s.erasures("p-gone").await.unwrap(), [stored, again]);
    assert!(s.erasures("p-unknown").await.unwrap().is_empty());
    // New events for an erased subject are recorded as for anyone.
    s.append(&[ev("gone", "m", EventKind::Granted, t + 2)])
        .await
        .unwrap();
    assert_eq!(s.history("gone").await.unwrap().len(), 1);
}

async fn the_record_is_append_only_in_the_database(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    s.append(&[
        ev("a", "m", EventKind::Granted, t),
        ev("b", "m", EventKind::Granted, t),
    ])
    .await
    .unwrap();
    s.erase("b", &erasure("p-b", t)).await.unwrap();
    let mut refused = vec![
        "UPDATE consent_events SET kind = 'withdrawn'",
        "UPDATE consent_events SET subject = 'z' WHERE subject = 'a'",
        "DELETE FROM consent_events",
        "DELETE FROM consent_events WHERE subject = 'a'",
        "UPDATE erasures SET events_removed = 0",
        "DELETE FROM erasures",
    ];
    if h.is_postgres() {
        refused.extend([
            "TRUNCATE consent_events",
            "TRUNCATE erasures",
            // The erasure setting admits the one subject it names, and only that one.
            "BEGIN; SELECT set_config('consentry.erasing', 'b', true); \
             DELETE FROM consent_events WHERE subject = 'a'; COMMIT;",
            "BEGIN; SELECT set_config('consentry.erasing', 'a', true); \
             UPDATE consent_events SET kind = 'withdrawn' WHERE subject = 'a'; COMMIT;",
        ]);
    } else {
        refused.push(
            "BEGIN; INSERT INTO erasure_in_progress (subject) VALUES ('b'); \
             DELETE FROM consent_events WHERE subject = 'a'; COMMIT;",
        );
    }
    for sql in refused {
        let err = h.exec(sql).await.unwrap_err();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(s.history("a").await.unwrap().len(), 1);
    assert_eq!(s.erasures("p-b").await.unwrap().len(), 1);
    // Reading and appending are not affected.
    assert_eq!(
        h.exec(
            "INSERT INTO consent_events (subject, purpose, kind, at_ms, recorded_at_ms) \
                VALUES ('a', 'm', 'withdrawn', 1, 1)"
        )
        .await,
        Ok(1)
    );
}

async fn export_pages_cover_every_event_in_order(h: &Harness) {
    let s = h.quiet().await;
    let t = now_ms();
    let mut written = Vec::new();
    for batch in 0..5 {
        // Times deliberately out of order: an export follows insertion, not time.
        let events: Vec<_> = (0..(batch + 3))
            .map(|i| {
                ev(
                    &format!("s{batch}-{i}"),
                    "m",
                    EventKind::Granted,
                    t - i64::from(i),
                )
            })
            .collect();
        s.append(&events).await.unwrap();
        written.extend(events);
    }
    s.erase("s0-0", &erasure("p", t)).await.unwrap();
    written.remove(0);

    let mut read = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = s.export_page(after, 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        for e in &page {
            assert!(e.seq > after, "sequence increases");
            after = e.seq;
        }
        read.extend(page.into_iter().map(|e| e.event));
        pages += 1;
    }
    assert_eq!(pages, written.len().div_ceil(4));
    let strip = |events: &[ConsentEvent]| {
        events
            .iter()
            .map(|e| ConsentEvent {
                recorded_at_ms: None,
                ..e.clone()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&read), strip(&written));
    assert!(read.iter().all(|e| e.recorded_at_ms.is_some()));
    // A page past the end is empty; a huge limit is capped, not an error.
    assert!(s.export_page(after, 4).await.unwrap().is_empty());
    assert_eq!(
        s.export_page(0, u32::MAX).await.unwrap().len(),
        written.len()
    );
}

async fn a_lookup_larger_than_a_chunk_keeps_the_order_of_subjects(h: &Harness) {
    let s = h.quiet().await;
    let now = now_ms();
    // More subjects than one statement of either store takes; every third one withdrew.
    let n = 2100;
    let events: Vec<_> = (0..n)
        .map(|i| {
            let kind = if i % 3 == 0 {
                EventKind::Withdrawn
            } else {
                EventKind::Granted
            };
            ev(&format!("s{i}"), "ads", kind, now)
        })
        .collect();
    s.append(&events).await.unwrap();

    let mut ids: Vec<String> = (0..n + 150).rev().map(|i| format!("s{i}")).collect();
    ids.push("s3".into()); // a repeated subject
    ids.insert(700, "s3".into());
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let states = s.lookup("ads", &refs).await.unwrap();
    assert_eq!(states.len(), refs.len());
    for (id, state) in refs.iter().zip(&states) {
        let i: usize = id[1..].parse().unwrap();
        let want = match i {
            i if i >= n => None,
            i if i % 3 == 0 => Some(EventKind::Withdrawn),
            _ => Some(EventKind::Granted),
        };
        assert_eq!(state.latest.map(|l| l.kind), want, "{id}");
    }
}

/// Waits until `feed` moves past what it was when this was called, or fails the test.
async fn announced(feed: &mut tokio::sync::watch::Receiver<u64>, what: &str) {
    feed.borrow_and_update();
    tokio::time::timeout(ANNOUNCED_WITHIN, feed.changed())
        .await
        .unwrap_or_else(|_| panic!("{what} was not announced"))
        .unwrap();
}

async fn a_write_through_another_instance_is_announced(h: &Harness) {
    let gateway = h.open().await;
    let mut feed = gateway.changes().expect("a store that announces changes");
    let other = h.quiet().await;
    assert!(other.changes().is_none(), "a quiet instance has no feed");

    let t = now_ms();
    let pending = async {
        other
            .append(&[ev("a", "m", EventKind::Withdrawn, t)])
            .await
            .unwrap();
    };
    feed.borrow_and_update();
    let ((), changed) = tokio::join!(
        pending,
        tokio::time::timeout(ANNOUNCED_WITHIN, feed.changed())
    );
    assert!(
        changed.is_ok(),
        "an append by another instance was not announced"
    );

    // Let the feed settle (a store may announce a write in more than one step).
    tokio::time::sleep(Duration::from_millis(300)).await;
    feed.borrow_and_update();
    let erase = async {
        other.erase("a", &erasure("p-a", t)).await.unwrap();
    };
    tokio::join!(erase, announced(&mut feed, "an erasure"));
    // And the instance sees the write itself.
    assert!(gateway.history("a").await.unwrap().is_empty());
    assert_eq!(gateway.erasures("p-a").await.unwrap().len(), 1);
}

async fn migrations_run_twice_and_at_once(h: &Harness) {
    // Two instances opening a new store at the same moment (replicas starting together).
    let (a, b) = tokio::join!(h.quiet(), h.quiet());
    let t = now_ms();
    a.append(&[ev("a", "m", EventKind::Granted, t)])
        .await
        .unwrap();
    assert_eq!(b.history("a").await.unwrap().len(), 1);
    // And again, on a store already at the current version: nothing changes, nothing is lost.
    a.close().await;
    b.close().await;
    let c = h.quiet().await;
    assert_eq!(c.history("a").await.unwrap().len(), 1);
    if h.is_postgres() {
        assert_eq!(
            h.exec("SELECT 1 FROM consentry_schema").await,
            Ok(1),
            "one version row per migration"
        );
    }
}

// ------------------------------------------------------------------------------------------
// PostgreSQL only: the change listener's connection.

/// The backends that listen on the schema's change channel (their last statement was LISTEN).
const LISTENERS: &str =
    "FROM pg_stat_activity WHERE query = 'LISTEN \"consentry_' || md5($1) || '\"'";

/// How many connections listen on the schema's change channel.
async fn listeners(schema: &TestSchema) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) {LISTENERS}")))
        .bind(&schema.name)
        .fetch_one(&mut schema.connect().await)
        .await
        .unwrap()
}

/// Ends the connections that listen on the schema's change channel; how many there were.
async fn kill_the_listener(schema: &TestSchema) -> usize {
    let ended: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) {LISTENERS}"
    )))
    .bind(&schema.name)
    .fetch_all(&mut schema.connect().await)
    .await
    .unwrap();
    ended.len()
}

#[tokio::test]
async fn a_lost_listener_flushes_and_listens_again() {
    let Some(schema) = TestSchema::create("a_lost_listener_flushes_and_listens_again").await else {
        return;
    };
    let h = Harness::Postgres(Box::new(schema));
    let gateway = h.open().await;
    let mut feed = gateway.changes().unwrap();
    let Harness::Postgres(schema) = &h else {
        unreachable!()
    };
    // Losing the connection is announced (writes made meanwhile would go unseen)...
    feed.borrow_and_update();
    let (killed, ()) = tokio::join!(kill_the_listener(schema), announced(&mut feed, "the loss"));
    assert_eq!(killed, 1, "one listener on the schema's channel");
    // ...the listener comes back by itself (and says so once more)...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while listeners(schema).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and writes are announced again.
    let other = h.quiet().await;
    feed.borrow_and_update();
    let append = async {
        other
            .append(&[ev("a", "m", EventKind::Granted, now_ms())])
            .await
            .unwrap();
    };
    tokio::join!(append, announced(&mut feed, "a write after reconnecting"));
}

/// A TCP relay to the test database that can silence one of its connections: it stays open,
/// but nothing passes (a NAT that dropped an idle flow, a partition without resets).
struct SilentRelay {
    addr: std::net::SocketAddr,
    /// How many connections were accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// The index of the silenced connection, if any.
    silenced: tokio::sync::watch::Sender<Option<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SilentRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SilentRelay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (silenced, watch) = tokio::sync::watch::channel(None);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let index = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                pipes.spawn(pipe(index, in_read, out_write, watch.clone()));
                pipes.spawn(pipe(index, out_read, in_write, watch.clone()));
            }
        });
        Self {
            addr,
            accepted,
            silenced,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn silence(&self, index: Option<usize>) {
        self.silenced.send_replace(index);
    }
}

async fn pipe(
    index: usize,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut silenced: tokio::sync::watch::Receiver<Option<usize>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if silenced.wait_for(|s| *s != Some(index)).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silenced.wait_for(|s| *s != Some(index)).await.is_err()
            || to.write_all(&buf[..n]).await.is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn a_silent_listener_connection_is_noticed_by_the_heartbeat() {
    let test = "a_silent_listener_connection_is_noticed_by_the_heartbeat";
    let Some(schema) = TestSchema::create(test).await else {
        return;
    };
    let server = {
        use std::net::ToSocketAddrs;
        (schema.base.get_host(), schema.base.get_port())
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap()
    };
    let relay = SilentRelay::start(server).await;
    let heartbeat = Duration::from_millis(200);
    let store = PostgresStore::open_with(
        schema
            .options()
            .host(&relay.addr.ip().to_string())
            .port(relay.addr.port()),
        PostgresStoreOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(300),
            listen: true,
            heartbeat,
        },
    )
    .await
    .unwrap();
    let mut feed = store.changes().unwrap();
    // The pool's connection, then the listener's.
    assert_eq!(relay.accepted(), 2);

    // Heartbeats alone do not make caches forget.
    feed.borrow_and_update();
    tokio::time::sleep(heartbeat * 4).await;
    assert!(!feed.has_changed().unwrap(), "a heartbeat moved the feed");

    // The listener's connection goes silent, without a reset, while the pool's still works:
    // the heartbeats it sends do not come back, which is noticed within two of them.
    relay.silence(Some(1));
    let started = std::time::Instant::now();
    announced(&mut feed, "a silent connection").await;
    assert!(started.elapsed() < heartbeat * 3, "{:?}", started.elapsed());

    // The listener reconnects (a new connection, which passes), and writes are announced again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.accepted() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no new listener");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        feed.borrow_and_update();
        tokio::time::sleep(heartbeat * 3).await;
        if !feed.has_changed().unwrap() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed did not settle"
        );
    }
    let writer = PostgresStore::open_with(
        schema.options(),
        PostgresStoreOptions {
            listen: false,
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .unwrap();
    let append = async {
        writer
            .append(&[ev("a", "m", EventKind::Granted, now_ms())])
            .await
            .unwrap();
    };
    tokio::join!(append, announced(&mut feed, "a write after the silence"));
}
