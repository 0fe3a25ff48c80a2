//! `GET /v1/health`: liveness for anyone (load balancers, clients); the details
//! (dependencies, projector lag, dead letters) only for the admin token.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde_json::{Value, json};

use super::auth::is_admin;
use crate::AppState;

/// How long an event may wait, with no batch applied meanwhile, before the
/// projector counts as stalled: a running projector applies a batch within
/// milliseconds of an event (`projector.batch_wait_ms`), even far behind.
pub const PROJECTOR_STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The ingress's health; the details only for the admin token.
///
/// Anyone: `{"status": "ok", "service": "ingress"}`. With the admin token also `version`, `database`,
/// `nats`, `projector` (`applying`, or `stalled` when events have waited longer than
/// [`PROJECTOR_STALLED_AFTER`] without a batch applied: no projector runs, or it is stuck),
/// `projector_lag_events` (events the projector has not applied yet) and `dead_letters`.
#[utoipa::path(get, path = "/v1/health", operation_id = "health", tag = "health", security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "ok", body = Object),
        (status = 503, description = "degraded (admin only): the database or NATS is unreachable, or run history stopped (no projector applies the event log)", body = Object),
    ))]
pub async fn health(State(st): State<Arc<AppState>>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if !is_admin(&st, &headers) {
        return (StatusCode::OK, Json(json!({"status": "ok", "service": "ingress"})));
    }
    let database = sqlx::query("SELECT 1").execute(&st.pool).await.is_ok();
    // Events in the log the projector has not applied yet (run history lag), and
    // whether history stopped: calls still run without a projector, but degraded.
    let progress = st.dispatcher.history_progress(&st.pool, PROJECTOR_STALLED_AFTER).await;
    let lag = progress.as_ref().map(|p| p.lag);
    let stalled = progress.is_some_and(|p| p.stalled);
    // Events the projector set aside, not re-applied yet (`tengine projector dead-letters`).
    let dead_letters = tengine_projector::history::unresolved_dead_letters(&st.pool).await.ok();
    let nats = st.nats.connection_state() == async_nats::connection::State::Connected;
    let status = if database && nats && !stalled {
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
            "projector": if stalled { "stalled" } else { "applying" },
            "projector_lag_events": lag,
            "dead_letters": dead_letters,
        })),
    )
}
