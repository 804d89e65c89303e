//! Lanyard's HTTP side: configuration, telemetry, the axum router and its handlers.
//!
//! Invariant: this is the only crate that knows HTTP, cookies and status codes. Handlers hold no
//! state of their own: everything lives in the `Store`, reached through [`AppState`].

mod account;
pub mod config;
mod health;
mod login;
pub mod passwords;
mod serve;
mod session;
pub mod telemetry;
mod throttle;
mod web;

pub use config::Config;
pub use serve::{AppState, router, serve};
pub use session::sweep;
