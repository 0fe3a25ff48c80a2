//! The Settings screen (read-only for now): quotas, the outbound allow-list,
//! and what run history keeps of bodies.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::Response,
};
use maud::html;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, layout, projects};
use crate::AppState;

/// `GET /console/projects/{id}/settings`.
pub async fn show(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let unlimited = |n: Option<String>| n.unwrap_or_else(|| "unlimited".into());
    let body = html! {
        h2 { "Quotas" }
        dl {
            dt { "Calls per month" } dd { (unlimited(project.monthly_call_limit.map(|n| n.to_string()))) }
            dt { "Calls per minute per member" } dd { (unlimited(project.member_calls_per_minute.map(|n| n.to_string()))) }
        }
        h2 { "Outbound allow-list" }
        @if project.outbound_allowlist.is_empty() { p { "None: tools reach public addresses only." } }
        @else { ul { @for network in &project.outbound_allowlist { li { code { (network) } } } } }
        h2 { "Bodies and redaction" }
        dl {
            dt { "Run history keeps bodies" } dd { (if project.store_bodies { "yes" } else { "no" }) }
            dt { "Kept at most" } dd { (project.body_max_bytes) " bytes" }
            dt { "Redacted fields" }
            dd { @if project.redact_fields.is_empty() { "none" } @else { (project.redact_fields.join(", ")) } }
        }
        p { "Change these with " code { "PATCH /v1/projects/{id}" } "." }
    };
    Ok(layout::project_page(&session, &project, "Settings", body))
}
