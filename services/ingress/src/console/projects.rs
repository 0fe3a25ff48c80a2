//! The projects list (the console's home) and a project's overview.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::Response,
};
use maud::html;
use tengine_control::projects::{self, Project};
use uuid::Uuid;

use super::{ConsoleError, PAGE_MAX, auth::Session, layout};
use crate::AppState;

/// `GET /console`: every project, as a link named by its name.
pub async fn list(session: Session, State(st): State<Arc<AppState>>) -> Result<Response, ConsoleError> {
    let all = projects::list(&st.pool).await?;
    let total = all.len();
    let body = html! {
        h1 { "Projects" }
        @if all.is_empty() { p { "No projects yet: create one with " code { "POST /v1/projects" } "." } }
        ul {
            @for project in all.iter().take(PAGE_MAX) {
                li { a href=(format!("{}/projects/{}", session.base, project.id)) { (project.name) } }
            }
        }
        @if total > PAGE_MAX { p { "Showing " (PAGE_MAX) " of " (total) " projects." } }
    };
    Ok(layout::page(&session, "Projects", body))
}

/// The project named in the path, or 404.
pub async fn find(st: &AppState, project_id: Uuid) -> Result<Project, ConsoleError> {
    projects::get(&st.pool, project_id)
        .await
        .map_err(|_| ConsoleError::not_found("project"))
}

/// `GET /console/projects/{id}`: the project's settings at a glance (the
/// overview's figures are not built yet).
pub async fn overview(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let project = find(&st, project_id).await?;
    let body = html! {
        dl {
            dt { "Project ID" } dd { code { (project.id) } }
            dt { "Created" } dd { (project.created_at.to_rfc3339()) }
            dt { "Monthly call limit" }
            dd { (project.monthly_call_limit.map_or("unlimited".to_string(), |n| n.to_string())) }
            dt { "Stores bodies" } dd { (if project.store_bodies { "yes" } else { "no" }) }
        }
        p { "Calls, error rate and latency figures are not built yet." }
    };
    Ok(layout::project_page(&session, &project, "Overview", body))
}
