//! The probes every service serves on its operator listener (`ingress.metrics_listen`,
//! `worker.health_listen`, `projector.health_listen`), with its Prometheus `/metrics`:
//!
//! * `GET /healthz/live`: 200 while the process serves HTTP (restart it otherwise);
//! * `GET /healthz/ready`: 200 when NATS is connected and the JetStream streams exist,
//!   PostgreSQL answers and its schema has every migration this binary knows; 503
//!   otherwise, with which check failed;
//! * `GET /health`: the same as ready (the path documented before the two above).
//!
//! Readiness has connections of its own (one lazy PostgreSQL connection, one NATS
//! client that keeps reconnecting), so the listener answers from the process's
//! first moment: before migrations ran, or while a dependency is down, ready is a
//! 503 that says why, and live stays 200.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{Config, Topology, connections::MIGRATOR};

/// The probe paths; the Helm chart, the compose file and the systemd units name them too.
pub const LIVE_PATH: &str = "/healthz/live";
pub const READY_PATH: &str = "/healthz/ready";
/// The single health path of earlier versions: readiness.
pub const LEGACY_PATH: &str = "/health";

/// Each check gives up after this, so a probe answers within the chart's 5 s probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness looks at, with its own connections.
pub struct Readiness {
    service: &'static str,
    pool: PgPool,
    nats: async_nats::Client,
    js: jetstream::Context,
    topology: Topology,
}

/// One readiness answer: each check, and whether all passed.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Checks {
    pub nats: bool,
    pub streams: bool,
    pub database: bool,
    pub schema: bool,
}

impl Checks {
    pub fn ready(&self) -> bool {
        self.nats && self.streams && self.database && self.schema
    }
}

impl Readiness {
    /// Never waits for a dependency: the pool connects on first use, the NATS client
    /// in the background (and again after every disconnection).
    pub async fn connect(config: &Config, service: &'static str) -> anyhow::Result<Arc<Self>> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CHECK_TIMEOUT)
            .connect_lazy(&config.database_url)
            .map_err(|e| anyhow::anyhow!("the database URL: {e}"))?;
        let nats = crate::topology::connect_nats(&config.nats_url, &format!("tengine-{service}-health")).await?;
        let js = jetstream::new(nats.clone());
        Ok(Arc::new(Self {
            service,
            pool,
            nats,
            js,
            topology: Topology::from_config(config),
        }))
    }

    pub async fn check(&self) -> Checks {
        let nats = self.nats.connection_state() == async_nats::connection::State::Connected;
        let streams = nats && self.streams_present().await;
        let (database, schema) = match tokio::time::timeout(CHECK_TIMEOUT, schema_current(&self.pool)).await {
            Ok(Ok(current)) => (true, current),
            Ok(Err(_)) | Err(_) => (false, false),
        };
        Checks {
            nats,
            streams,
            database,
            schema,
        }
    }

    async fn streams_present(&self) -> bool {
        for name in [self.topology.commands_stream(), self.topology.events_stream()] {
            match tokio::time::timeout(CHECK_TIMEOUT, self.js.get_stream(&name)).await {
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Whether every migration this binary embeds is applied (with the same checksum);
/// `Err` when PostgreSQL does not answer. A database migrated further by a newer
/// version is current for this one (a rolling upgrade runs both).
pub async fn schema_current(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            // 42P01: no `_sqlx_migrations` table, nothing was ever migrated.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(false),
            Err(e) => return Err(e),
        };
    Ok(MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).all(|m| {
        applied
            .iter()
            .any(|(version, checksum)| *version == m.version && checksum.as_slice() == &*m.checksum)
    }))
}

/// `/healthz/live`, `/healthz/ready`, `/health` and `/metrics`.
pub fn router(readiness: Arc<Readiness>) -> Router {
    let ready = move || {
        let readiness = readiness.clone();
        async move {
            let checks = readiness.check().await;
            let ok = checks.ready();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = json!({
                "status": if ok { "ok" } else { "degraded" },
                "service": readiness.service,
                "version": crate::VERSION,
                "checks": checks,
            });
            (status, Json(body)).into_response()
        }
    };
    crate::prometheus::router()
        .route(LIVE_PATH, get(|| async { Json(json!({"status": "ok"})) }))
        .route(READY_PATH, get(ready.clone()))
        .route(LEGACY_PATH, get(ready))
}

/// Serves the probes of `service` on `addr` in the background; returns the bound address.
pub async fn spawn_probes(
    addr: std::net::SocketAddr,
    config: &Config,
    service: &'static str,
) -> anyhow::Result<std::net::SocketAddr> {
    spawn(addr, router(Readiness::connect(config, service).await?)).await
}

/// Serves a health router on `addr` in the background.
pub async fn spawn(addr: std::net::SocketAddr, router: Router) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the health endpoint on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(crate::serving::serve(listener, router, std::future::pending()));
    Ok(local)
}
