//! The embedded consent store: one SQLite file (bundled SQLite, WAL) in the data directory.
//!
//! It owns the schema (an append-only `consent_events` table, guarded by triggers), the
//! batched "latest event per subject and purpose" query, and a watcher that notices writes by
//! other processes (the CLI, another gateway) through `PRAGMA data_version`.
//!
//! It must never update or delete an event except in an erasure (its own, explicit operation,
//! which the triggers admit for the one subject being erased), and never decide anything from
//! what it reads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::event::{ConsentEvent, EventKind, now_ms};
use super::store::{
    ConsentState, ConsentStore, ErasureRecord, EventOrder, ExportedEvent, LatestEvent,
    LookupAnswer, StoreError, StoreFuture,
};

/// Most subjects bound in one lookup statement (SQLite allows 32,766 parameters; smaller
/// statements keep the plan cheap and the statement cache useful).
const LOOKUP_CHUNK: usize = 500;
/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Version 1: the append-only event table, its index, and the triggers that keep it so.
const MIGRATION_1: &str = "
CREATE TABLE consent_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    subject        TEXT    NOT NULL CHECK (subject <> ''),
    purpose        TEXT    NOT NULL CHECK (purpose <> ''),
    kind           TEXT    NOT NULL CHECK (kind IN ('granted', 'withdrawn', 'objected', 'opted_out')),
    at_ms          INTEGER NOT NULL,
    expires_at_ms  INTEGER,
    source         TEXT,
    proof          TEXT,
    recorded_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX consent_events_subject_purpose_at ON consent_events (subject, purpose, at_ms);
CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
BEGIN
    SELECT RAISE(ABORT, 'consent_events is append-only');
END;
CREATE TRIGGER consent_events_no_delete BEFORE DELETE ON consent_events
BEGIN
    SELECT RAISE(ABORT, 'consent_events is append-only');
END;
PRAGMA user_version = 1;
";

/// Version 2: who recorded each event, and erasure. Deleting events is allowed only for the
/// subject named in `erasure_in_progress`, a row that `erase` writes and removes inside its own
/// transaction; erasure records are append-only like events.
const MIGRATION_2: &str = "
ALTER TABLE consent_events ADD COLUMN actor TEXT;
CREATE TABLE erasures (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_pseudonym TEXT    NOT NULL CHECK (subject_pseudonym <> ''),
    at_ms             INTEGER NOT NULL,
    actor             TEXT,
    request_ref       TEXT,
    events_removed    INTEGER NOT NULL
) STRICT;
CREATE INDEX erasures_subject_pseudonym ON erasures (subject_pseudonym);
CREATE TABLE erasure_in_progress (subject TEXT PRIMARY KEY) STRICT;
DROP TRIGGER consent_events_no_delete;
CREATE TRIGGER consent_events_no_delete BEFORE DELETE ON consent_events
WHEN NOT EXISTS (SELECT 1 FROM erasure_in_progress WHERE subject = OLD.subject)
BEGIN
    SELECT RAISE(ABORT, 'consent_events is append-only: only an erasure removes events');
END;
CREATE TRIGGER erasures_no_update BEFORE UPDATE ON erasures
BEGIN
    SELECT RAISE(ABORT, 'erasures is append-only');
END;
CREATE TRIGGER erasures_no_delete BEFORE DELETE ON erasures
BEGIN
    SELECT RAISE(ABORT, 'erasures is append-only');
END;
PRAGMA user_version = 2;
";

/// How often emptying the write-ahead log is retried after an erasure it could not finish.
const LOG_RETRY: Duration = Duration::from_millis(500);

/// Checkpoints the whole write-ahead log into the database file and truncates it; `false` when
/// a reader kept it from finishing (or it failed).
async fn empty_log(pool: &SqlitePool) -> bool {
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(pool)
        .await
    {
        Ok((0, _, _)) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint after an erasure failed");
            false
        }
    }
}

/// Events per INSERT statement (nine parameters each, far under SQLite's 32,766).
const INSERT_CHUNK: usize = 500;

/// `INSERT` of `n` events.
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO consent_events \
         (subject, purpose, kind, at_ms, expires_at_ms, source, proof, actor, recorded_at_ms) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql
}

/// Most events in one export page.
const MAX_EXPORT_PAGE: u32 = 10_000;

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteStoreOptions {
    /// How long a connection waits for another writer's lock before failing.
    pub busy_timeout: Duration,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How often to ask SQLite whether another process wrote; `None`: do not watch (the store
    /// then reports no change feed, and caches rely on their TTL).
    pub watch_interval: Option<Duration>,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_connections: 2,
            watch_interval: Some(Duration::from_millis(200)),
        }
    }
}

/// A consent store in one SQLite file.
///
/// Dropping it stops its change watcher.
pub struct SqliteStore {
    pool: SqlitePool,
    /// Rows this store appended, held across each commit so that the watcher can tell our own
    /// writes from other processes' writes.
    own_rows: Arc<Mutex<i64>>,
    /// The change feed and the task that drives it, when watching.
    changes: Option<(watch::Receiver<u64>, JoinHandle<()>)>,
    /// Set while a task retries emptying the write-ahead log after an erasure.
    log_pending: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some((_, watcher)) = &self.changes {
            watcher.abort();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default options, migrates its
    /// schema, and starts the change watcher. Must be called inside a tokio runtime. The parent
    /// directory must exist.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteStoreOptions::default()).await
    }

    /// [`SqliteStore::open`] with explicit options.
    pub async fn open_with(
        path: impl AsRef<Path>,
        tuning: SqliteStoreOptions,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed withdrawal must survive a power cut.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(tuning.busy_timeout)
            // The consent table is small and read through a cache: 256 KiB of pages per
            // connection is plenty, and bounds the store's share of the gateway's memory.
            .pragma("cache_size", "-256")
            // Erased events are overwritten with zeros, not left in free pages.
            .pragma("secure_delete", "on");
        let pool = retry_busy(tuning.busy_timeout, || {
            SqlitePoolOptions::new()
                .max_connections(tuning.max_connections.max(1))
                .acquire_timeout(tuning.busy_timeout)
                .connect_with(options.clone())
        })
        .await?;
        migrate(&pool).await?;

        let own_rows = Arc::new(Mutex::new(0));
        let changes = match tuning.watch_interval {
            Some(every) => {
                let conn = retry_busy(tuning.busy_timeout, || {
                    SqliteConnection::connect_with(&options)
                })
                .await?;
                let (tx, rx) = watch::channel(0);
                let own = Arc::clone(&own_rows);
                Some((rx, tokio::spawn(watch_data_version(conn, own, tx, every))))
            }
            None => None,
        };
        Ok(Self {
            pool,
            own_rows,
            changes,
            log_pending: Arc::default(),
        })
    }

    async fn append_events(&self, events: &[ConsentEvent]) -> Result<(), StoreError> {
        for (index, e) in events.iter().enumerate() {
            e.validate()
                .map_err(|error| StoreError::InvalidEvent { index, error })?;
        }
        if events.is_empty() {
            return Ok(());
        }
        let recorded_at_ms = now_ms();
        // IMMEDIATE takes the write lock up front, so the busy timeout applies to it.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Many rows per statement: a large import holds the write lock for a fraction of the
        // time one statement per row takes. Rows keep their order (ids grow within a
        // statement), which ties of `at_ms` rely on.
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut query = sqlx::query(AssertSqlSafe(insert_sql(chunk.len())));
            for e in chunk {
                query = query
                    .bind(e.subject.as_str())
                    .bind(e.purpose.as_str())
                    .bind(e.kind.as_str())
                    .bind(e.at_ms)
                    .bind(e.expires_at_ms)
                    .bind(e.source.as_deref())
                    .bind(e.proof.as_deref())
                    .bind(e.actor.as_deref())
                    .bind(e.recorded_at_ms.unwrap_or(recorded_at_ms));
            }
            query.execute(&mut *tx).await?;
        }
        // INVARIANT: the counter moves with the commit, under the lock the watcher takes.
        let mut own = self.own_rows.lock().await;
        tx.commit().await?;
        *own += i64::try_from(events.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    async fn lookup_states(
        &self,
        purpose: &str,
        subjects: &[&str],
    ) -> Result<Vec<ConsentState>, StoreError> {
        let mut answer = LookupAnswer::new(purpose, subjects.len());
        for chunk in subjects.chunks(LOOKUP_CHUNK) {
            let mut query = sqlx::query(AssertSqlSafe(lookup_sql(chunk.len()))).bind(purpose);
            for s in chunk {
                query = query.bind(*s);
            }
            for row in query.fetch_all(&self.pool).await? {
                let row_purpose: String = row.try_get("purpose")?;
                answer.add(row.try_get("subject")?, &row_purpose, latest_event(&row)?);
            }
        }
        Ok(answer.in_order(subjects))
    }

    async fn subject_history(&self, subject: &str) -> Result<Vec<ConsentEvent>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM consent_events WHERE subject = ? ORDER BY at_ms, id"
        )))
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn erase_subject(
        &self,
        subject: &str,
        record: &ErasureRecord,
    ) -> Result<ErasureRecord, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO erasure_in_progress (subject) VALUES (?)")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM consent_events WHERE subject = ?")
            .bind(subject)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM erasure_in_progress WHERE subject = ?")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        let stored = ErasureRecord {
            events_removed: removed,
            ..record.clone()
        };
        sqlx::query(
            "INSERT INTO erasures (subject_pseudonym, at_ms, actor, request_ref, events_removed) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(stored.subject_pseudonym.as_str())
        .bind(stored.at_ms)
        .bind(stored.actor.as_deref())
        .bind(stored.request_ref.as_deref())
        .bind(i64::try_from(removed).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        // INVARIANT: one own write (the erasure row) moves with the commit, as in `append`.
        let mut own = self.own_rows.lock().await;
        tx.commit().await?;
        *own += 1;
        drop(own);
        // The write-ahead log still holds the pages as they were before the erasure: move
        // everything into the database file and empty the log. A reader holding an old
        // snapshot can keep it from finishing: then a task retries until it does.
        if !empty_log(&self.pool).await {
            self.empty_log_later();
        }
        Ok(stored)
    }

    /// Retries emptying the write-ahead log every [`LOG_RETRY`] until it succeeds (one task at
    /// a time), so that erased pages do not stay in it.
    fn empty_log_later(&self) {
        use std::sync::atomic::Ordering;
        if self.log_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            "erasure committed, but a reader kept the write-ahead log from being emptied: retrying"
        );
        let (pool, pending) = (self.pool.clone(), Arc::clone(&self.log_pending));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_RETRY).await;
                if pool.is_closed() || empty_log(&pool).await {
                    break;
                }
            }
            pending.store(false, Ordering::Release);
        });
    }

    async fn erasure_records(&self, pseudonym: &str) -> Result<Vec<ErasureRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject_pseudonym, at_ms, actor, request_ref, events_removed \
             FROM erasures WHERE subject_pseudonym = ? ORDER BY at_ms, id",
        )
        .bind(pseudonym)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let removed: i64 = row.try_get("events_removed")?;
                Ok(ErasureRecord {
                    subject_pseudonym: row.try_get("subject_pseudonym")?,
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    request_ref: row.try_get("request_ref")?,
                    events_removed: u64::try_from(removed).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn export_events(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ExportedEvent>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, {EVENT_COLUMNS} FROM consent_events WHERE id > ? ORDER BY id LIMIT ?"
        )))
        .bind(after)
        .bind(i64::from(limit.min(MAX_EXPORT_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ExportedEvent {
                    seq: row.try_get("id")?,
                    event: event_from_row(row)?,
                })
            })
            .collect()
    }

    /// The connection pool, for tests that need to starve or inspect it.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the connection pool after pending queries finish; later calls fail. The
    /// watcher stops when the store is dropped.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl ConsentStore for SqliteStore {
    fn append<'a>(&'a self, events: &'a [ConsentEvent]) -> StoreFuture<'a, ()> {
        Box::pin(self.append_events(events))
    }

    fn lookup<'a>(
        &'a self,
        purpose: &'a str,
        subjects: &'a [&'a str],
    ) -> StoreFuture<'a, Vec<ConsentState>> {
        Box::pin(self.lookup_states(purpose, subjects))
    }

    fn history<'a>(&'a self, subject: &'a str) -> StoreFuture<'a, Vec<ConsentEvent>> {
        Box::pin(self.subject_history(subject))
    }

    fn erase<'a>(
        &'a self,
        subject: &'a str,
        record: &'a ErasureRecord,
    ) -> StoreFuture<'a, ErasureRecord> {
        Box::pin(self.erase_subject(subject, record))
    }

    fn erasures<'a>(&'a self, subject_pseudonym: &'a str) -> StoreFuture<'a, Vec<ErasureRecord>> {
        Box::pin(self.erasure_records(subject_pseudonym))
    }

    fn export_page(&self, after: i64, limit: u32) -> StoreFuture<'_, Vec<ExportedEvent>> {
        Box::pin(self.export_events(after, limit))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.changes.as_ref().map(|(rx, _)| rx.clone())
    }

    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.pool.close())
    }
}

/// The columns [`event_from_row`] reads.
const EVENT_COLUMNS: &str =
    "subject, purpose, kind, at_ms, expires_at_ms, source, proof, actor, recorded_at_ms";

fn event_from_row(row: &SqliteRow) -> Result<ConsentEvent, StoreError> {
    Ok(ConsentEvent {
        subject: row.try_get("subject")?,
        purpose: row.try_get("purpose")?,
        kind: parse_kind(row)?,
        at_ms: row.try_get("at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        source: row.try_get("source")?,
        proof: row.try_get("proof")?,
        actor: row.try_get("actor")?,
        recorded_at_ms: row.try_get("recorded_at_ms")?,
    })
}

/// Retries `connect` while SQLite answers "busy", for at most `limit`. A connection switches
/// a new file to WAL, which takes a lock that SQLite's busy timeout does not wait for: when two
/// processes open a new store at once, one of them would otherwise fail.
async fn retry_busy<T, F, Fut>(limit: Duration, mut connect: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match connect().await {
            Err(sqlx::Error::Database(e))
                if is_busy(e.code().as_deref()) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Whether an SQLite (extended) result code is SQLITE_BUSY.
fn is_busy(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// Applies the embedded migrations in one write transaction, so that two processes opening a
/// new file at once do not both create the table.
async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        sqlx::raw_sql(MIGRATION_1).execute(&mut *tx).await?;
    }
    if version < 2 {
        sqlx::raw_sql(MIGRATION_2).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The latest event per (subject, purpose) for one purpose and the `*` opt-outs, for `n`
/// subjects (`?1` is the purpose, then the subjects). Ties of `at_ms` go to the later row.
fn lookup_sql(n: usize) -> String {
    let mut sql = String::from(
        "SELECT subject, purpose, kind, at_ms, expires_at_ms, id FROM ( \
           SELECT subject, purpose, kind, at_ms, expires_at_ms, id, \
                  row_number() OVER (PARTITION BY subject, purpose ORDER BY at_ms DESC, id DESC) AS rn \
           FROM consent_events \
           WHERE purpose IN (?1, '*') AND (purpose <> '*' OR kind = 'opted_out') \
             AND subject IN (",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("?{}", i + 2));
    }
    sql.push_str(")) WHERE rn = 1");
    sql
}

fn parse_kind(row: &SqliteRow) -> Result<EventKind, StoreError> {
    let kind: String = row.try_get("kind")?;
    kind.parse()
        .map_err(|e: super::event::UnknownKindError| StoreError::Corrupt(e.to_string()))
}

fn latest_event(row: &SqliteRow) -> Result<LatestEvent, StoreError> {
    Ok(LatestEvent {
        kind: parse_kind(row)?,
        order: EventOrder {
            at_ms: row.try_get("at_ms")?,
            seq: row.try_get("id")?,
        },
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}

/// Polls `PRAGMA data_version` on a dedicated connection and bumps `changes` when a write
/// happened that this store did not make. SQLite changes the value for commits by any other
/// connection, our own pool included; those are told apart by comparing how many rows appeared
/// with how many this store appended, both read under the commit lock. On an error it bumps
/// too: a watcher that cannot see must make caches forget rather than let them go stale.
async fn watch_data_version(
    mut conn: SqliteConnection,
    own_rows: Arc<Mutex<i64>>,
    changes: watch::Sender<u64>,
    every: Duration,
) {
    let bump = || changes.send_modify(|v| *v = v.wrapping_add(1));
    let mut version = data_version(&mut conn).await.ok();
    let mut seen = rows_and_own(&mut conn, &own_rows).await.ok();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = match data_version(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "consent store change watcher failed: flushing caches");
                version = None;
                bump();
                continue;
            }
        };
        if version == Some(now) {
            continue;
        }
        version = Some(now);
        match rows_and_own(&mut conn, &own_rows).await {
            Ok((rows, own)) => {
                let external = match seen {
                    Some((seen_rows, seen_own)) => (rows - seen_rows) - (own - seen_own),
                    None => 1,
                };
                seen = Some((rows, own));
                if external != 0 {
                    bump();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "consent store change watcher failed: flushing caches");
                seen = None;
                bump();
            }
        }
    }
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(conn)
        .await
}

/// The rows ever written (the AUTOINCREMENT counters of events and erasures, which never go
/// back, even when an erasure deletes events) and this store's own count of them, read together
/// under the commit lock. A gap in the counters would only cause an extra flush.
async fn rows_and_own(
    conn: &mut SqliteConnection,
    own_rows: &Mutex<i64>,
) -> Result<(i64, i64), sqlx::Error> {
    let own = own_rows.lock().await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(seq), 0) FROM sqlite_sequence \
         WHERE name IN ('consent_events', 'erasures')",
    )
    .fetch_one(conn)
    .await?;
    Ok((rows, *own))
}
