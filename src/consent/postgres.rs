//! The shared consent store for several gateway replicas: PostgreSQL, through a connection
//! pool, with the schema migrated at start and a LISTEN/NOTIFY change feed.
//!
//! It owns the PostgreSQL schema (an append-only `consent_events` table and an append-only
//! `erasures` table, both guarded by triggers in the database), the batched "latest event per
//! subject and purpose" query, and the listener that tells the cache when any replica (or any
//! other client of the database) wrote.
//!
//! It must never update or delete an event except in an erasure (its own, explicit operation,
//! which the trigger admits for the one subject named in the transaction-local setting
//! `consentry.erasing`), never decide anything from what it reads, and never log the database
//! URL with its password (see [`describe`]).
//!
//! # Tables live where `search_path` points
//!
//! Statements name tables without a schema, so the store works in the first schema of the
//! connection's `search_path` (`public` by default; `?options=-csearch_path%3Dname` in the URL
//! chooses another). Each schema has its own tables, its own version and its own change channel,
//! which is how tests run side by side on one database.
//!
//! # Change feed
//!
//! A statement trigger calls `pg_notify` on every insert into `consent_events` or `erasures`
//! and every erasure's delete, whoever wrote (a replica, the CLI, a `psql` session). A dedicated
//! connection listens on the schema's channel and bumps [`ConsentStore::changes`] on each
//! notification, this store's own writes included (the cache then forgets everything, which
//! costs one lookup per subject and is always safe). When that connection is lost it bumps too
//! (writes made while nobody listened would otherwise go unnoticed) and reconnects with backoff;
//! once it listens again it bumps once more.
//!
//! A connection can also die without a word (a NAT or firewall dropping an idle flow): the
//! listener would then wait for ever while replicas write. So the store sends itself a heartbeat
//! notification through its pool every `heartbeat`; if none (nor anything else) arrives on the
//! listening connection by the next one, that connection counts as lost. Heartbeats do not bump
//! the feed.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::event::{ConsentEvent, EventKind, now_ms};
use super::store::{
    ConsentState, ConsentStore, ErasureRecord, EventOrder, ExportedEvent, LatestEvent,
    LookupAnswer, StoreError, StoreFuture,
};

/// Most subjects bound in one lookup statement (one array parameter; the bound keeps each
/// statement's work and answer small).
pub const LOOKUP_CHUNK: usize = 1000;
/// Most events inserted by one statement of an append (all in the same transaction).
const APPEND_CHUNK: usize = 1000;
/// Most events in one export page.
const MAX_EXPORT_PAGE: u32 = 10_000;
/// The schema version this build writes.
const SCHEMA_VERSION: i32 = 1;
/// The first key of the advisory lock that serialises migrations (the second is the schema):
/// "cnsn" in ASCII.
const MIGRATION_LOCK: i32 = 0x636e_736e;
/// The payload of heartbeat notifications (writes carry a table name).
const HEARTBEAT_PAYLOAD: &str = "heartbeat";
/// Shortest and longest wait before the listener tries to reconnect.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// Version 1: events, erasures, the triggers that keep both append-only, and the change
/// notifications.
const MIGRATION_1: &str = r#"
CREATE TABLE consent_events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject        TEXT   NOT NULL CHECK (subject <> ''),
    purpose        TEXT   NOT NULL CHECK (purpose <> ''),
    kind           TEXT   NOT NULL CHECK (kind IN ('granted', 'withdrawn', 'objected', 'opted_out')),
    at_ms          BIGINT NOT NULL,
    expires_at_ms  BIGINT,
    source         TEXT,
    proof          TEXT,
    actor          TEXT,
    recorded_at_ms BIGINT NOT NULL
);
CREATE INDEX consent_events_subject_purpose_at
    ON consent_events (subject, purpose, at_ms DESC, id DESC);

CREATE TABLE erasures (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_pseudonym TEXT   NOT NULL CHECK (subject_pseudonym <> ''),
    at_ms             BIGINT NOT NULL,
    actor             TEXT,
    request_ref       TEXT,
    events_removed    BIGINT NOT NULL CHECK (events_removed >= 0)
);
CREATE INDEX erasures_subject_pseudonym ON erasures (subject_pseudonym);

-- Events are never updated, and deleted only by an erasure of their subject: the erasing
-- transaction names the subject in the transaction-local setting `consentry.erasing`.
CREATE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.subject = current_setting('consentry.erasing', true) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'consent_events is append-only: only an erasure removes events';
END
$$;
CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_append_only();

CREATE FUNCTION consent_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER consent_events_no_truncate BEFORE TRUNCATE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION consent_refuse_change();
CREATE TRIGGER erasures_append_only BEFORE UPDATE OR DELETE ON erasures
    FOR EACH ROW EXECUTE FUNCTION consent_refuse_change();
CREATE TRIGGER erasures_no_truncate BEFORE TRUNCATE ON erasures
    FOR EACH STATEMENT EXECUTE FUNCTION consent_refuse_change();

-- One notification per statement (PostgreSQL folds identical ones within a transaction). The
-- payload names the table, never a subject.
CREATE FUNCTION consent_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('consentry_' || md5(TG_TABLE_SCHEMA), TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER consent_events_notify AFTER INSERT OR DELETE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION consent_notify_change();
CREATE TRIGGER erasures_notify AFTER INSERT ON erasures
    FOR EACH STATEMENT EXECUTE FUNCTION consent_notify_change();
"#;

/// The migrations in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: [&str; 1] = [MIGRATION_1];

/// Tuning of a [`PostgresStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresStoreOptions {
    /// Connections in the pool (the listener has one more of its own).
    pub max_connections: u32,
    /// How long a query waits for a connection, opening one included. Keep it well under the
    /// cache's lookup timeout, so that an unreachable database fails lookups fast.
    pub acquire_timeout: Duration,
    /// Whether to listen for writes (the change feed); one-shot commands do not.
    pub listen: bool,
    /// How often the listener checks that its connection still carries notifications.
    pub heartbeat: Duration,
}

impl Default for PostgresStoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_millis(500),
            listen: true,
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// A consent store in a PostgreSQL schema, shared by replicas.
///
/// Dropping it stops its listener.
pub struct PostgresStore {
    pool: PgPool,
    /// The change feed and the task that drives it, when listening.
    changes: Option<(watch::Receiver<u64>, JoinHandle<()>)>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some((_, listener)) = &self.changes {
            listener.abort();
        }
    }
}

/// Parses a `postgres://` URL. The error never repeats the URL (it may hold a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("consentry"))
        .map_err(StoreError::Database)
}

/// Where `options` point, for logs and messages: `postgres://user@host:port/database`, never
/// the password.
pub fn describe(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        host,
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

impl PostgresStore {
    /// Connects to the database `url` names, migrates the schema, and (with `tuning.listen`)
    /// starts listening for changes. Fails if the database cannot be reached within
    /// `tuning.acquire_timeout`. Must be called inside a tokio runtime.
    pub async fn open(url: &str, tuning: PostgresStoreOptions) -> Result<Self, StoreError> {
        Self::open_with(connect_options(url)?, tuning).await
    }

    /// [`PostgresStore::open`] with parsed connect options.
    pub async fn open_with(
        options: PgConnectOptions,
        tuning: PostgresStoreOptions,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(tuning.max_connections.max(1))
            .acquire_timeout(tuning.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        migrate(&pool).await?;

        let changes = if tuning.listen {
            let channel: String = sqlx::query_scalar(
                "SELECT 'consentry_' || md5(n.nspname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = 'consent_events'::regclass",
            )
            .fetch_one(&pool)
            .await?;
            let feed = Feed {
                store_pool: pool.clone(),
                connect: options,
                acquire_timeout: tuning.acquire_timeout,
                channel,
                heartbeat: tuning.heartbeat.max(Duration::from_millis(10)),
                changes: watch::channel(0).0,
            };
            // Listening before returning: a write made after `open` is always seen.
            let listener = feed.subscribe().await?;
            let rx = feed.changes.subscribe();
            let task = tokio::spawn(feed.run(listener));
            Some((rx, task))
        } else {
            None
        };
        Ok(Self { pool, changes })
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
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(APPEND_CHUNK) {
            // INVARIANT: rows are inserted in the order of the batch, so that ids (which break
            // ties of `at_ms`) follow it: ORDER BY the ordinality, and the identity default is
            // evaluated after the sort.
            sqlx::query(
                "INSERT INTO consent_events \
                 (subject, purpose, kind, at_ms, expires_at_ms, source, proof, actor, recorded_at_ms) \
                 SELECT subject, purpose, kind, at_ms, expires_at_ms, source, proof, actor, recorded_at_ms \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
                             $6::text[], $7::text[], $8::text[], $9::int8[]) \
                      WITH ORDINALITY AS e(subject, purpose, kind, at_ms, expires_at_ms, \
                                           source, proof, actor, recorded_at_ms, ord) \
                 ORDER BY ord",
            )
            .bind(chunk.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.purpose.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.at_ms).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.expires_at_ms).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.source.as_deref()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.proof.as_deref()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|e| e.actor.as_deref()).collect::<Vec<_>>())
            .bind(
                chunk
                    .iter()
                    .map(|e| e.recorded_at_ms.unwrap_or(recorded_at_ms))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lookup_states(
        &self,
        purpose: &str,
        subjects: &[&str],
    ) -> Result<Vec<ConsentState>, StoreError> {
        let mut answer = LookupAnswer::new(purpose, subjects.len());
        for chunk in subjects.chunks(LOOKUP_CHUNK) {
            // The latest event per (subject, purpose) for the purpose and the `*` opt-outs. Ties
            // of `at_ms` go to the later row.
            let rows = sqlx::query(
                "SELECT DISTINCT ON (subject, purpose) \
                        subject, purpose, kind, at_ms, expires_at_ms, id \
                 FROM consent_events \
                 WHERE subject = ANY($2) \
                   AND (purpose = $1 OR (purpose = '*' AND kind = 'opted_out')) \
                 ORDER BY subject, purpose, at_ms DESC, id DESC",
            )
            .bind(purpose)
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let row_purpose: String = row.try_get("purpose")?;
                answer.add(row.try_get("subject")?, &row_purpose, latest_event(&row)?);
            }
        }
        Ok(answer.in_order(subjects))
    }

    async fn subject_history(&self, subject: &str) -> Result<Vec<ConsentEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject, purpose, kind, at_ms, expires_at_ms, source, proof, actor, \
                    recorded_at_ms \
             FROM consent_events WHERE subject = $1 ORDER BY at_ms, id",
        )
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
        let mut tx = self.pool.begin().await?;
        // Transaction-local: the trigger admits deleting this subject's events until commit.
        sqlx::query("SELECT set_config('consentry.erasing', $1, true)")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM consent_events WHERE subject = $1")
            .bind(subject)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("SELECT set_config('consentry.erasing', '', true)")
            .execute(&mut *tx)
            .await?;
        let stored = ErasureRecord {
            events_removed: removed,
            ..record.clone()
        };
        sqlx::query(
            "INSERT INTO erasures (subject_pseudonym, at_ms, actor, request_ref, events_removed) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(stored.subject_pseudonym.as_str())
        .bind(stored.at_ms)
        .bind(stored.actor.as_deref())
        .bind(stored.request_ref.as_deref())
        .bind(i64::try_from(removed).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn erasure_records(&self, pseudonym: &str) -> Result<Vec<ErasureRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject_pseudonym, at_ms, actor, request_ref, events_removed \
             FROM erasures WHERE subject_pseudonym = $1 ORDER BY at_ms, id",
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

    /// Pages by id. Ids are taken when a row is inserted, not when it commits, so a page read
    /// while another transaction is still appending may pass over that transaction's rows; an
    /// export is complete for everything committed before it started.
    async fn export_events(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ExportedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, subject, purpose, kind, at_ms, expires_at_ms, source, proof, actor, \
                    recorded_at_ms \
             FROM consent_events WHERE id > $1 ORDER BY id LIMIT $2",
        )
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

    /// Closes the pool after pending queries finish and stops the listener; later calls fail.
    pub async fn close(&self) {
        if let Some((_, listener)) = &self.changes {
            listener.abort();
        }
        self.pool.close().await;
    }
}

impl ConsentStore for PostgresStore {
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
        Box::pin(PostgresStore::close(self))
    }
}

fn event_from_row(row: &PgRow) -> Result<ConsentEvent, StoreError> {
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

fn parse_kind(row: &PgRow) -> Result<EventKind, StoreError> {
    let kind: String = row.try_get("kind")?;
    kind.parse()
        .map_err(|e: super::event::UnknownKindError| StoreError::Corrupt(e.to_string()))
}

fn latest_event(row: &PgRow) -> Result<LatestEvent, StoreError> {
    Ok(LatestEvent {
        kind: parse_kind(row)?,
        order: EventOrder {
            at_ms: row.try_get("at_ms")?,
            seq: row.try_get("id")?,
        },
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}

/// Applies the embedded migrations in one transaction under an advisory lock on the schema,
/// so that replicas starting at once neither both create the tables nor see half of them.
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(coalesce(current_schema(), '')))")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Not `IF NOT EXISTS`, whose notice would be logged at every start.
    let versioned: bool = sqlx::query_scalar("SELECT to_regclass('consentry_schema') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    if !versioned {
        sqlx::raw_sql(
            "CREATE TABLE consentry_schema (\
                 version    INTEGER PRIMARY KEY, \
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await?;
    }
    let version: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM consentry_schema")
        .fetch_one(&mut *tx)
        .await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
        )));
    }
    for (to, sql) in (1..).zip(MIGRATIONS) {
        if version < to {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO consentry_schema (version) VALUES ($1)")
                .bind(to)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// What drives a store's change feed.
struct Feed {
    /// The store's pool, which sends the heartbeats.
    store_pool: PgPool,
    /// Where the listener connects.
    connect: PgConnectOptions,
    acquire_timeout: Duration,
    channel: String,
    heartbeat: Duration,
    changes: watch::Sender<u64>,
}

impl Feed {
    /// Bumps the feed on every write notified, on the loss of the listening connection, and
    /// after each reconnection, until the store is dropped.
    async fn run(self, mut listener: PgListener) {
        loop {
            self.until_lost(&mut listener).await;
            self.bump();
            // A fresh listener: after an error the old one may hold a broken connection.
            drop(listener);
            let mut wait = LISTEN_BACKOFF.0;
            listener = loop {
                tokio::time::sleep(wait).await;
                match self.subscribe().await {
                    Ok(l) => break l,
                    Err(error) => {
                        tracing::debug!(%error, "consent change listener cannot reconnect yet");
                        wait = (wait * 2).min(LISTEN_BACKOFF.1);
                    }
                }
            };
            tracing::info!("consent change listener reconnected: flushing caches");
            // Writes made while nobody listened went unnoticed.
            self.bump();
        }
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A listener on the channel, on a connection of its own: a busy store never starves it,
    /// and it never takes a connection from queries. Each listener gets a new pool of one,
    /// because a listener that is dropped gives its connection back only after an UNLISTEN,
    /// which on a connection that went silent never ends.
    async fn subscribe(&self) -> Result<PgListener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.connect.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection is reported at once (`Ok(None)`), not after a reconnection attempt:
        // the cache must forget before anything else happens.
        listener.eager_reconnect(false);
        listener.listen(&self.channel).await?;
        Ok(listener)
    }

    /// Sends a heartbeat through the store's pool, so that it comes back on the listening
    /// connection only if that still works. Not awaited by the listener, so that a hanging
    /// database cannot stall it; the answer says whether it went out within a heartbeat.
    fn send_heartbeat(&self) -> oneshot::Receiver<bool> {
        let (done, outcome) = oneshot::channel();
        let send = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.channel.clone())
            .bind(HEARTBEAT_PAYLOAD);
        let pool = self.store_pool.clone();
        let limit = self.heartbeat;
        tokio::spawn(async move {
            let went_out = match tokio::time::timeout(limit, send.execute(&pool)).await {
                Ok(Ok(_)) => true,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "consent change heartbeat not sent");
                    false
                }
                Err(_) => false,
            };
            let _ = done.send(went_out);
        });
        outcome
    }

    /// Bumps on writes until the listening connection is lost, errs, or stays silent for a
    /// whole heartbeat.
    async fn until_lost(&self, listener: &mut PgListener) {
        let mut ticks = tokio::time::interval(self.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether anything arrived since the last heartbeat was sent, and whether that one
        // went out (`None`: none sent yet).
        let mut heard = true;
        let mut sent: Option<oneshot::Receiver<bool>> = None;
        loop {
            tokio::select! {
                // Cancel safe: sqlx keeps a partly read message in its buffer.
                received = listener.try_recv() => match received {
                    Ok(Some(first)) => {
                        heard = true;
                        // A burst of writes is one flush.
                        let mut wrote = first.payload() != HEARTBEAT_PAYLOAD;
                        while let Some(next) = listener.next_buffered() {
                            wrote |= next.payload() != HEARTBEAT_PAYLOAD;
                        }
                        if wrote {
                            self.bump();
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(
                            "consent change listener lost its connection: flushing caches, reconnecting"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "consent change listener failed: flushing caches, reconnecting");
                        return;
                    }
                },
                _ = ticks.tick() => {
                    match sent.take().map(|mut r| r.try_recv()) {
                        None => {}
                        Some(Ok(true)) if !heard => {
                            tracing::warn!(
                                "consent change listener missed a heartbeat: flushing caches, reconnecting"
                            );
                            return;
                        }
                        Some(Ok(true)) => {}
                        // Not sent (the pool is unreachable or saturated): the feed cannot be
                        // vouched for, so caches forget; the listener stays.
                        Some(_) => self.bump(),
                    }
                    heard = false;
                    sent = Some(self.send_heartbeat());
                }
            }
        }
    }
}
