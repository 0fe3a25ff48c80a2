//! The control plane's data and every query over it: projects, integrations,
//! API keys and the principals they authenticate, member keys and sessions,
//! tools (and their sealed secrets), quota counters. One module per table or
//! concept. Written by the admin API (ingress); read by the ingress and the
//! worker, through these functions only.

// On every call's path (authentication, tool lookup, quotas): no arithmetic on input may panic.
#![deny(clippy::arithmetic_side_effects)]

pub mod api_keys;
mod error;
pub mod freshness;
pub mod integrations;
pub mod member_keys;
pub mod members;
pub mod oauth;
pub mod principals;
pub mod projects;
pub mod quotas;
pub mod tools;

pub use error::{StoreError, StoreResult};
