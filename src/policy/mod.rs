//! The policy language: sources -> checked model -> [`compiled::CompiledPolicy`].
//!
//! Runtime code only ever sees the compiled form.

pub mod compiled;
pub mod matcher;
