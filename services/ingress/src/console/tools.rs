//! The Tools screen: a project's tools, an enable switch per row, and links to
//! the tool editor (`tool_form`: new and edit). The switch
//! is a form button (`role="switch"`, named `Enable <tool>`), so it works
//! without JavaScript; it goes through the admin API's PATCH path, which
//! announces `list_changed` to open MCP sessions. Deleting a tool asks for
//! confirmation on a page of its own, then goes through the admin API's DELETE.

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use tengine_control::{principals::ReadScope, tools};
use tengine_core::domain::ToolDefinition;
use tengine_projector::history;
use uuid::Uuid;

use super::{
    ConsoleError, PAGE_MAX,
    auth::{CsrfForm, Session},
    layout, projects,
};
use crate::{
    AppState,
    admin::tools::{apply_patch, delete_tool},
};

/// `GET /console/projects/{id}/tools`.
pub async fn list(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let limit = i64::try_from(PAGE_MAX).unwrap_or(100).saturating_add(1);
    let found = tools::list(&st.pool, project_id, false, None, limit).await?;
    let more = found.len() > PAGE_MAX;
    let shown = &found[..found.len().min(PAGE_MAX)];
    let usage = day_usage(&st, project_id, shown).await?;
    // A read-only session sees the tools, not the controls (the server refuses them too).
    let writable = !session.read_only();
    let body = html! {
        @if writable { p { a href=(format!("{}/projects/{project_id}/tools/new", session.base)) { "New tool" } } }
        @if found.is_empty() { p { "No tools yet." } }
        @else {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Request" } th scope="col" { "Auth" }
                    th scope="col" { "Calls 24 h" } th scope="col" { "Errors 24 h" } th scope="col" { "Enabled" }
                    @if writable { th scope="col" { "Edit" } th scope="col" { "Delete" } } } }
                tbody { @for tool in shown { (row(&session, project_id, tool, usage.get(&tool.name).copied().unwrap_or_default())) } }
            }
        }
        @if more { p { "Only the first " (PAGE_MAX) " tools are shown." } }
    };
    Ok(layout::project_page(&session, &project, "Tools", body))
}

/// Calls and failures per tool over the last 24 whole hours (from the hourly
/// usage table: one grouped query for the tools on the page).
async fn day_usage(
    st: &AppState,
    project_id: Uuid,
    shown: &[ToolDefinition],
) -> Result<HashMap<String, (i64, i64)>, ConsoleError> {
    let scope = ReadScope {
        tools: Some(shown.iter().map(|t| t.name.clone()).collect()),
        ..ReadScope::everything()
    };
    let from = chrono::Utc::now().checked_sub_signed(chrono::Duration::hours(24));
    let rows = history::usage::summed(&st.pool, project_id, &scope, from, None, &["tool"]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name = row["tool"].as_str()?.to_string();
            Some((
                name,
                (
                    row["calls"].as_i64().unwrap_or(0),
                    row["failures"].as_i64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

fn row(session: &Session, project_id: Uuid, tool: &ToolDefinition, (calls, errors): (i64, i64)) -> Markup {
    let action = format!("{}/projects/{project_id}/tools/{}/enabled", session.base, tool.name);
    html! {
        tr {
            th scope="row" { code { (tool.name) } }
            td.wrap { code { (tool.http_method.as_str()) " " (tool.base_url.trim_end_matches('/')) (tool.endpoint_path) } }
            td { (tool.auth_strategy.as_str()) }
            td { (calls) }
            td { (errors) }
            @if session.read_only() {
                td { (if tool.enabled { "On" } else { "Off" }) }
            } @else {
                td {
                    form method="post" action=(action) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" role="switch" name="enabled" value=(if tool.enabled { "false" } else { "true" })
                            aria-checked=(tool.enabled) aria-label=(format!("Enable {}", tool.name)) {
                            (if tool.enabled { "On" } else { "Off" })
                        }
                    }
                }
                td { a href=(format!("{}/projects/{project_id}/tools/{}/edit", session.base, tool.name))
                    aria-label=(format!("Edit {}", tool.name)) { "Edit…" } }
                td { a href=(format!("{}/projects/{project_id}/tools/{}/delete", session.base, tool.name))
                    aria-label=(format!("Delete {}", tool.name)) { "Delete…" } }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct Toggle {
    csrf: Option<String>,
    enabled: Option<String>,
}

/// `POST /console/projects/{id}/tools/{name}/enabled`: sets `enabled`, back to the list.
pub async fn set_enabled(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, name)): Path<(Uuid, String)>,
    Form(form): Form<Toggle>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    let enabled = match form.enabled.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(ConsoleError::new(
                StatusCode::BAD_REQUEST,
                "enabled must be `true` or `false`",
            ));
        }
    };
    let mut patch = Map::new();
    patch.insert("enabled".into(), Value::Bool(enabled));
    apply_patch(&st, project_id, &name, patch).await?;
    tracing::info!(project = %project_id, tool = %name, enabled, "console: tool switched");
    let back = format!("{}/projects/{project_id}/tools", session.base);
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response())
}

/// `GET /console/projects/{id}/tools/{name}/delete`: the confirmation.
pub async fn confirm_delete(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, name)): Path<(Uuid, String)>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let tool = tools::get(&st.pool, project_id, &name)
        .await
        .map_err(ConsoleError::missing("tool"))?;
    let tools_page = format!("{}/projects/{project_id}/tools", session.base);
    let body = html! {
        h2 { "Delete the tool " code { (tool.name) } "?" }
        p { "MCP clients stop seeing it at once; its run history stays. This cannot be undone." }
        form method="post" action=(format!("{tools_page}/{}/delete", tool.name)) {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { "Delete" }
            " "
            a href=(tools_page) { "Cancel" }
        }
    };
    Ok(layout::project_page(&session, &project, "Tools", body))
}

/// `POST /console/projects/{id}/tools/{name}/delete`: deletes, back to the list.
pub async fn delete(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, name)): Path<(Uuid, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    delete_tool(&st, project_id, &name).await?;
    tracing::info!(project = %project_id, tool = %name, "console: tool deleted");
    let back = format!("{}/projects/{project_id}/tools", session.base);
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response())
}
