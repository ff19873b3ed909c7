//! Command-line subcommands.

pub mod check;
