//! The one integration-test binary (as in ripgrep): every end-to-end test, sharing the fake
//! backend (`support::fake`) and the fixture builders (`harness`).

mod archive;
mod better;
mod binary;
mod chaos;
mod daemon;
mod engine;
mod fake_selftest;
mod faults;
mod harness;
mod hooks;
mod security;
mod support;
mod systemd;
