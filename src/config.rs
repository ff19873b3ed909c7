//! Operations configuration: `consentry.yaml`, overridden by `CONSENTRY_*` environment
//! variables, overridden by command-line flags.
//!
//! The file only holds operational settings (addresses, limits, timeouts); what the gateway
//! enforces lives in the policy directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The operations settings of one gateway process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the proxy listens on (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Base URL of the CRM, e.g. `http://127.0.0.1:18081`.
    pub upstream: String,
    /// Directory of policy YAML files.
    pub policies: PathBuf,
    /// Directory for the embedded consent store.
    pub data_dir: PathBuf,
    /// Bounds on requests and responses.
    pub limits: LimitsConfig,
    /// Timeouts, in milliseconds.
    pub timeouts: TimeoutsConfig,
    /// The consent cache and store lookups.
    pub consent: ConsentConfig,
    /// Tokio worker threads (0: one per core).
    pub workers: usize,
}

/// Bounds on requests and responses.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest upstream body on a protected route, after decoding.
    pub max_body_bytes: u64,
    /// Largest single record (or envelope value).
    pub max_record_bytes: usize,
    /// Deepest JSON nesting inside a record.
    pub max_depth: usize,
    /// Largest request body forwarded upstream.
    pub max_request_body_bytes: u64,
    /// Largest request head: the request target and the header fields.
    pub max_header_bytes: usize,
    /// Concurrent client connections.
    pub max_connections: usize,
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Connecting to the upstream.
    pub connect_ms: u64,
    /// From sending the request to the upstream's response head.
    pub header_ms: u64,
    /// The whole exchange with the upstream, body included.
    pub total_ms: u64,
    /// Reading a client's request head (and the first bytes of a new connection); an HTTP/2
    /// peer that leaves a ping unanswered this long is dropped.
    pub client_header_ms: u64,
    /// Draining requests in flight on shutdown.
    pub shutdown_ms: u64,
}

/// The consent cache and store lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// The key file behind erasure pseudonyms (default: `DATA_DIR/erasure.key`, created on
    /// first use). Replicas sharing a store must share it.
    pub erasure_key_file: Option<PathBuf>,
    /// How long a looked-up consent state is reused.
    pub cache_ttl_ms: u64,
    /// How long a batched store lookup may take before it counts as "no consent".
    pub lookup_timeout_ms: u64,
    /// Most cached entries.
    pub cache_entries: usize,
    /// Which store keeps the record of consent.
    pub store: StoreKind,
    /// The PostgreSQL store (used when `store` is `postgres`).
    pub postgres: PostgresConfig,
}

/// Which store keeps the record of consent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// One SQLite file in the data directory: a single gateway (and the CLI beside it).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by several replicas.
    Postgres,
}

/// The PostgreSQL store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`; `?options=-csearch_path%3Dname` picks a
    /// schema other than `public`.
    pub url: Option<DatabaseUrl>,
    /// Connections in the pool of each gateway (plus one for the change listener).
    pub max_connections: u32,
    /// How long a query waits for a connection (opening one included) before failing; keep
    /// it well under `lookup_timeout_ms`, so that an unreachable database refuses fast.
    pub connect_timeout_ms: u64,
}

/// A database URL. It may hold a password, so it never prints: `Debug` shows a placeholder.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, to connect with (never to log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            connect_timeout_ms: 500,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: "http://127.0.0.1:18081".to_owned(),
            policies: PathBuf::from("policies/examples"),
            data_dir: PathBuf::from("data"),
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            consent: ConsentConfig::default(),
            workers: 0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            max_depth: 64,
            max_request_body_bytes: 1024 * 1024,
            max_header_bytes: 32 * 1024,
            max_connections: 4096,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            header_ms: 15_000,
            total_ms: 60_000,
            client_header_ms: 10_000,
            shutdown_ms: 15_000,
        }
    }
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self {
            erasure_key_file: None,
            cache_ttl_ms: 60_000,
            lookup_timeout_ms: 1_000,
            cache_entries: 100_000,
            store: StoreKind::Sqlite,
            postgres: PostgresConfig::default(),
        }
    }
}

impl Config {
    /// Where the erasure key is kept.
    pub fn erasure_key_path(&self) -> PathBuf {
        self.consent
            .erasure_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("erasure.key"))
    }
}

impl TimeoutsConfig {
    /// Milliseconds as a duration.
    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// Reading the configuration file failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a configuration file; every key is optional, unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses configuration YAML.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let uri: http::Uri = self
            .upstream
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("upstream `{}`: {e}", self.upstream)))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ConfigError::Invalid(format!(
                "upstream `{}` must be an http:// URL with a host",
                self.upstream
            )));
        }
        if self.limits.max_depth == 0 || self.limits.max_record_bytes == 0 {
            return Err(ConfigError::Invalid(
                "limits must be greater than zero".to_owned(),
            ));
        }
        self.consent.validate()
    }
}

impl ConsentConfig {
    /// Checks the store settings: the selected store must have what it needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.store == StoreKind::Postgres {
            match self.postgres.url.as_ref().map(|u| u.expose().trim()) {
                None | Some("") => {
                    return Err(ConfigError::Invalid(
                        "consent.store is `postgres` but no database URL is set \
                         (consent.postgres.url, CONSENTRY_POSTGRES_URL or --postgres-url)"
                            .to_owned(),
                    ));
                }
                Some(url)
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
                {
                    return Err(ConfigError::Invalid(
                        "consent.postgres.url must start with postgres:// or postgresql://"
                            .to_owned(),
                    ));
                }
                Some(_) => {}
            }
            if self.postgres.max_connections == 0 || self.postgres.connect_timeout_ms == 0 {
                return Err(ConfigError::Invalid(
                    "consent.postgres.max_connections and connect_timeout_ms must be greater \
                     than zero"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}
