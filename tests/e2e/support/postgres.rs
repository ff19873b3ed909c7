//! Builders for gateways on PostgreSQL: a schema of its own per test in the test database, a
//! gateway configured for it, and a TCP relay that can cut the gateway off the database and
//! restore it on the same port.
//!
//! The database's address comes from `CONSENTRY_TEST_POSTGRES_URL`; without it the tests that
//! need it print that they were skipped and pass, unless `CONSENTRY_TEST_REQUIRE_POSTGRES=1`.
//! Nothing here mocks the database: the relay forwards bytes to the real server.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use consentry::config::StoreKind;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::GatewayBuilder;

/// A schema of its own in the test database; dropped, with everything in it, on drop.
pub struct PgSchema {
    /// The test database's URL, as given.
    base: String,
    /// The schema's name.
    pub name: String,
}

impl PgSchema {
    /// A new, empty schema; `None` (with a line saying so) when PostgreSQL tests are skipped.
    pub async fn create(test: &str) -> Option<Self> {
        let base = match std::env::var("CONSENTRY_TEST_POSTGRES_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                assert!(
                    std::env::var("CONSENTRY_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "{test}: CONSENTRY_TEST_REQUIRE_POSTGRES=1 but CONSENTRY_TEST_POSTGRES_URL is not set"
                );
                eprintln!("skipped {test}: CONSENTRY_TEST_POSTGRES_URL is not set");
                return None;
            }
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("randomness");
        let name = format!("e2e_{}", hex::encode(random));
        let mut conn = PgConnection::connect(&base)
            .await
            .expect("the test database is reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        conn.close().await.expect("close");
        Some(Self { base, name })
    }

    /// The URL of this schema: the test database, with `search_path` set to the schema.
    pub fn url(&self) -> String {
        let join = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{join}options=-csearch_path%3D{}", self.base, self.name)
    }

    /// [`PgSchema::url`], but reaching the server through `via` (a [`Relay`]).
    pub fn url_via(&self, via: SocketAddr) -> String {
        let url = self.url();
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let user = match authority.rsplit_once('@') {
            Some((user, _)) => format!("{user}@"),
            None => String::new(),
        };
        format!("{scheme}://{user}{via}{tail}")
    }

    /// How many connections listen for this schema's changes (a gateway's change listener).
    pub async fn listeners(&self) -> i64 {
        let mut conn = PgConnection::connect(&self.base).await.expect("connect");
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE query = 'LISTEN \"consentry_' || md5($1) || '\"'",
        )
        .bind(&self.name)
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_activity");
        conn.close().await.expect("close");
        n
    }

    /// The database server's TCP address.
    pub fn server(&self) -> SocketAddr {
        let options = PgConnectOptions::from_str(&self.base).expect("the URL parses");
        assert!(
            options.get_socket().is_none() && !options.get_host().starts_with('/'),
            "a relay needs a TCP address in CONSENTRY_TEST_POSTGRES_URL"
        );
        (options.get_host(), options.get_port())
            .to_socket_addrs()
            .expect("the host resolves")
            .next()
            .expect("an address")
    }
}

impl Drop for PgSchema {
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
                let mut conn = PgConnection::connect(&base).await.ok()?;
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

impl GatewayBuilder {
    /// Keeps consent in the PostgreSQL database at `url` instead of a SQLite file.
    pub fn postgres(self, url: &str) -> Self {
        let url = url.to_owned();
        self.config(move |c| {
            c.consent.store = StoreKind::Postgres;
            c.consent.postgres.url = Some(url.into());
        })
    }
}

/// A TCP relay on loopback to `target`, which can be cut (its listener and every relayed
/// connection closed) and restored on the same port.
pub struct Relay {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Relay {
    /// Relays a free port of 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        Self {
            addr,
            target,
            task: Some(tokio::spawn(relay(listener, target))),
        }
    }

    /// Stops accepting and closes every relayed connection, on both sides.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Once the task is gone, so are its connections (the join set aborts them).
            let _ = task.await;
        }
    }

    /// Accepts again, on the same port.
    pub async fn restore(&mut self) {
        assert!(self.task.is_none(), "the relay is running");
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("relay: cannot bind {} yet: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("relay: cannot bind {} again: {e}", self.addr),
            }
        };
        self.task = Some(tokio::spawn(relay(listener, self.target)));
    }
}

async fn relay(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
