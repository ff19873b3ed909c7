//! Subcommands of the `consentry` binary, one file each.

pub mod consent;
