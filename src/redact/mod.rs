//! The transform engine over JSON: applies a compiled [`View`](crate::policy::compiled::View)
//! to a response body, record by record, as it streams.
//!
//! Pure code: no tokio, no hyper, no store. Consent decisions come in from the caller, batch
//! by batch (see [`stream::Redactor`]).

pub mod frame;
pub mod links;
mod order;
pub mod scan;
pub mod spare;
pub mod stream;
pub mod subject;
pub mod transform;

pub use stream::{Counts, Limits, RedactError, Redactor};
