//! The Credentials screen (read-only for now): the project's integrations with
//! the tools each may call, and its API keys by display prefix (a key's secret
//! is shown once, at creation through the admin API, never here).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::Response,
};
use maud::{Markup, html};
use tengine_control::{api_keys, integrations};
use uuid::Uuid;

use super::{ConsoleError, PAGE_MAX, auth::Session, layout, projects};
use crate::AppState;

/// `GET /console/projects/{id}/credentials`.
pub async fn show(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let integrations = integrations::list(&st.pool, project_id).await?;
    let keys = api_keys::list(&st.pool, project_id).await?;
    let body = html! {
        h2 { "Integrations" }
        (integration_table(&integrations))
        h2 { "API keys" }
        (key_table(&keys, &integrations))
        p { "Create and revoke keys with " code { "POST /v1/projects/{id}/api-keys" } " and "
            code { "DELETE /v1/projects/{id}/api-keys/{key_id}" } "." }
    };
    Ok(layout::project_page(&session, &project, "Credentials", body))
}

fn integration_table(all: &[integrations::Integration]) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "ID" } th scope="col" { "Tools it may call" } } }
            tbody {
                @for integration in all.iter().take(PAGE_MAX) {
                    tr {
                        th scope="row" { (integration.name) }
                        td { code { (integration.id) } }
                        td {
                            @match &integration.allowed_tools {
                                None => "all",
                                Some(tools) => @for (i, tool) in tools.iter().enumerate() {
                                    @if i > 0 { ", " } code { (tool) }
                                },
                            }
                        }
                    }
                }
            }
        }
        @if all.len() > PAGE_MAX { p { "Showing " (PAGE_MAX) " of " (all.len()) " integrations." } }
    }
}

fn key_table(keys: &[api_keys::ApiKey], integrations: &[integrations::Integration]) -> Markup {
    let integration_name = |id: Uuid| {
        integrations
            .iter()
            .find(|i| i.id == id)
            .map_or_else(|| id.to_string(), |i| i.name.clone())
    };
    html! {
        @if keys.is_empty() { p { "No API keys." } }
        @else {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Integration" }
                    th scope="col" { "Scopes" } th scope="col" { "Created" } th scope="col" { "Revoked" } } }
                tbody {
                    @for key in keys.iter().take(PAGE_MAX) {
                        tr {
                            th scope="row" { (key.name) }
                            td { code { (key.display_prefix) "…" } }
                            td { (integration_name(key.integration_id)) }
                            td { (key.scopes.join(", ")) }
                            td { (key.created_at.format("%Y-%m-%d %H:%M UTC")) }
                            td { (key.revoked_at.map_or("–".to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())) }
                        }
                    }
                }
            }
            @if keys.len() > PAGE_MAX { p { "Showing " (PAGE_MAX) " of " (keys.len()) " keys." } }
        }
    }
}
