//! `/health` for the worker and the projector: 200 when their dependencies answer;
//! their Prometheus `/metrics` are served on the same listener.

use std::future::Future;

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;

pub fn router<F, Fut>(service: &'static str, check: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    crate::prometheus::router().route(
        "/health",
        get(move || {
            let check = check.clone();
            async move {
                let ok = check().await;
                let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                let body = json!({"status": if ok { "ok" } else { "degraded" }, "service": service, "version": crate::VERSION});
                (status, Json(body)).into_response()
            }
        }),
    )
}

/// Serves a health router on `addr` in the background.
pub async fn spawn(addr: std::net::SocketAddr, router: Router) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the health endpoint on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "health endpoint stopped");
        }
    });
    Ok(local)
}
