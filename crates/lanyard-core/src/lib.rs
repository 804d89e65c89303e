//! Lanyard's domain: users, clients, passwords, audit events, and the `Store` and `Clock` traits
//! the rest of the system is written against.
//!
//! Invariant: nothing here does IO or knows HTTP. Time comes from a [`Clock`], persistence from a
//! [`Store`]; randomness is the one thing read from the operating system directly, because it
//! must come from the OS CSPRNG.

pub mod audit;
pub mod client;
pub mod clock;
pub mod grant;
pub mod jose;
pub mod mfa;
pub mod oauth;
pub mod password;
pub mod secret;
pub mod session;
pub mod store;
pub mod throttle;
pub mod user;

pub use clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use store::{Store, StoreError};
