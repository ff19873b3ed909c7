//! Consentry: a privacy enforcement gateway in front of a CRM's HTTP/JSON API.
//!
//! # Layout
//!
//! - [`policy`]: the policy language: YAML sources, checks with file:line:col diagnostics, and
//!   the compiled form that runtime code sees.
//! - [`redact`]: the streaming JSON engine that applies a compiled view record by record
//!   (pure: no tokio, no hyper).
//! - [`consent`]: consent stores (SQLite embedded), the cache in front of them, lawful-basis
//!   decisions.

pub mod cli;
pub mod policy;
