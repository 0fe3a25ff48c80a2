//! What every service opens at start-up: PostgreSQL (migrated when configured),
//! NATS, and the JetStream topology.

use async_nats::jetstream;
use sqlx::PgPool;

use crate::{Config, Topology, store, topology::connect_nats};

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
        let pool = store::connect(&config.database_url, pool_size).await?;
        if config.run_migrations {
            store::migrate(&pool).await?;
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

/// Whether NATS and PostgreSQL answer (the `/health` of the worker and the projector).
pub async fn healthy(nats: &async_nats::Client, pool: &PgPool) -> bool {
    nats.connection_state() == async_nats::connection::State::Connected
        && sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// Events in the log not yet applied to run history: the log's last sequence minus
/// the projector's checkpoint. `None` when either side cannot be read.
pub async fn projector_lag(events: &jetstream::stream::Stream, pool: &PgPool) -> Option<u64> {
    let mut events = events.clone();
    let tail = events.info().await.ok()?.state.last_sequence;
    let done = store::projector_checkpoint(pool).await.ok()?;
    Some(tail.saturating_sub(u64::try_from(done).unwrap_or(0)))
}
