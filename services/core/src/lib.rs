//! What the Tengine services share: configuration, the JetStream topology and
//! message envelopes, domain types, request templates, signing, secrets and the
//! PostgreSQL store.

// Shared by every service's call path: no arithmetic on input may panic.
#![deny(clippy::arithmetic_side_effects)]

pub mod bodies;
pub mod bus;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod domain;
pub mod envelope;
pub mod health;
pub mod payload;
pub mod prometheus;
pub mod secrets;
pub mod signing;
pub mod storable;
pub mod tasks;
pub mod telemetry;
pub mod templates;
pub mod topology;

pub use config::Config;
pub use topology::Topology;

/// The product version reported to clients and in `/v1/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
