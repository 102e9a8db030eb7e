//! Shared helpers for the integration test binary.

pub mod fake;
