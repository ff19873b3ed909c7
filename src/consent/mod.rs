//! Consent: the record of consent (append-only events), the stores that keep it, the cache in
//! front of them, and the lawful-basis decision.
//!
//! - [`event`]: the event model and its import formats (CSV, JSON lines).
//! - [`store`]: the [`store::ConsentStore`] trait and the state it returns.
//! - [`sqlite`]: the embedded store (one SQLite file in the data directory).
//! - [`http`]: an external consent-management platform, read over HTTP (lookups only).
//! - [`postgres`]: the store shared by replicas (PostgreSQL, with a LISTEN/NOTIFY change feed).
//! - [`erasure`]: the key and pseudonym behind erasure records.
//! - [`decide`]: the pure decision from a state (`Granted`, `Denied`, `Unknown`).
//! - [`open`]: the store the configuration names, opened for the gateway or the CLI.
//! - [`requests`]: [`requests::ConsentRecords`], what the admin API and the CLI ask of the
//!   record (recording, imports, history, exports, erasure).
//! - [`cache`]: [`cache::ConsentService`], cached batched decisions for the request path.
//!
//! Nothing here may turn an unanswered lookup into a grant: `Unknown` takes the denied path.

pub mod cache;
pub mod decide;
pub mod erasure;
pub mod event;
pub mod http;
pub mod open;
pub mod postgres;
pub mod requests;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
