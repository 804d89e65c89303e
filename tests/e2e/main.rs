//! Lanyard's end-to-end tests: the one integration test binary.
//!
//! Every test runs against SQLite, or against PostgreSQL when `LANYARD_TEST_DATABASE_URL` is
//! set (each test then gets a schema of its own in that database). `.ci/run` runs the suite
//! once each way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod cli;
mod harness;
mod http;
mod instances;
mod logout;
mod metrics;
mod mfa;
mod oidc;
mod oidc_attacks;
mod proxy;
mod sessions;
mod sso;
mod store;
