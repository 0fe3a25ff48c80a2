//! The Settings screen: quotas, the outbound allow-list, and what run history
//! keeps of bodies, in one form. Saving goes through the admin API's PATCH code
//! path (`admin::projects::update`), so the console checks exactly what the API
//! checks; a refused field comes back as typed, with the server's message
//! beside it.

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
use tengine_control::projects::Project;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, layout, projects};
use crate::{AppState, admin::projects::ProjectPatch};

/// The form's fields as typed (text, so that a refused value is shown again unchanged).
#[derive(Deserialize, Default)]
pub struct SettingsForm {
    csrf: Option<String>,
    #[serde(default)]
    monthly_call_limit: String,
    #[serde(default)]
    member_calls_per_minute: String,
    #[serde(default)]
    outbound_allowlist: String,
    store_bodies: Option<String>,
    #[serde(default)]
    body_max_bytes: String,
    #[serde(default)]
    redact_fields: String,
}

impl SettingsForm {
    /// The form filled with the project's current settings.
    fn of(project: &Project) -> Self {
        Self {
            csrf: None,
            monthly_call_limit: project.monthly_call_limit.map(|n| n.to_string()).unwrap_or_default(),
            member_calls_per_minute: project
                .member_calls_per_minute
                .map(|n| n.to_string())
                .unwrap_or_default(),
            outbound_allowlist: project.outbound_allowlist.join("\n"),
            store_bodies: project.store_bodies.then(|| "on".into()),
            body_max_bytes: project.body_max_bytes.to_string(),
            redact_fields: project.redact_fields.join("\n"),
        }
    }

    /// The admin API's patch body; a number field that is not a number is
    /// refused here (the API would refuse the JSON as a whole, not the field).
    fn patch(&self) -> Result<Value, Problem> {
        let mut patch = Map::new();
        for (field, raw, nullable) in [
            ("monthly_call_limit", &self.monthly_call_limit, true),
            ("member_calls_per_minute", &self.member_calls_per_minute, true),
            ("body_max_bytes", &self.body_max_bytes, false),
        ] {
            let raw = raw.trim();
            let value = if raw.is_empty() && nullable {
                Value::Null
            } else {
                let number: i64 = raw.parse().map_err(|_| Problem {
                    field: field.into(),
                    message: if nullable {
                        "must be a whole number, or empty for no limit".into()
                    } else {
                        "must be a whole number".into()
                    },
                })?;
                Value::from(number)
            };
            patch.insert(field.into(), value);
        }
        patch.insert("outbound_allowlist".into(), lines(&self.outbound_allowlist));
        patch.insert("redact_fields".into(), lines(&self.redact_fields));
        patch.insert("store_bodies".into(), Value::Bool(self.store_bodies.is_some()));
        Ok(Value::Object(patch))
    }
}

/// One entry per non-empty line (commas separate too).
fn lines(text: &str) -> Value {
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| Value::String(line.into()))
        .collect()
}

/// A refused field and why.
struct Problem {
    field: String,
    message: String,
}

/// `GET /console/projects/{id}/settings`.
pub async fn show(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let form = SettingsForm::of(&project);
    Ok(render(&session, &project, &form, None))
}

/// `POST /console/projects/{id}/settings`: saves through the admin API's code
/// path; back to the page (303) or the form as typed with the message (422).
pub async fn save(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<SettingsForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    let project = projects::find(&st, project_id).await?;
    let refused = |problem: Problem, status: StatusCode| {
        let mut page = render(&session, &project, &form, Some(&problem));
        *page.status_mut() = status;
        page
    };
    let patch = match form.patch() {
        Ok(patch) => patch,
        Err(problem) => return Ok(refused(problem, StatusCode::UNPROCESSABLE_ENTITY)),
    };
    let patch: ProjectPatch = serde_json::from_value(patch)
        .map_err(|err| ConsoleError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("settings form: {err}")))?;
    match crate::admin::projects::update(&st, project_id, patch).await {
        Ok(_) => {
            tracing::info!(project = %project_id, "console: settings changed");
            let back = format!("{}/projects/{project_id}/settings", session.base);
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response())
        }
        Err(err) if err.field().is_some() => {
            let problem = Problem {
                field: err.field().unwrap_or_default().to_string(),
                message: err.message().to_string(),
            };
            Ok(refused(problem, err.status()))
        }
        Err(err) => Err(err.into()),
    }
}

fn render(session: &Session, project: &Project, form: &SettingsForm, problem: Option<&Problem>) -> Response {
    let action = format!("{}/projects/{}/settings", session.base, project.id);
    let body = html! {
        @if session.read_only() {
            (read_only(project))
        } @else {
            form method="post" action=(action) novalidate {
                input type="hidden" name="csrf" value=(session.csrf);
                fieldset {
                    legend { "Quotas" }
                    (text_field("monthly_call_limit", "Calls per month (empty: unlimited)", &form.monthly_call_limit, problem))
                    (text_field("member_calls_per_minute", "Calls per minute per member (empty: unlimited)",
                        &form.member_calls_per_minute, problem))
                }
                fieldset {
                    legend { "Outbound allow-list" }
                    (area_field("outbound_allowlist",
                        "Private networks tools may reach (CIDR like 10.1.0.0/16, one a line; empty: public addresses only)",
                        &form.outbound_allowlist, problem))
                }
                fieldset {
                    legend { "Bodies and redaction" }
                    p { label { input type="checkbox" name="store_bodies" value="on" checked[form.store_bodies.is_some()];
                        " Run history keeps request and response bodies" } }
                    (text_field("body_max_bytes", "Bytes kept of each body", &form.body_max_bytes, problem))
                    (area_field("redact_fields", "Redacted fields (JSON paths like card.number, one a line)",
                        &form.redact_fields, problem))
                }
                p { button type="submit" { "Save settings" } }
            }
        }
    };
    layout::project_page(session, project, "Settings", body)
}

/// The settings as text, for a read-only session.
fn read_only(project: &Project) -> Markup {
    let unlimited = |n: Option<String>| n.unwrap_or_else(|| "unlimited".into());
    html! {
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
    }
}

/// The message for `field`, if it is the one refused.
fn message_for<'a>(field: &str, problem: Option<&'a Problem>) -> Option<&'a str> {
    problem.filter(|p| p.field == field).map(|p| p.message.as_str())
}

fn text_field(name: &str, label: &str, value: &str, problem: Option<&Problem>) -> Markup {
    let message = message_for(name, problem);
    let problem_id = format!("{name}-problem");
    html! {
        p {
            label for=(name) { (label) }
            input id=(name) name=(name) value=(value) inputmode="numeric" maxlength="20"
                aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| problem_id.as_str())];
            @if let Some(message) = message { span.problem id=(problem_id) role="alert" { (name) ": " (message) } }
        }
    }
}

fn area_field(name: &str, label: &str, value: &str, problem: Option<&Problem>) -> Markup {
    let message = message_for(name, problem);
    let problem_id = format!("{name}-problem");
    html! {
        p {
            label for=(name) { (label) }
            textarea id=(name) name=(name) rows="4" cols="48"
                aria-invalid=[message.map(|_| "true")] aria-describedby=[message.map(|_| problem_id.as_str())] { (value) }
            @if let Some(message) = message { span.problem id=(problem_id) role="alert" { (name) ": " (message) } }
        }
    }
}
