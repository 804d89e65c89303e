//! Lanyard's HTTP side: configuration, telemetry, the axum router and its handlers.
//!
//! Invariant: this is the only crate that knows HTTP, cookies and status codes. Handlers hold no
//! state of their own: everything lives in the `Store`, reached through [`AppState`].

mod account;
mod authorize;
mod client_auth;
mod clients;
pub mod config;
mod discovery;
mod end_session;
mod health;
pub mod keys;
mod login;
pub mod logout;
pub mod metrics;
mod mfa;
pub mod passwords;
pub mod proxy;
mod register;
mod resource;
mod serve;
mod session;
pub mod telemetry;
mod throttle;
mod token;
mod web;
pub mod webauthn;

pub use config::Config;
pub use serve::{AppState, StartError, router, serve};
pub use session::sweep;
