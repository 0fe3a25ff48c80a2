//! The Credentials screen: the project's integrations with the tools each may
//! call, and its API keys by display prefix (a key's secret is shown once, at
//! creation through the admin API, never here), each revocable after a
//! confirmation page (the admin API's revocation path: it takes effect at once);
//! client configuration snippets per integration (`snippets`); member keys and
//! member revocation (`members`).

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use tengine_control::{api_keys, integrations, member_keys};
use uuid::Uuid;

use super::{
    ConsoleError, PAGE_MAX,
    auth::{CsrfForm, Session},
    layout, members, projects, snippets,
};
use crate::{
    AppState,
    admin::api_keys::{NewApiKey, create_key, revoke_key},
};
use serde::Deserialize;

/// `GET /console/projects/{id}/credentials`.
pub async fn show(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    render_with(&st, &session, project_id, &Forms::default(), 200).await
}

/// The screen's forms: empty, or one of them as sent with the server's message.
#[derive(Default)]
pub struct Forms {
    pub api_key: KeyFormState,
    pub member_key: members::KeyForm,
    pub member: members::MemberForm,
}

/// What the new-key form holds: empty, or as sent with the server's message.
pub struct KeyFormState {
    name: String,
    call: bool,
    read: bool,
    problem: Option<String>,
}

impl Default for KeyFormState {
    fn default() -> Self {
        Self {
            name: String::new(),
            call: true,
            read: false,
            problem: None,
        }
    }
}

/// The screen with `forms`, answered with `status` (a refused form's 4xx).
pub async fn render_with(
    st: &AppState,
    session: &Session,
    project_id: Uuid,
    forms: &Forms,
    status: u16,
) -> Result<Response, ConsoleError> {
    let project = projects::find(st, project_id).await?;
    let integrations = integrations::list(&st.pool, project_id).await?;
    let keys = api_keys::list(&st.pool, project_id).await?;
    let member_keys = member_keys::list(&st.pool, project_id).await?;
    let body = html! {
        h2 { "Integrations" }
        (integration_table(&integrations))
        @for integration in integrations.iter().take(PAGE_MAX) { (snippets::render(st, integration)) }
        h2 { "API keys" }
        (key_table(session, project_id, &keys, &integrations))
        @if !session.read_only() { (new_key_form(session, project_id, &forms.api_key)) }
        (members::section(session, project_id, &member_keys, forms))
    };
    let mut page = layout::project_page(session, &project, "Credentials", body);
    *page.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(page)
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

fn key_table(
    session: &Session,
    project_id: Uuid,
    keys: &[api_keys::ApiKey],
    integrations: &[integrations::Integration],
) -> Markup {
    let integration_name = |id: Uuid| {
        integrations
            .iter()
            .find(|i| i.id == id)
            .map_or_else(|| id.to_string(), |i| i.name.clone())
    };
    let base = &session.base;
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
                            td {
                                @match key.revoked_at {
                                    Some(at) => (at.format("%Y-%m-%d %H:%M:%S UTC")),
                                    None if session.read_only() => "no",
                                    None => a href=(format!("{base}/projects/{project_id}/api-keys/{}/revoke", key.id))
                                        aria-label=(format!("Revoke {}", key.display_prefix)) { "Revoke…" },
                                }
                            }
                        }
                    }
                }
            }
            @if keys.len() > PAGE_MAX { p { "Showing " (PAGE_MAX) " of " (keys.len()) " keys." } }
        }
    }
}

/// The key named in the path, of this project, or 404.
async fn find_key(st: &AppState, project_id: Uuid, key_id: Uuid) -> Result<api_keys::ApiKey, ConsoleError> {
    api_keys::list(&st.pool, project_id)
        .await?
        .into_iter()
        .find(|k| k.id == key_id)
        .ok_or_else(|| ConsoleError::not_found("API key"))
}

/// `GET /console/projects/{id}/api-keys/{key_id}/revoke`: the confirmation.
pub async fn confirm_revoke(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, key_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let key = find_key(&st, project_id, key_id).await?;
    let action = format!("{}/projects/{project_id}/api-keys/{key_id}/revoke", session.base);
    let body = html! {
        h2 { "Revoke the key " code { (key.display_prefix) "…" } " (" (key.name) ")?" }
        p { "It stops working at once, with its open MCP sessions and member sessions. This cannot be undone." }
        form method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { "Revoke" }
            " "
            a href=(format!("{}/projects/{project_id}/credentials", session.base)) { "Cancel" }
        }
    };
    Ok(layout::project_page(&session, &project, "Credentials", body))
}

/// `POST /console/projects/{id}/api-keys/{key_id}/revoke`: revokes, back to the list.
pub async fn revoke(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, key_id)): Path<(Uuid, Uuid)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    revoke_key(&st, project_id, key_id).await?;
    tracing::info!(project = %project_id, key = %key_id, "console: API key revoked");
    let back = format!("{}/projects/{project_id}/credentials", session.base);
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response())
}

fn new_key_form(session: &Session, project_id: Uuid, form: &KeyFormState) -> Markup {
    html! {
        h2 { "New API key" }
        form method="post" action=(format!("{}/projects/{project_id}/api-keys", session.base)) {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="key-name" { "Key name" }
            input id="key-name" name="name" maxlength="200" value=(form.name)
                aria-invalid=[form.problem.as_ref().map(|_| "true")]
                aria-describedby=[form.problem.as_ref().map(|_| "key-name-problem")];
            @if let Some(problem) = &form.problem { p id="key-name-problem" role="alert" { (problem) } }
            fieldset {
                legend { "Scopes (default integration)" }
                label { input type="checkbox" name="call" value="on" checked[form.call]; " call: MCP calls" }
                label { input type="checkbox" name="read" value="on" checked[form.read]; " read: the project's run history and usage" }
            }
            p { button type="submit" { "Create key" } }
        }
    }
}

#[derive(Deserialize)]
pub struct NewKeyForm {
    csrf: Option<String>,
    name: Option<String>,
    call: Option<String>,
    read: Option<String>,
}

/// `POST /console/projects/{id}/api-keys`: creates a key and shows its secret, this once.
pub async fn create(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<NewKeyForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    let project = projects::find(&st, project_id).await?;
    let scopes = [("call", &form.call), ("read", &form.read)]
        .into_iter()
        .filter(|(_, on)| on.is_some())
        .map(|(scope, _)| scope.to_string())
        .collect();
    let name = form.name.unwrap_or_default();
    let input = NewApiKey::in_default_integration(name.clone(), scopes);
    let (record, key) = match create_key(&st, project_id, &input).await {
        Ok(created) => created,
        // A refused field: the form again, as sent, with the server's message beside it.
        Err(err) if err.field().is_some() => {
            let state = KeyFormState {
                name,
                call: form.call.is_some(),
                read: form.read.is_some(),
                problem: Some(format!("{}: {}", err.field().unwrap_or_default(), err.message())),
            };
            let forms = Forms {
                api_key: state,
                ..Forms::default()
            };
            return render_with(&st, &session, project_id, &forms, err.status().as_u16()).await;
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(project = %project_id, key = %record.id, "console: API key created");
    let body = html! {
        h2 { "Key " code { (record.display_prefix) "…" } " created" }
        p role="status" { strong { "Store this key now: it is shown once and only its hash is kept." } }
        p { code id="new-key" { (key) } }
        p { a href=(format!("{}/projects/{project_id}/credentials", session.base)) { "Back to credentials" } }
    };
    Ok(layout::project_page(&session, &project, "Credentials", body))
}
