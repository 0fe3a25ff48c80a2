//! Screens of the navigation not built yet: a page that says so (the links stay
//! stable for when they are).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::Response,
};
use maud::html;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, layout, projects};
use crate::AppState;

/// `GET /console/projects/{id}/{screen}` for a screen of [`layout::SCREENS`] without its own module.
pub async fn screen(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, segment)): Path<(Uuid, String)>,
) -> Result<Response, ConsoleError> {
    let (name, _) = layout::SCREENS
        .iter()
        .find(|(_, s)| !s.is_empty() && *s == segment)
        .ok_or_else(|| ConsoleError::not_found("page"))?;
    let project = projects::find(&st, project_id).await?;
    let body = html! { p { "This screen is not built yet; the admin API (" code { "/v1" } ") has its data." } };
    Ok(layout::project_page(&session, &project, name, body))
}
