//! The ingress: MCP Streamable HTTP at `/mcp` and the admin API under `/v1`.
//! It authenticates callers, validates arguments, queues runs on JetStream and
//! waits for their outcome on a reply subject.

// Nothing a client, an upstream or a tenant sends may make arithmetic panic:
// checked or saturating operations only (`tengine_core::tasks::deadline_after`).
#![deny(clippy::arithmetic_side_effects)]

pub mod admin;
pub mod approvals;
pub mod arguments;
pub mod asks;
pub mod calls;
pub mod console;
pub mod dispatch;
pub mod jsonrpc;
pub mod key_limits;
pub mod mcp;
pub mod members;
pub mod oauth;
pub mod request_state;
pub mod results;
pub mod sessions;
mod settle;
pub mod streams;
pub mod tasks;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use axum::{
    Json, Router,
    extract::{MatchedPath, State},
    http::Request,
    response::IntoResponse,
    routing::get,
};
use serde_json::json;
use sqlx::PgPool;
use tengine_core::{Config, Topology, connections::Connections, secrets::SecretBox};
use tokio::net::TcpListener;
use tower_http::{timeout::RequestBodyTimeoutLayer, trace::TraceLayer};

use crate::{
    arguments::Validators,
    dispatch::Dispatcher,
    sessions::{SessionCodec, SessionStates},
};

pub struct AppState {
    pub config: Config,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub secrets: SecretBox,
    pub sessions: SessionCodec,
    /// Signs console session cookies.
    pub console: console::ConsoleSessions,
    pub members: members::MemberTokens,
    /// Seals and checks the `requestState` of client approvals.
    pub request_states: request_state::RequestStates,
    pub session_states: SessionStates,
    pub dispatcher: Dispatcher,
    pub validators: Validators,
    /// Tool definitions and credentials in memory, current by `tengine_control::freshness`.
    pub tools: tengine_control::tools::Cached,
    pub principals: tengine_control::principals::Principals,
    pub idempotency: calls::idempotency::Idempotency,
    pub key_limits: key_limits::KeyLimits,
    pub approvals: approvals::Approvals,
    /// The calls behind tasks (see `tasks::TaskCalls`).
    pub task_calls: tasks::TaskCalls,
    /// Project ids whose tools changed (fed from `{prefix}.control.tools.*`).
    pub tool_changes: broadcast::Sender<Uuid>,
    /// Cancelled when the server shuts down: ends long-lived GET streams.
    pub shutdown: CancellationToken,
    pub topology: Topology,
    /// An extra root certificate trusted when fetching OAuth client metadata
    /// documents (`ingress.oauth_metadata_ca_file`: a private CA, or a test's).
    pub oauth_roots: Option<reqwest::Certificate>,
}

impl AppState {
    /// Connects to Postgres and NATS and prepares the topology.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let secrets = config.secret_box()?;
        let sessions = SessionCodec::new(config.session_secret_bytes()?, config.ingress.session_ttl_secs);
        let members =
            members::MemberTokens::new(&config.session_secret_bytes()?, config.ingress.member_session_ttl_secs);
        let request_states =
            request_state::RequestStates::new(&config.session_secret_bytes()?, config.ingress.input_ttl_secs);
        let Connections {
            pool,
            nats,
            js,
            topology,
            commands,
            events,
        } = Connections::open(&config, "tengine-ingress", config.ingress.database_pool_size).await?;
        // The outcomes the ingress waits for must fit the server's messages.
        tengine_core::payload::check_response_limit(
            config.worker.max_response_bytes,
            tengine_core::payload::server_max_payload(&nats),
        )
        .map_err(anyhow::Error::msg)?;
        let session_ttl = Duration::from_secs(config.ingress.session_ttl_secs);
        let session_kv = topology
            .ensure_bucket(
                &js,
                topology.sessions_bucket(),
                session_ttl,
                config.streams.sessions_max_bytes,
                config.streams.replicas,
            )
            .await?;
        let cancelled_kv = topology.ensure_cancelled_bucket(&js, &config.streams).await?;
        let idempotency_kv = topology
            .ensure_bucket(
                &js,
                topology.idempotency_bucket(),
                Duration::from_secs(config.ingress.idempotency_ttl_secs),
                config.streams.idempotency_max_bytes,
                config.streams.replicas,
            )
            .await?;
        let approvals_kv = topology
            .ensure_bucket(
                &js,
                topology.approvals_bucket(),
                // Past its expiry a parked call is refused by the sweeper; the margin
                // keeps it readable until then.
                Duration::from_secs(config.ingress.approval_ttl_secs.saturating_add(3600)),
                config.streams.approvals_max_bytes,
                config.streams.replicas,
            )
            .await?;
        let tasks_kv = topology
            .ensure_bucket(
                &js,
                topology.tasks_bucket(),
                // As long as a client may re-issue its call (the idempotency keys).
                Duration::from_secs(config.ingress.idempotency_ttl_secs),
                config.streams.tasks_max_bytes,
                config.streams.replicas,
            )
            .await?;
        let dispatcher = Dispatcher::start(nats.clone(), js, commands, events, cancelled_kv, topology.clone()).await?;

        let shutdown = CancellationToken::new();
        let freshness = tengine_control::freshness::Freshness::start(pool.clone(), shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("listening for control changes in PostgreSQL: {e}"))?;
        let oauth_roots = oauth_roots(&config.ingress.oauth_metadata_ca_file)?;
        let (tool_changes, _) = broadcast::channel(1024);
        let mut changes = nats
            .subscribe(topology.tools_changed_wildcard())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to tool changes: {e}"))?;
        let feed = tool_changes.clone();
        tokio::spawn(async move {
            while let Some(message) = changes.next().await {
                if let Some(project) = message.subject.rsplit('.').next().and_then(|p| Uuid::parse_str(p).ok()) {
                    let _ = feed.send(project);
                }
            }
        });
        let idempotency = calls::idempotency::Idempotency::new(
            idempotency_kv,
            Duration::from_millis(config.ingress.idempotency_lease_ms),
        );
        let session_states = SessionStates::start(session_kv, config.ingress.max_session_states);
        let key_limits = key_limits::KeyLimits::new(
            config.ingress.session_writes_per_second,
            config.ingress.max_streams_per_key,
        );
        let console = console::ConsoleSessions::new(&config.session_secret_bytes()?, &config.admin_token);
        let tools = tengine_control::tools::Cached::new(pool.clone(), freshness.clone());
        let principals = tengine_control::principals::Principals::new(pool.clone(), freshness);
        let state = Arc::new(Self {
            config,
            pool,
            nats,
            secrets,
            sessions,
            console,
            members,
            request_states,
            session_states,
            dispatcher,
            validators: Validators::new(10_000),
            tools,
            principals,
            idempotency,
            key_limits,
            approvals: approvals::Approvals::new(approvals_kv),
            task_calls: tasks::TaskCalls::new(tasks_kv),
            tool_changes,
            shutdown,
            topology,
            oauth_roots,
        });
        // Approvals past their expiry are refused by every instance (each once).
        tokio::spawn(approvals::sweep(
            Arc::downgrade(&state),
            Duration::from_secs(state.config.ingress.approval_ttl_secs),
        ));
        Ok(state)
    }
}

fn oauth_roots(path: &str) -> anyhow::Result<Option<reqwest::Certificate>> {
    if path.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading ingress.oauth_metadata_ca_file {path}: {e}"))?;
    Ok(Some(reqwest::Certificate::from_pem(&pem).map_err(|e| {
        anyhow::anyhow!("ingress.oauth_metadata_ca_file {path} is not a PEM certificate: {e}")
    })?))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mcp", get(mcp::get).post(mcp::post).delete(mcp::delete))
        .route(
            "/mcp/{project_id}",
            get(mcp::project_get)
                .post(mcp::project_post)
                .delete(mcp::project_delete),
        )
        .merge(
            oauth::routes()
                .merge(console::routes())
                .merge(admin::routes())
                .route_layer(axum::middleware::from_fn(settle::settle_writes)),
        )
        .route("/.well-known/oauth-protected-resource", get(protected_resource))
        .route("/.well-known/oauth-protected-resource/mcp", get(protected_resource))
        // A body that stops coming ends its request (the connection's header timeout
        // is `tengine_core::serving`'s).
        .layer(RequestBodyTimeoutLayer::new(tengine_core::serving::BODY_STALL_TIMEOUT))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let path = request
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            let span = tracing::info_span!("http", method = %request.method(), path = %path);
            // A client's `traceparent` makes this request part of its trace.
            tengine_core::telemetry::adopt(&span, tengine_core::telemetry::extract_http(request.headers()));
            span
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

/// The operator listener (`ingress.metrics_listen`, loopback by default): `/metrics`
/// and the probes (`tengine_core::health`), apart from the MCP listener that faces
/// clients. `tengine ingress` opens it before connecting (see `tengine_core::health`);
/// this is for embedders that connected first (the tests).
pub async fn spawn_operator_listener(state: &Arc<AppState>) -> anyhow::Result<std::net::SocketAddr> {
    tengine_core::health::spawn_probes(state.config.ingress.metrics_listen, &state.config, "ingress").await
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    let token = state.shutdown.clone();
    tengine_core::serving::serve(listener, router(state), async move {
        shutdown.await;
        // Open SSE streams would otherwise hold the graceful shutdown forever.
        token.cancel();
    })
    .await;
    Ok(())
}
