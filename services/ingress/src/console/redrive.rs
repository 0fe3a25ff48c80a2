//! Re-drive from the console: a confirmation page showing the call that will run
//! again (tool and kept arguments), then the same re-drive as the admin API's
//! (`crate::calls::redrive`). The form carries a re-drive id, used as the
//! re-drive's idempotency key: submitting it twice starts one run.

use std::{sync::Arc, time::Duration};

use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::html;
use serde::Deserialize;
use tengine_projector::history;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, layout, projects, runs};
use crate::{AppState, admin::redrive::refused, calls::redrive::redrive as run_again};

/// How long the answer waits for the new run to reach history (its page then shows it).
const HISTORY_WAIT: Duration = Duration::from_secs(5);

/// `GET /console/projects/{id}/runs/{run_id}/redrive`: the confirmation.
pub async fn confirm(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, run_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ConsoleError> {
    page(&st, &session, project_id, run_id, None).await
}

/// The confirmation page, with a refusal's message when there is one.
async fn page(
    st: &AppState,
    session: &Session,
    project_id: Uuid,
    run_id: Uuid,
    problem: Option<(StatusCode, String)>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(st, project_id).await?;
    let (run, _) = runs::find(st, project_id, run_id).await?;
    let kept = history::runs::arguments(&st.pool, run_id).await?;
    let root = format!("{}/projects/{project_id}/runs", session.base);
    let body = html! {
        h2 { "Re-drive run " code { (run.run_id) } "?" }
        p { "The call of " code { (run.tool_name) } " runs again as a new run, with the arguments run history kept, "
            "as its original caller: the same checks as an MCP call (the tool enabled, the credential live, the "
            "quota, approvals). The new run gets its own Run ID and links to this one." }
        h3 { "Arguments" }
        @match &kept.arguments { Some(arguments) => pre #redrive-arguments { (arguments) }, None => p { "Not kept." } }
        @if let Some((_, problem)) = &problem { p #redrive-problem role="alert" { (problem) } }
        form method="post" action=(format!("{root}/{run_id}/redrive")) {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="redrive_id" value=(Uuid::now_v7());
            button type="submit" { "Re-drive" }
            " "
            a href=(format!("{root}/{run_id}")) { "Cancel" }
        }
    };
    let mut response = layout::project_page(session, &project, "Runs", body);
    if let Some((status, _)) = problem {
        *response.status_mut() = status;
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct RedriveForm {
    csrf: Option<String>,
    redrive_id: Option<Uuid>,
}

/// `POST /console/projects/{id}/runs/{run_id}/redrive`: re-drives, to the new run's page.
pub async fn redrive(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, run_id)): Path<(Uuid, Uuid)>,
    Form(form): Form<RedriveForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    projects::find(&st, project_id).await?;
    let key = form.redrive_id.map(|id| id.to_string());
    let redriven = match run_again(st.clone(), project_id, run_id, key).await {
        Ok(redriven) => redriven,
        Err(err) => {
            let err = refused(err);
            let problem = Some((err.status(), err.message().to_string()));
            return page(&st, &session, project_id, run_id, problem).await;
        }
    };
    tracing::info!(project = %project_id, original = %run_id, run = %redriven.run_id, "console: run re-driven");
    // Its page once history has it (the projector is usually milliseconds behind).
    let deadline = tengine_core::tasks::deadline_after(HISTORY_WAIT);
    while tokio::time::Instant::now() < deadline
        && !history::runs::in_history(&st.pool, redriven.run_id)
            .await
            .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = format!("{}/projects/{project_id}/runs/{}", session.base, redriven.run_id);
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, target)]).into_response())
}
