//! Consentry: a privacy enforcement gateway in front of a CRM's HTTP/JSON API.
//!
//! # Layout
//!
//! - [`policy`]: the policy language: YAML sources, checks with file:line:col diagnostics, and
//!   the compiled form that runtime code sees.
//! - [`redact`]: the streaming JSON engine that applies a compiled view record by record
//!   (pure: no tokio, no hyper).
//! - [`consent`]: consent stores (SQLite embedded, PostgreSQL for replicas, a platform over
//!   HTTP), the cache in front of them, lawful-basis decisions.
//! - [`identity`]: who is calling ([`identity::identify`]) and for which purpose.
//! - [`proxy`]: the request path ([`proxy::pipeline`]), the upstream client, refusals.
//! - [`server`]: listening, serving HTTP/1.1 and h2c, draining on shutdown.
//! - [`lanes`]: the threads that serve the proxy's connections, each with its own runtime.
//! - [`admin`]: the admin API on its own listener (record of consent, data subject requests,
//!   OpenAPI).
//! - [`ops`]: operations: the batched log writer.
//! - [`config`]: operations settings (`consentry.yaml`, `CONSENTRY_*`, flags).
//! - [`cli`]: subcommands of the `consentry` binary.
//! - `fuzzing` (only under `cfg(fuzzing)` and `cfg(test)`): the strict DOM reference of the
//!   engine, shared by the fuzz targets in `fuzz/` and the property tests beside it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod consent;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod identity;
pub mod lanes;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod server;
