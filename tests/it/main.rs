//! Integration tests: one binary, real NATS, PostgreSQL, upstreams and MCP clients.

mod admin;
mod calls;
mod protocol;
mod python_client;
mod schemas;
mod transport;
