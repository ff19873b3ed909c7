//! End-to-end tests: a real upstream on loopback, the gateway in-process on a free port with a
//! real SQLite consent store (or the test PostgreSQL database, for replicas), and clients
//! speaking HTTP/1.1, HTTP/2 and raw TCP.
//!
//! Each test asserts what a client of the gateway sees: status, reason code, content type and
//! body, and where it matters what the upstream received.

// Most test bodies are async fns run over both protocols by `both!`, outside `#[test]` items,
// where clippy.toml's test allowances do not reach.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure here is a failing test"
)]

mod support;

mod admin;
mod adversarial;
mod consent;
mod demo;
pub mod fail_closed;
mod identity;
mod lanes;
mod lawful_bases;
mod paths;
mod platform;
mod protocol;
mod redaction;
mod replicas;
mod sdks;
mod shapes;
