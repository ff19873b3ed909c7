//! Consentry: a privacy enforcement gateway in front of a CRM's HTTP/JSON API.
//!
//! # Layout
//!
//! - [`policy`]: the policy language: YAML sources, checks with file:line:col diagnostics, and
//!   the compiled form that runtime code sees.
//! - [`redact`]: the streaming JSON engine that applies a compiled view record by record
//!   (pure: no tokio, no hyper).
//! - [`consent`]: consent stores (SQLite embedded, PostgreSQL for replicas), the cache in front
//!   of them, lawful-basis decisions.
//! - [`identity`]: who is calling ([`identity::identify`]) and for which purpose.
//! - [`proxy`]: the request path ([`proxy::pipeline`]), the upstream client, refusals.
//! - [`server`]: listening, serving HTTP/1.1 and h2c, draining on shutdown.
//! - [`ops`]: operations: the batched log writer.
//! - [`config`]: operations settings (`consentry.yaml`, `CONSENTRY_*`, flags).
//! - [`cli`]: subcommands of the `consentry` binary.

pub mod cli;
pub mod config;
pub mod consent;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod identity;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod server;
