//! Operations: what keeps a running gateway observable without slowing it down.

pub mod log;
