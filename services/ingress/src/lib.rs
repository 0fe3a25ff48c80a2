//! The ingress: MCP Streamable HTTP at `/mcp` and the admin API under `/v1`.
//! It authenticates callers, validates arguments, queues runs on JetStream and
//! waits for their outcome on a reply subject.

pub mod admin;
pub mod arguments;
pub mod dispatch;
pub mod error;
pub mod mcp;
pub mod sessions;

use std::{future::Future, sync::Arc};

use async_nats::jetstream;
use axum::{
    Json, Router,
    extract::{MatchedPath, State},
    http::{Request, StatusCode},
    response::IntoResponse,
    routing::get,
};
use serde_json::json;
use sqlx::PgPool;
use tengine_core::{Config, Topology, secrets::SecretBox, store};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::{arguments::Validators, dispatch::Dispatcher, sessions::SessionCodec};

pub struct AppState {
    pub config: Config,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub secrets: SecretBox,
    pub sessions: SessionCodec,
    pub dispatcher: Dispatcher,
    pub validators: Validators,
}

impl AppState {
    /// Connects to Postgres and NATS and prepares the topology.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let secrets = SecretBox::new(&config.master_key_bytes()?);
        let sessions = SessionCodec::new(config.session_secret_bytes()?, config.ingress.session_ttl_secs);
        let pool = store::connect(&config.database_url, 32).await?;
        if config.run_migrations {
            store::migrate(&pool).await?;
        }
        let nats = tengine_core::topology::connect_nats(&config.nats_url, "tengine-ingress").await?;
        let js = jetstream::new(nats.clone());
        let topology = Topology::from_config(&config);
        let (_, events) = topology.ensure_streams(&js, &config.streams).await?;
        let dispatcher = Dispatcher::start(nats.clone(), js, events, topology).await?;
        Ok(Arc::new(Self {
            config,
            pool,
            nats,
            secrets,
            sessions,
            dispatcher,
            validators: Validators::new(10_000),
        }))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mcp", get(mcp::get).post(mcp::post).delete(mcp::delete))
        .route("/v1/health", get(health))
        .route("/.well-known/oauth-protected-resource", get(protected_resource))
        .route("/.well-known/oauth-protected-resource/mcp", get(protected_resource))
        .merge(admin::routes())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let path = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("http", method = %request.method(), path = %path)
        }))
        .with_state(state)
}

/// RFC 9728 metadata, named by `WWW-Authenticate` on 401s: bearer tokens in the header.
async fn protected_resource(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let base = st.config.ingress.public_url.trim_end_matches('/');
    Json(json!({
        "resource": format!("{base}/mcp"),
        "bearer_methods_supported": ["header"],
        "resource_name": "Tengine",
    }))
}

async fn health(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let database = sqlx::query("SELECT 1").execute(&st.pool).await.is_ok();
    let nats = st.nats.connection_state() == async_nats::connection::State::Connected;
    let status = if database && nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ok" } else { "degraded" },
            "service": "ingress",
            "version": tengine_core::VERSION,
            "database": if database { "ok" } else { "unreachable" },
            "nats": if nats { "ok" } else { "unreachable" },
        })),
    )
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
