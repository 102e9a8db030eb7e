mod fake_selftest;
mod support;
