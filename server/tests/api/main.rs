//! The server's integration tests: one binary, a real server on port 0 per test, driven over
//! HTTP. Tests that touch storage run on SQLite and on PostgreSQL (`<test>::sqlite`,
//! `<test>::postgres`); PostgreSQL is `DOORSTEP_TEST_POSTGRES_URL`, by default
//! postgres://postgres@127.0.0.1:5432/test, where each test creates and drops its own database.

// clippy.toml allows unwrap in #[test] functions only; here the helpers and the shared test
// bodies are plain functions, and a failed unwrap in them is a failed test, as intended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bad_input;
mod cases;
mod convergence;
mod crash;
mod evidence;
mod helpers;
mod repo_ws;
mod storage_suite;
mod sync;
