//! The policy language: sources -> checked model -> [`compiled::CompiledPolicy`].
//!
//! Runtime code only ever sees the compiled form.

pub mod check;
pub mod compiled;
pub mod diagnostic;
pub mod raw;
pub mod source;
