//! The one integration-test binary (as in ripgrep): every end-to-end test, sharing the fake
//! backend (`support::fake`) and the fixture builders (`harness`).

mod archive;
mod binary;
mod better;
mod daemon;
mod engine;
mod fake_selftest;
mod harness;
mod security;
mod support;
