//! What every Tengine service shares: configuration, the JetStream topology,
//! message envelopes and the bus, connections (PostgreSQL pool, migrations,
//! NATS), signing, secrets, credentials, telemetry, the tool model with its
//! request templates. No queries over tables: the control plane's are in
//! `tengine-control`, run history's in `tengine-projector`.

// Shared by every service's call path: no arithmetic on input may panic.
#![deny(clippy::arithmetic_side_effects)]

pub mod addresses;
pub mod bodies;
pub mod bus;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod domain;
pub mod envelope;
pub mod errors;
pub mod health;
pub mod markers;
pub mod payload;
pub mod prometheus;
pub mod request;
pub mod secrets;
pub mod serving;
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
