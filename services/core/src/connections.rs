//! What every service opens at start-up: PostgreSQL (migrated when configured),
//! NATS, and the JetStream topology.

use async_nats::jetstream;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{Config, Topology, topology::connect_nats};

/// The schema of every table, from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool of at most `max_connections` (at least one) PostgreSQL connections.
pub async fn connect_postgres(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        // sqlx pings every connection before handing it out by default: one extra
        // round trip per query on every call's critical path. A connection that
        // broke meanwhile fails its query instead (answered "retry") and is dropped.
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"))
}

/// Without `run_migrations`, someone else migrates (`tengine migrate`: the Helm
/// chart's hook Job, the compose file's `migrate` service): a service started first
/// waits for it (its readiness probe says `schema: false` meanwhile) rather than
/// failing on a missing table later.
async fn wait_for_schema(pool: &PgPool) -> anyhow::Result<()> {
    let mut logged = false;
    loop {
        if crate::health::schema_current(pool)
            .await
            .map_err(|e| anyhow::anyhow!("reading the schema version: {e}"))?
        {
            return Ok(());
        }
        if !logged {
            tracing::warn!("the database schema is not current; waiting for `tengine migrate`");
            logged = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub struct Connections {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub commands: jetstream::stream::Stream,
    pub events: jetstream::stream::Stream,
}

impl Connections {
    /// `service` names the NATS connection; `pool_size` bounds database connections.
    pub async fn open(config: &Config, service: &str, pool_size: u32) -> anyhow::Result<Self> {
        let pool = connect_postgres(&config.database_url, pool_size).await?;
        if config.run_migrations {
            migrate(&pool).await?;
        } else {
            wait_for_schema(&pool).await?;
        }
        let nats = connect_nats(&config.nats_url, service).await?;
        let js = jetstream::new(nats.clone());
        let topology = Topology::from_config(config);
        let (commands, events) = topology.ensure_streams(&js, &config.streams).await?;
        Ok(Self {
            pool,
            nats,
            js,
            topology,
            commands,
            events,
        })
    }
}
