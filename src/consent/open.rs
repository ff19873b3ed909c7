//! Opening the consent store that the configuration names, for the gateway and the CLI alike.
//!
//! It owns the choice of store and its start-up (directories, migrations). It must never hand
//! back a store that did not open (start-up fails instead), and never log a database URL with
//! its password.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, StoreKind};

use super::cache::{CacheConfig, ConsentService};
use super::erasure::ErasureKey;
use super::http::{HttpConfigError, HttpConsentStore};
use super::postgres::{PostgresStore, PostgresStoreOptions};
use super::requests::ConsentRecords;
use super::sqlite::{SqliteStore, SqliteStoreOptions};
use super::store::{ConsentStore, StoreError};

/// The embedded store's file inside the data directory.
pub const SQLITE_FILE: &str = "consent.db";

/// Who will use the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A long-running gateway: watch for writes made elsewhere, to keep its cache fresh.
    Gateway,
    /// A one-shot command: no cache to keep fresh, no watcher.
    OneShot,
}

/// A store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed to open or migrate.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The external platform's settings cannot work.
    #[error(transparent)]
    Http(#[from] HttpConfigError),
    /// The erasure key could not be read or created.
    #[error(transparent)]
    ErasureKey(#[from] super::erasure::ErasureKeyError),
    /// The PostgreSQL store failed to connect or migrate.
    #[error("{target}: {error}")]
    Postgres {
        /// Where it was (without the password).
        target: String,
        /// What failed.
        error: StoreError,
    },
    /// The configuration names a store without what it needs.
    #[error("{0}")]
    Config(String),
    /// The data directory could not be created.
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Opens the configured consent store (`consent.store`). The data directory is created either
/// way: it holds the erasure key.
pub async fn open_store(config: &Config, usage: Use) -> Result<Arc<dyn ConsentStore>, OpenError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::DataDir {
        dir: config.data_dir.clone(),
        source,
    })?;
    match config.consent.store {
        StoreKind::Sqlite => {
            let options = SqliteStoreOptions {
                watch_interval: match usage {
                    Use::Gateway => SqliteStoreOptions::default().watch_interval,
                    Use::OneShot => None,
                },
                ..SqliteStoreOptions::default()
            };
            let store = SqliteStore::open_with(config.data_dir.join(SQLITE_FILE), options).await?;
            Ok(Arc::new(store))
        }
        StoreKind::Http => {
            let http = config
                .consent
                .http
                .as_ref()
                .ok_or_else(|| HttpConfigError {
                    key: "http".to_owned(),
                    message: "the section is missing, and `consent.store` is `http`".to_owned(),
                })?;
            Ok(Arc::new(HttpConsentStore::new(http)?))
        }
        StoreKind::Postgres => open_postgres(config, usage).await,
    }
}

async fn open_postgres(config: &Config, usage: Use) -> Result<Arc<dyn ConsentStore>, OpenError> {
    let pg = &config.consent.postgres;
    let url = pg.url.as_ref().ok_or_else(|| {
        OpenError::Config(
            "consent.store is `postgres` but no database URL is set (consent.postgres.url, \
             CONSENTRY_POSTGRES_URL or --postgres-url)"
                .to_owned(),
        )
    })?;
    if pg.connect_timeout_ms >= config.consent.lookup_timeout_ms {
        tracing::warn!(
            connect_timeout_ms = pg.connect_timeout_ms,
            lookup_timeout_ms = config.consent.lookup_timeout_ms,
            "consent.postgres.connect_timeout_ms is not under consent.lookup_timeout_ms: with \
             the database unreachable, lookups run into the lookup timeout instead of failing fast"
        );
    }
    let options = super::postgres::connect_options(url.expose())?;
    let target = super::postgres::describe(&options);
    let tuning = PostgresStoreOptions {
        max_connections: pg.max_connections,
        acquire_timeout: Duration::from_millis(pg.connect_timeout_ms),
        listen: usage == Use::Gateway,
        ..PostgresStoreOptions::default()
    };
    let store = PostgresStore::open_with(options, tuning)
        .await
        .map_err(|error| OpenError::Postgres {
            target: target.clone(),
            error,
        })?;
    tracing::info!(database = %target, "consent store: PostgreSQL");
    Ok(Arc::new(store))
}

/// The cache settings of the configuration.
pub fn cache_config(config: &Config) -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_millis(config.consent.cache_ttl_ms),
        lookup_timeout: Duration::from_millis(config.consent.lookup_timeout_ms),
        max_subjects: config.consent.cache_entries,
        max_concurrent_lookups: config.consent.max_concurrent_lookups,
    }
}

/// The consent service and the record of consent over the configured store.
pub async fn open_records(
    config: &Config,
    usage: Use,
) -> Result<(Arc<ConsentService>, ConsentRecords), OpenError> {
    let store = open_store(config, usage).await?;
    let key = ErasureKey::load_or_create(&config.erasure_key_path())?;
    let service = ConsentService::new(store, cache_config(config));
    let records = ConsentRecords::new(Arc::clone(&service), key);
    Ok((service, records))
}
