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
    /// Origin clients reach the gateway at (`https://crm-gateway.example.com`), written in
    /// place of the upstream's base URL in the links of kept envelope members (paging links).
    /// `None`: `http://` and the request's `Host`.
    pub public_url: Option<String>,
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
    /// The admin API (off unless `admin.listen` is set).
    pub admin: AdminConfig,
    /// Threads serving the proxy's connections, each with its own runtime ([`crate::lanes`];
    /// 0: one per core). The accept loop, the admin API and background tasks run on one more.
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
    /// Most header fields in a request.
    pub max_headers: usize,
    /// Most records in one upstream body (each costs a consent decision).
    pub max_records: usize,
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
    /// A client connection on which no request started for this long is closed gracefully
    /// (HTTP/2 with a GOAWAY; a response still streaming finishes first).
    pub idle_ms: u64,
    /// Draining requests in flight on shutdown.
    pub shutdown_ms: u64,
}

/// Which consent store the gateway and the `consent` commands use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// The embedded SQLite file in the data directory.
    #[default]
    Sqlite,
    /// An external consent-management platform, read over HTTP (`consent.http`).
    Http,
    /// A PostgreSQL database shared by several replicas (`consent.postgres`).
    Postgres,
}

/// The consent cache and store lookups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// The store that keeps consent.
    pub store: StoreKind,
    /// The external platform, when `store` is `http` (ignored otherwise).
    pub http: Option<HttpStoreConfig>,
    /// The key file behind erasure pseudonyms (default: `DATA_DIR/erasure.key`, created on
    /// first use). Replicas sharing a store must share it.
    pub erasure_key_file: Option<PathBuf>,
    /// How long a looked-up consent state is reused.
    pub cache_ttl_ms: u64,
    /// How long a batched store lookup may take before it counts as "no consent".
    pub lookup_timeout_ms: u64,
    /// Most cached entries.
    pub cache_entries: usize,
    /// Most store lookups in flight at once; a lookup waiting for its turn past
    /// `lookup_timeout_ms` counts as "no consent".
    pub max_concurrent_lookups: usize,
    /// The PostgreSQL store (used when `store` is `postgres`).
    pub postgres: PostgresConfig,
}

/// An external consent-management platform asked over plain HTTP, one request per subject
/// (see `consent/http.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStoreConfig {
    /// `http://host:port/path?query` with `{subject}` and `{purpose}` placeholders, each
    /// replaced by the percent-encoded value.
    pub url: String,
    /// The header that carries `token_env`'s value (default `authorization`).
    #[serde(default)]
    pub header: Option<String>,
    /// The environment variable whose value is sent in `header` (`Bearer abc...`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Time budget of one request, connecting included.
    #[serde(default = "HttpStoreConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most requests to the platform in flight at once.
    #[serde(default = "HttpStoreConfig::default_max_concurrent")]
    pub max_concurrent: usize,
    /// Where the answer says what the subject did, and the platform's words for it.
    pub status: HttpStatusConfig,
    /// JSONPath of when the subject did it (RFC 3339 text or unix milliseconds).
    #[serde(default)]
    pub at: Option<String>,
    /// JSONPath of when a grant lapses (RFC 3339 text or unix milliseconds).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// JSONPath of a boolean: the subject opted out of every sale or sharing purpose.
    #[serde(default)]
    pub opt_out_all: Option<String>,
}

impl HttpStoreConfig {
    fn default_timeout_ms() -> u64 {
        800
    }

    fn default_max_concurrent() -> usize {
        16
    }
}

/// The status of an answer: a JSONPath and the values that mean each kind of event. Values are
/// JSON scalars compared exactly (`true` and `"true"` differ); a value in no list is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusConfig {
    /// JSONPath of the status in the answer.
    pub path: String,
    /// Values meaning the subject granted the purpose.
    pub granted: Vec<serde_json::Value>,
    /// Values meaning the subject withdrew it.
    #[serde(default)]
    pub withdrawn: Vec<serde_json::Value>,
    /// Values meaning the subject objected to it.
    #[serde(default)]
    pub objected: Vec<serde_json::Value>,
    /// Values meaning the subject opted out of it (sale or sharing).
    #[serde(default)]
    pub opted_out: Vec<serde_json::Value>,
    /// Values meaning the platform holds nothing for the purpose (as a 404 does).
    #[serde(default)]
    pub none: Vec<serde_json::Value>,
}

/// The admin API: its own listener, its own tokens, its own limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; `None` (the default): no admin API.
    pub listen: Option<SocketAddr>,
    /// The tokens that may call it, as SHA-256 digests of the token; the name becomes the
    /// actor of what the token records (`admin:<name>`).
    pub tokens: Vec<AdminToken>,
    /// Largest request body (an import is one body).
    pub max_body_bytes: u64,
    /// Requests per second per token, refilled continuously (0: no limit).
    pub rate_per_second: u32,
    /// Requests a token may make at once before the rate applies.
    pub burst: u32,
}

/// One admin token, as the configuration holds it: never in clear.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it (`privacy-team`, `crm-sync`): recorded as the actor `admin:<name>`.
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
}

/// Fewest characters of a token given in clear (`--admin-token`): tokens are random secrets,
/// and a SHA-256 digest only protects one that cannot be guessed.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

impl AdminToken {
    /// The configuration entry of a token given in clear; the clear text is not kept.
    pub fn from_secret(name: &str, secret: &str) -> Self {
        use sha2::Digest;
        Self {
            name: name.to_owned(),
            sha256: hex::encode(sha2::Sha256::digest(secret.as_bytes())),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tokens: Vec::new(),
            max_body_bytes: 16 * 1024 * 1024,
            rate_per_second: 20,
            burst: 40,
        }
    }
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
            public_url: None,
            policies: PathBuf::from("policies/examples"),
            data_dir: PathBuf::from("data"),
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            consent: ConsentConfig::default(),
            admin: AdminConfig::default(),
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
            max_headers: 100,
            max_records: 100_000,
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
            idle_ms: 60_000,
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
            http: None,
            max_concurrent_lookups: 32,
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
        // The error's first line names the line, the column and what is wrong; the lines after
        // it quote the file, which may hold a database password or a token: never shown.
        serde_saphyr::from_str(text).map_err(|e| {
            let full = e.to_string();
            let first = full.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_owned()
        })
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
        if let Some(public) = &self.public_url {
            let uri: Option<http::Uri> = public.parse().ok();
            // The text goes into links as it is written: a fragment (which the parser drops)
            // would break them, and a user and password would reach every client.
            let origin = !public.contains(['#', '@'])
                && uri.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some()
                        && matches!(u.path(), "" | "/")
                        && u.query().is_none()
                });
            if !origin {
                return Err(ConfigError::Invalid(format!(
                    "public_url `{public}` must be an origin: http:// or https://, a host and \
                     an optional port, no path, user or fragment"
                )));
            }
        }
        if self.consent.store == StoreKind::Http && self.consent.http.is_none() {
            return Err(ConfigError::Invalid(
                "consent.store is `http` but there is no `consent.http` section".to_owned(),
            ));
        }
        if self.consent.max_concurrent_lookups == 0 {
            return Err(ConfigError::Invalid(
                "consent.max_concurrent_lookups must be greater than zero".to_owned(),
            ));
        }
        if self.limits.max_depth == 0
            || self.limits.max_record_bytes == 0
            || self.limits.max_headers == 0
            || self.limits.max_records == 0
        {
            return Err(ConfigError::Invalid(
                "limits must be greater than zero".to_owned(),
            ));
        }
        self.consent.validate()?;
        self.admin.validate()
    }
}

impl AdminConfig {
    /// Checks the admin settings: an enabled admin API needs a token, and every token entry
    /// must be usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_some() && self.tokens.is_empty() {
            return invalid(
                "admin.listen is set but no admin token is configured: add admin.tokens \
                 (name and sha256) or set CONSENTRY_ADMIN_TOKEN"
                    .to_owned(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.tokens {
            if t.name.is_empty() || t.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return invalid(format!(
                    "admin token name `{}` must be non-empty, without spaces",
                    t.name.escape_debug()
                ));
            }
            if !names.insert(t.name.as_str()) {
                return invalid(format!("admin token name `{}` appears twice", t.name));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(format!(
                    "admin token `{}`: sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                    t.name
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return invalid("admin.max_body_bytes must be greater than zero".to_owned());
        }
        if self.rate_per_second > 0 && self.burst == 0 {
            return invalid("admin.burst must be at least 1 when a rate is set".to_owned());
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_reference_parses_and_holds_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/consentry.yaml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        let d = AdminConfig::default();
        assert_eq!(c.admin.listen, None);
        assert!(c.admin.tokens.is_empty());
        assert_eq!(c.admin.max_body_bytes, d.max_body_bytes);
        assert_eq!(c.admin.rate_per_second, d.rate_per_second);
        assert_eq!(c.admin.burst, d.burst);
        assert_eq!(
            c.limits.max_body_bytes,
            LimitsConfig::default().max_body_bytes
        );
    }
}
