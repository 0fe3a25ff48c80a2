//! Kept results of finished runs (`run_results`), for a client's retry once the
//! event log no longer has the outcome.

use sqlx::PgPool;
use tengine_control::StoreResult;
use tengine_core::envelope::RunOutcome;
use uuid::Uuid;

use super::RUN_KEY;

/// What run history knows of a finished run, for a client's retry once the event
/// log no longer has its outcome.
pub enum Recorded {
    /// The outcome as the worker recorded it (runs of calls with a client idempotency key).
    Kept(Box<RunOutcome>),
    /// Only its final status: the response was not kept.
    StatusOnly(String),
}

/// The recorded outcome of a finished run from history (`None` while it is not finished there).
pub async fn recorded(pool: &PgPool, run_id: Uuid) -> StoreResult<Option<Recorded>> {
    let kept: Option<Vec<u8>> = sqlx::query_scalar("SELECT outcome FROM run_results WHERE run_id = $1")
        .bind(run_id)
        .fetch_optional(pool)
        .await?;
    if let Some(bytes) = kept {
        match tengine_core::envelope::Envelope::<RunOutcome>::decode(&bytes) {
            Ok(envelope) => return Ok(Some(Recorded::Kept(Box::new(envelope.body)))),
            Err(err) => tracing::warn!(%run_id, error = %err, "a kept run result does not decode"),
        }
    }
    let status: Option<String> = sqlx::query_scalar(&format!(
        "SELECT status FROM runs WHERE {RUN_KEY} AND status NOT IN ('accepted', 'awaiting_approval', 'running')"
    ))
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    Ok(status.map(Recorded::StatusOnly))
}
