//! Integration tests: one binary, real NATS, PostgreSQL, upstreams and MCP clients.

mod admin;
mod approvals;
mod bodies;
mod calls;
mod confirmations;
mod control;
mod docs;
mod edges_storage;
mod input;
mod modern;
mod observability;
mod openapi;
mod openapi_import;
mod outcomes;
mod ownership;
mod protocol;
mod quotas;
mod rebuild;
mod retention;
mod retries;
mod schemas;
mod sdk_clients;
mod signatures;
mod tasks;
mod transport;
mod usage;
