//! Consent: the record of consent (append-only events), the stores that keep it, the cache in
//! front of them, and the lawful-basis decision.
//!
//! - [`event`]: the event model and its import formats (CSV, JSON lines).
//! - [`store`]: the [`store::ConsentStore`] trait and the state it returns.
//! - [`sqlite`]: the embedded store (one SQLite file in the data directory).
//! - [`decide`]: the pure decision from a state (`Granted`, `Denied`, `Unknown`).
//! - [`cache`]: [`cache::ConsentService`], cached batched decisions for the request path.
//!
//! Nothing here may turn an unanswered lookup into a grant: `Unknown` takes the denied path.

pub mod cache;
pub mod decide;
pub mod event;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod tests;
