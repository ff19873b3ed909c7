//! `consentry serve`: configuration from file, environment and flags, then the gateway until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{AdminToken, Config, DatabaseUrl, MIN_ADMIN_TOKEN_CHARS, StoreKind};

/// An admin token given in clear (flag or environment). Hashed into the configuration at
/// start-up; its `Debug` form never shows it.
#[derive(Clone)]
pub struct AdminSecret(String);

impl std::fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSecret(..)")
    }
}

impl std::str::FromStr for AdminSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // clap quotes a value it refuses: never a secret. Short tokens are refused by
        // `ServeArgs::config`, without the value.
        Ok(Self(s.to_owned()))
    }
}

impl AdminSecret {
    /// Refuses a token too short to be a random secret; the message does not hold it.
    fn check(&self) -> Result<(), String> {
        if self.0.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(format!(
                "an admin token needs at least {MIN_ADMIN_TOKEN_CHARS} characters of a random secret (openssl rand -hex 32)"
            ));
        }
        Ok(())
    }
}

/// Flags of `serve`; each overrides the configuration file and has a `CONSENTRY_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// The configuration file and the consent store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "CONSENTRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Base URL of the CRM (`http://host:port`).
    #[arg(long, env = "CONSENTRY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Origin clients reach the gateway at, written in place of the upstream's in links.
    #[arg(long, env = "CONSENTRY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Policy directory.
    #[arg(long, env = "CONSENTRY_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Largest upstream body on a protected route, in bytes.
    #[arg(long, env = "CONSENTRY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Largest record, in bytes.
    #[arg(long, env = "CONSENTRY_MAX_RECORD_BYTES")]
    pub max_record_bytes: Option<usize>,
    /// Deepest JSON nesting in a record.
    #[arg(long, env = "CONSENTRY_MAX_DEPTH")]
    pub max_depth: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, env = "CONSENTRY_MAX_REQUEST_BODY_BYTES")]
    pub max_request_body_bytes: Option<u64>,
    /// Largest request head, in bytes.
    #[arg(long, env = "CONSENTRY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most header fields in a request.
    #[arg(long, env = "CONSENTRY_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Most records in one upstream body.
    #[arg(long, env = "CONSENTRY_MAX_RECORDS")]
    pub max_records: Option<usize>,
    /// Most concurrent client connections.
    #[arg(long, env = "CONSENTRY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Upstream connect timeout, ms.
    #[arg(long, env = "CONSENTRY_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Upstream response-head timeout, ms.
    #[arg(long, env = "CONSENTRY_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// Whole upstream exchange timeout, ms.
    #[arg(long, env = "CONSENTRY_TOTAL_TIMEOUT_MS")]
    pub total_timeout_ms: Option<u64>,
    /// Consent cache TTL, ms.
    #[arg(long, env = "CONSENTRY_CONSENT_CACHE_TTL_MS")]
    pub consent_cache_ttl_ms: Option<u64>,
    /// Consent lookup timeout, ms.
    #[arg(long, env = "CONSENTRY_CONSENT_TIMEOUT_MS")]
    pub consent_timeout_ms: Option<u64>,
    /// Client request-head timeout, ms.
    #[arg(long, env = "CONSENTRY_CLIENT_HEADER_TIMEOUT_MS")]
    pub client_header_timeout_ms: Option<u64>,
    /// Close client connections with no new request for this long, ms.
    #[arg(long, env = "CONSENTRY_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Grace period for requests in flight on shutdown, ms.
    #[arg(long, env = "CONSENTRY_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Most entries in the consent cache.
    #[arg(long, env = "CONSENTRY_CONSENT_CACHE_ENTRIES")]
    pub consent_cache_entries: Option<usize>,
    /// Most consent store lookups in flight at once.
    #[arg(long, env = "CONSENTRY_CONSENT_MAX_CONCURRENT_LOOKUPS")]
    pub consent_max_concurrent_lookups: Option<usize>,
    /// Threads serving the proxy's connections (0: one per core).
    #[arg(long, env = "CONSENTRY_WORKERS")]
    pub workers: Option<usize>,
    /// Address of the admin API listener (off unless set).
    #[arg(long, env = "CONSENTRY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// An admin token in clear, added as the token named `env` (hashed at start-up; prefer
    /// the environment variable to the flag, which other users can see in `ps`).
    #[arg(long, env = "CONSENTRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<AdminSecret>,
    /// Largest admin request body, in bytes.
    #[arg(long, env = "CONSENTRY_ADMIN_MAX_BODY_BYTES")]
    pub admin_max_body_bytes: Option<u64>,
    /// Admin requests per second per token (0: no limit).
    #[arg(long, env = "CONSENTRY_ADMIN_RATE_PER_SECOND")]
    pub admin_rate_per_second: Option<u32>,
    /// Admin requests a token may make at once before the rate applies.
    #[arg(long, env = "CONSENTRY_ADMIN_BURST")]
    pub admin_burst: Option<u32>,
}

/// The name of the admin token given by `CONSENTRY_ADMIN_TOKEN` or `--admin-token`.
pub const ENV_TOKEN_NAME: &str = "env";

/// Flags shared by every command that opens the consent store (`serve`, `consent ...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct StoreArgs {
    /// The operations configuration file (`consentry.yaml`).
    #[arg(long, env = "CONSENTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (embedded consent store, erasure key).
    #[arg(long, env = "CONSENTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The erasure key file (default: DATA_DIR/erasure.key).
    #[arg(long, env = "CONSENTRY_ERASURE_KEY_FILE")]
    pub erasure_key_file: Option<PathBuf>,
    /// The consent store: `sqlite` (a file in the data directory), `postgres` (shared by
    /// replicas; needs a URL) or `http` (reads the platform set in the file's `consent.http`).
    #[arg(long, env = "CONSENTRY_CONSENT_STORE", value_enum)]
    pub consent_store: Option<StoreKind>,
    /// The PostgreSQL URL (`postgres://user:password@host:port/database`).
    #[arg(long, env = "CONSENTRY_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<DatabaseUrl>,
}

impl StoreArgs {
    /// The configuration file's settings (or the defaults) with these flags applied.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut c);
        c.consent.validate()?;
        Ok(c)
    }

    /// Applies the flags that were given.
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.erasure_key_file {
            c.consent.erasure_key_file = Some(v.clone());
        }
        if let Some(v) = self.consent_store {
            c.consent.store = v;
        }
        if let Some(v) = &self.postgres_url {
            c.consent.postgres.url = Some(v.clone());
        }
    }
}

impl ServeArgs {
    /// The configuration: defaults, then the file, then environment and flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = self.store.config()?;
        if let Some(public) = &self.public_url {
            c.public_url = Some(public.clone());
        }
        macro_rules! set {
            ($($flag:ident => $($field:ident).+;)*) => {
                $(if let Some(v) = &self.$flag { c.$($field).+ = v.clone(); })*
            };
        }
        set! {
            listen => listen;
            upstream => upstream;
            policies => policies;
            max_body_bytes => limits.max_body_bytes;
            max_record_bytes => limits.max_record_bytes;
            max_depth => limits.max_depth;
            max_request_body_bytes => limits.max_request_body_bytes;
            max_header_bytes => limits.max_header_bytes;
            max_headers => limits.max_headers;
            max_records => limits.max_records;
            max_connections => limits.max_connections;
            connect_timeout_ms => timeouts.connect_ms;
            header_timeout_ms => timeouts.header_ms;
            total_timeout_ms => timeouts.total_ms;
            consent_cache_ttl_ms => consent.cache_ttl_ms;
            consent_timeout_ms => consent.lookup_timeout_ms;
            client_header_timeout_ms => timeouts.client_header_ms;
            idle_timeout_ms => timeouts.idle_ms;
            shutdown_timeout_ms => timeouts.shutdown_ms;
            consent_cache_entries => consent.cache_entries;
            consent_max_concurrent_lookups => consent.max_concurrent_lookups;
            workers => workers;
            admin_max_body_bytes => admin.max_body_bytes;
            admin_rate_per_second => admin.rate_per_second;
            admin_burst => admin.burst;
        }
        if let Some(v) = self.admin_listen {
            c.admin.listen = Some(v);
        }
        if let Some(token) = &self.admin_token {
            token.check().map_err(anyhow::Error::msg)?;
        }
        if let Some(AdminSecret(secret)) = &self.admin_token {
            // The clear text stays in these arguments, which `run` drops once the
            // configuration is built; only the digest goes on.
            c.admin.tokens.retain(|t| t.name != ENV_TOKEN_NAME);
            c.admin
                .tokens
                .push(AdminToken::from_secret(ENV_TOKEN_NAME, secret));
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs `serve`.
pub fn run(args: ServeArgs) -> ExitCode {
    let _log = super::init_tracing();
    let config = args.config();
    // The only copy of a clear admin token: gone before anything is served.
    drop(args);
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = super::main_runtime().and_then(|rt| {
        if let Some(log) = &_log {
            rt.spawn(log.0.clone().flush_periodically());
        }
        rt.block_on(serve(config))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<crate::server::StartError>()
                .is_some_and(|s| matches!(s, crate::server::StartError::Policy { .. }))
            {
                return ExitCode::from(3);
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let gateway = crate::server::build(&config).await?;
    let admin = match config.admin.listen {
        Some(addr) => {
            let admin = crate::admin::Admin::new(gateway.clone(), &config.admin)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin listener {addr}"))?;
            Some((listener, admin))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listener {}", config.listen))?;
    tracing::info!(listen = %config.listen, upstream = %config.upstream, "consentry listening");
    if let Some(addr) = config.admin.listen {
        let names: Vec<&str> = config
            .admin
            .tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        tracing::info!(listen = %addr, tokens = ?names, "admin API listening");
    }
    tokio::spawn(crate::server::reload_on_hangup(
        gateway.clone(),
        config.policies.clone(),
    ));
    let lanes = crate::lanes::Lanes::start(crate::lanes::count(config.workers))
        .context("starting the worker threads")?;
    // One signal stops both listeners; each drains its own requests.
    crate::server::run_with_admin(
        listener,
        gateway,
        Some(&lanes),
        admin,
        &config,
        crate::server::signal(),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consentry.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:9000\nupstream: http://10.0.0.1:8000\nlimits:\n  max_depth: 12\n",
        )
        .unwrap();
        let w = Wrapper::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
            "--max-record-bytes",
            "4096",
        ]);
        let c = w.args.config().unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.upstream, "http://10.0.0.1:8000");
        assert_eq!(c.limits.max_depth, 12);
        assert_eq!(c.limits.max_record_bytes, 4096);
        assert_eq!(
            c.limits.max_body_bytes,
            crate::config::LimitsConfig::default().max_body_bytes
        );
    }

    #[test]
    fn admin_settings_from_the_file_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consentry.yaml");
        let digest = AdminToken::from_secret("x", "0123456789abcdef-file").sha256;
        std::fs::write(
            &file,
            format!(
                "admin:\n  listen: 127.0.0.1:8081\n  tokens:\n    - {{ name: privacy-team, sha256: {digest} }}\n  rate_per_second: 5\n"
            ),
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = Wrapper::parse_from(["x", "--config", path])
            .args
            .config()
            .unwrap();
        assert_eq!(c.admin.listen.map(|a| a.port()), Some(8081));
        assert_eq!(c.admin.tokens.len(), 1);
        assert_eq!(c.admin.rate_per_second, 5);
        let w = Wrapper::parse_from([
            "x",
            "--config",
            path,
            "--admin-token",
            "0123456789abcdef-flag",
            "--admin-burst",
            "3",
            "--admin-listen",
            "127.0.0.1:9999",
        ]);
        assert!(!format!("{w:?}").contains("0123456789abcdef-flag"));
        let c = w.args.config().unwrap();
        assert_eq!(c.admin.burst, 3);
        assert_eq!(c.admin.listen.map(|a| a.port()), Some(9999));
        assert_eq!(
            c.admin.tokens.last(),
            Some(&AdminToken::from_secret("env", "0123456789abcdef-flag"))
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef-flag"));
        // A short token is refused before it is used, and the refusal does not quote it.
        let err = Wrapper::parse_from(["x", "--admin-token", "Sh0rtS3cret"])
            .args
            .config()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("at least 16") && !err.contains("Sh0rtS3cret"),
            "{err}"
        );
        // An admin listener without a token does not start.
        let err = Wrapper::parse_from(["x", "--admin-listen", "127.0.0.1:8081"])
            .args
            .config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no admin token"), "{err}");
        std::fs::write(
            &file,
            "admin:\n  tokens:\n    - { name: a, sha256: nothex }\n",
        )
        .unwrap();
        let err = Wrapper::parse_from(["x", "--config", path])
            .args
            .config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        std::fs::write(&file, "admin:\n  listen: 127.0.0.1:1\n  token: x\n").unwrap();
        let err = Wrapper::parse_from(["x", "--config", path])
            .args
            .config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("token"), "{err}");
    }

    #[test]
    fn a_configuration_error_does_not_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consentry.yaml");
        std::fs::write(
            &file,
            "consent:\n  postgres:\n    url: postgres://gw:s3cr3t-pw@db/consent\n    max_connections: lots\n",
        )
        .unwrap();
        let w = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]);
        let err = w.args.config().unwrap_err().to_string();
        assert!(err.contains("line 4 column 22"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_upstreams_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consentry.yaml");
        std::fs::write(&file, "limits:\n  max_dept: 12\n").unwrap();
        let w = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]);
        let err = w.args.config().unwrap_err().to_string();
        assert!(err.contains("max_dept"), "{err}");
        let w = Wrapper::parse_from(["x", "--upstream", "https://crm"]);
        assert!(w.args.config().is_err());
    }

    #[test]
    fn the_public_url_is_an_origin() {
        for good in ["https://gw.example.com", "http://10.0.0.1:8080/"] {
            let w = Wrapper::parse_from(["x", "--public-url", good]);
            assert_eq!(w.args.config().unwrap().public_url.as_deref(), Some(good));
        }
        for bad in [
            "gw.example.com",
            "ftp://gw",
            "https://gw/api",
            "https://gw/?a=1",
            "/x",
            // Parsed without them, but written into every link as they are.
            "https://gw#top",
            "https://gw/#",
            "https://user:secret@gw",
        ] {
            let w = Wrapper::parse_from(["x", "--public-url", bad]);
            let err = w.args.config().unwrap_err().to_string();
            assert!(err.contains("public_url"), "{bad}: {err}");
        }
        assert_eq!(
            Wrapper::parse_from(["x"]).args.config().unwrap().public_url,
            None
        );
    }

    #[test]
    fn the_consent_store_is_chosen_by_flag() {
        let w = Wrapper::parse_from(["x"]);
        assert_eq!(w.args.config().unwrap().consent.store, StoreKind::Sqlite);
        // `http` needs its section in the file.
        let w = Wrapper::parse_from(["x", "--consent-store", "http"]);
        let err = w.args.config().unwrap_err().to_string();
        assert!(err.contains("consent.http"), "{err}");
        assert!(
            Wrapper::try_parse_from(["x", "--consent-store", "mongo"]).is_err(),
            "an unknown store is refused"
        );
    }

    #[test]
    fn the_consent_store_is_chosen_by_file_or_flag_and_postgres_needs_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("consentry.yaml");
        std::fs::write(
            &file,
            "consent:\n  store: postgres\n  postgres:\n    max_connections: 3\n",
        )
        .unwrap();
        let w = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]);
        let err = w.args.config().unwrap_err().to_string();
        assert!(err.contains("no database URL"), "{err}");
        assert!(err.contains("CONSENTRY_POSTGRES_URL"), "{err}");

        let secret = "postgres://gw:s3cret@db:5432/consent";
        let w = Wrapper::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--postgres-url",
            secret,
        ]);
        let c = w.args.config().unwrap();
        assert_eq!(c.consent.store, crate::config::StoreKind::Postgres);
        assert_eq!(c.consent.postgres.max_connections, 3);
        assert_eq!(c.consent.postgres.connect_timeout_ms, 500);
        assert_eq!(c.consent.postgres.url.as_ref().unwrap().expose(), secret);
        // The password never shows in a debug print of the settings.
        assert!(!format!("{c:?} {:?}", w.args).contains("s3cret"));

        // The flag selects a store over the file's choice; the default is SQLite.
        let w = Wrapper::parse_from(["x", "--consent-store", "sqlite"]);
        assert_eq!(
            w.args.config().unwrap().consent.store,
            crate::config::StoreKind::Sqlite
        );
        assert_eq!(
            Wrapper::parse_from(["x"])
                .args
                .config()
                .unwrap()
                .consent
                .store,
            crate::config::StoreKind::Sqlite
        );
        let w = Wrapper::parse_from([
            "x",
            "--consent-store",
            "postgres",
            "--postgres-url",
            "mysql://x",
        ]);
        assert!(w.args.config().is_err());
        std::fs::write(&file, "consent:\n  postgres:\n    password: x\n").unwrap();
        let w = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]);
        assert!(
            w.args
                .config()
                .unwrap_err()
                .to_string()
                .contains("password")
        );
    }

    #[test]
    fn the_documented_configuration_parses_as_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/consentry.yaml");
        let c = Config::from_file(&path).unwrap();
        let d = Config::default();
        assert_eq!(c.consent.store, d.consent.store);
        assert!(c.consent.postgres.url.is_none());
        assert_eq!(
            c.consent.postgres.max_connections,
            d.consent.postgres.max_connections
        );
        assert_eq!(
            c.consent.postgres.connect_timeout_ms,
            d.consent.postgres.connect_timeout_ms
        );
    }
}
