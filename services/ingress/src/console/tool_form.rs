//! The tool editor: a form to create or edit a tool (request, templates, input
//! schema, authentication, retry policy, response mode, approval) with the
//! request it would send beside it. Saving goes through the admin API's POST and
//! PUT (`create_tool`, `replace_tool`: the same validation, the same
//! `list_changed`); a refused field comes back in the form as typed, with the
//! server's message beside it. The preview is the admin API's render (secrets
//! redacted) of the draft with example arguments: `console.js` asks for it as
//! the form changes; without JavaScript the *Preview* button does.

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tengine_control::tools;
use tengine_core::domain::{ToolDefinition, ToolSpec};
use uuid::Uuid;

use super::{ConsoleError, assets, auth::Session, layout, projects, runs::request_markup};
use crate::{
    AppState,
    admin::tools::{create_tool, render, replace_tool, spec_document, validated},
    arguments,
};

/// The editor's two columns (inline: the page's own style, nothing loaded).
const EDITOR_STYLE: &str = ".editor{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:1.5rem}\
@media (max-width:60rem){.editor{grid-template-columns:1fr}}\
.editor textarea{width:100%;box-sizing:border-box;font-family:monospace;font-size:.9rem}\
.editor input:not([type=checkbox]),.editor select{width:100%;box-sizing:border-box}\
.editor fieldset{margin:.75rem 0}.field-problem{margin:.25rem 0}";

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const AUTH: [&str; 3] = ["none", "static_bearer", "hmac_signature"];
const MODES: [&str; 3] = ["text", "json", "mcp"];
const APPROVALS: [&str; 3] = ["none", "client", "operator"];

/// The form as typed (every field a string, as the browser sends it).
#[derive(Deserialize, Default, Clone)]
pub struct ToolForm {
    csrf: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    http_method: String,
    #[serde(default)]
    base_url: String,
    #[serde(default)]
    endpoint_path: String,
    #[serde(default)]
    input_schema: String,
    #[serde(default)]
    headers_template: String,
    #[serde(default)]
    query_template: String,
    #[serde(default)]
    body_template: String,
    #[serde(default)]
    auth_strategy: String,
    /// Write-only: never sent back to the browser.
    #[serde(default)]
    auth_secret: String,
    #[serde(default)]
    timeout_ms: String,
    #[serde(default)]
    retry_max_attempts: String,
    #[serde(default)]
    retry_initial_backoff_ms: String,
    #[serde(default)]
    retry_max_backoff_ms: String,
    #[serde(default)]
    response_mode: String,
    #[serde(default)]
    approval: String,
    enabled: Option<String>,
    /// Arguments for the preview only.
    #[serde(default)]
    example_arguments: String,
    /// `preview` (the no-JavaScript preview) or `save`.
    action: Option<String>,
}

/// A refusal: the form field it concerns (if the form has one) and the server's message.
struct Problem {
    field: Option<&'static str>,
    message: String,
}

/// The form fields a server field path belongs to (`retry.max_attempts` → `retry_max_attempts`).
const FIELDS: [&str; 17] = [
    "name",
    "title",
    "description",
    "http_method",
    "base_url",
    "endpoint_path",
    "input_schema",
    "headers_template",
    "query_template",
    "body_template",
    "auth_strategy",
    "auth_secret",
    "timeout_ms",
    "retry_max_attempts",
    "retry_initial_backoff_ms",
    "retry_max_backoff_ms",
    "response_mode",
];

fn form_field(path: &str) -> Option<&'static str> {
    let head = path.split(['.', '[']).next().unwrap_or_default();
    let wanted = match head {
        "retry" => {
            let rest = path.strip_prefix("retry.").unwrap_or_default();
            let leaf = rest.split(['.', '[']).next().unwrap_or_default();
            format!("retry_{leaf}")
        }
        "approval" => return Some("approval"),
        other => other.to_string(),
    };
    FIELDS.iter().copied().find(|f| *f == wanted)
}

impl ToolForm {
    /// The form filled from a stored tool (never its secret).
    fn of(tool: &ToolDefinition) -> Self {
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
        let map = |m: &std::collections::BTreeMap<String, String>| {
            if m.is_empty() { String::new() } else { pretty(&json!(m)) }
        };
        let retry = tool.retry.as_ref();
        Self {
            name: tool.name.clone(),
            title: tool.title.clone().unwrap_or_default(),
            description: tool.description.clone(),
            http_method: tool.http_method.as_str().to_string(),
            base_url: tool.base_url.clone(),
            endpoint_path: tool.endpoint_path.clone(),
            input_schema: pretty(&tool.input_schema),
            headers_template: map(&tool.headers_template),
            query_template: map(&tool.query_template),
            body_template: tool.body_template.as_ref().map(pretty).unwrap_or_default(),
            auth_strategy: tool.auth_strategy.as_str().to_string(),
            timeout_ms: tool.timeout_ms.to_string(),
            retry_max_attempts: retry.map(|r| r.max_attempts.to_string()).unwrap_or_default(),
            retry_initial_backoff_ms: retry.map(|r| r.initial_backoff_ms.to_string()).unwrap_or_default(),
            retry_max_backoff_ms: retry.map(|r| r.max_backoff_ms.to_string()).unwrap_or_default(),
            response_mode: tool.response_mode.as_str().to_string(),
            approval: tool.approval.as_str().to_string(),
            enabled: tool.enabled.then(|| "on".to_string()),
            example_arguments: "{}".into(),
            ..Self::default()
        }
    }

    /// A new tool's starting values.
    fn blank() -> Self {
        Self {
            http_method: "GET".into(),
            input_schema: "{\n  \"type\": \"object\",\n  \"properties\": {}\n}".into(),
            auth_strategy: "none".into(),
            response_mode: "text".into(),
            approval: "none".into(),
            enabled: Some("on".into()),
            example_arguments: "{}".into(),
            ..Self::default()
        }
    }

    /// The spec document: `base` (a stored tool's other fields, or nothing) with the
    /// form's fields over it. A JSON field that does not parse is a problem of its own.
    fn document(&self, mut base: Value) -> Result<Value, Problem> {
        let json_field = |field: &'static str, text: &str, empty: Value| -> Result<Value, Problem> {
            if text.trim().is_empty() {
                return Ok(empty);
            }
            serde_json::from_str(text).map_err(|e| Problem {
                field: Some(field),
                message: format!("{field}: is not JSON ({e})"),
            })
        };
        let number = |field: &'static str, text: &str| -> Result<Option<u64>, Problem> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse::<u64>().map(Some).map_err(|_| Problem {
                field: Some(field),
                message: format!("{field}: is a whole number of at least 0"),
            })
        };
        let set = |doc: &mut Value, key: &str, value: Value| {
            if let Value::Object(map) = doc {
                map.insert(key.to_string(), value);
            }
        };
        if !base.is_object() {
            base = json!({});
        }
        set(&mut base, "name", json!(self.name.trim()));
        set(
            &mut base,
            "title",
            if self.title.trim().is_empty() {
                Value::Null
            } else {
                json!(self.title.trim())
            },
        );
        set(&mut base, "description", json!(self.description));
        set(&mut base, "http_method", json!(self.http_method));
        set(&mut base, "base_url", json!(self.base_url.trim()));
        set(&mut base, "endpoint_path", json!(self.endpoint_path.trim()));
        let schema = json_field("input_schema", &self.input_schema, json!({"type": "object"}))?;
        set(&mut base, "input_schema", schema);
        let headers = json_field("headers_template", &self.headers_template, json!({}))?;
        set(&mut base, "headers_template", headers);
        let query = json_field("query_template", &self.query_template, json!({}))?;
        set(&mut base, "query_template", query);
        let body = json_field("body_template", &self.body_template, Value::Null)?;
        set(&mut base, "body_template", body);
        set(&mut base, "auth_strategy", json!(self.auth_strategy));
        if !self.auth_secret.is_empty() {
            set(&mut base, "auth_secret", json!(self.auth_secret));
        }
        if let Some(timeout) = number("timeout_ms", &self.timeout_ms)? {
            set(&mut base, "timeout_ms", json!(timeout));
        }
        let retry = [
            ("max_attempts", "retry_max_attempts", &self.retry_max_attempts),
            (
                "initial_backoff_ms",
                "retry_initial_backoff_ms",
                &self.retry_initial_backoff_ms,
            ),
            ("max_backoff_ms", "retry_max_backoff_ms", &self.retry_max_backoff_ms),
        ];
        let mut policy = Map::new();
        for (key, field, text) in retry {
            if let Some(value) = number(field, text)? {
                policy.insert(key.into(), json!(value));
            }
        }
        if !policy.is_empty() {
            // Fields left empty keep the policy's defaults.
            set(&mut base, "retry", Value::Object(policy));
        } else {
            set(&mut base, "retry", Value::Null);
        }
        set(&mut base, "response_mode", json!(self.response_mode));
        set(&mut base, "approval", json!(self.approval));
        set(&mut base, "enabled", json!(self.enabled.is_some()));
        Ok(base)
    }

    /// The spec the form describes, checked as the admin API checks it.
    fn spec(&self, st: &AppState, base: Value) -> Result<ToolSpec, Problem> {
        let document = self.document(base)?;
        let spec: ToolSpec = serde_json::from_value(document).map_err(|e| Problem {
            field: None,
            message: format!("invalid tool fields: {e}"),
        })?;
        validated(st, spec).map_err(|err| Problem {
            field: err.field().and_then(form_field),
            message: err.message().to_string(),
        })
    }
}

/// Where the form posts, and what it is.
enum Editing {
    New,
    Existing(Box<ToolDefinition>),
}

impl Editing {
    fn base(&self) -> Value {
        match self {
            Editing::New => json!({}),
            Editing::Existing(tool) => spec_document(tool),
        }
    }
}

/// `GET /console/projects/{id}/tools/new`.
pub async fn new(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let form = ToolForm::blank();
    page(&st, &session, project_id, &Editing::New, &form, None, None).await
}

/// `GET /console/projects/{id}/tools/{name}/edit`.
pub async fn edit(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, name)): Path<(Uuid, String)>,
) -> Result<Response, ConsoleError> {
    let tool = find(&st, project_id, &name).await?;
    let form = ToolForm::of(&tool);
    page(
        &st,
        &session,
        project_id,
        &Editing::Existing(Box::new(tool)),
        &form,
        None,
        None,
    )
    .await
}

async fn find(st: &AppState, project_id: Uuid, name: &str) -> Result<ToolDefinition, ConsoleError> {
    tools::get(&st.pool, project_id, name)
        .await
        .map_err(ConsoleError::missing("tool"))
}

/// `POST /console/projects/{id}/tools/new`: creates the tool (or previews it).
pub async fn create(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<ToolForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    save(&st, &session, project_id, Editing::New, form).await
}

/// `POST /console/projects/{id}/tools/{name}/edit`: replaces the tool (or previews it).
pub async fn update(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, name)): Path<(Uuid, String)>,
    Form(form): Form<ToolForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.csrf.as_deref())?;
    let tool = find(&st, project_id, &name).await?;
    save(&st, &session, project_id, Editing::Existing(Box::new(tool)), form).await
}

async fn save(
    st: &AppState,
    session: &Session,
    project_id: Uuid,
    editing: Editing,
    form: ToolForm,
) -> Result<Response, ConsoleError> {
    projects::find(st, project_id).await?;
    if form.action.as_deref() == Some("preview") {
        let shown = preview_markup(st, project_id, &editing, &form).await;
        return page(st, session, project_id, &editing, &form, None, Some(shown)).await;
    }
    let spec = match form.spec(st, editing.base()) {
        Ok(spec) => spec,
        Err(problem) => return refused(st, session, project_id, &editing, &form, problem).await,
    };
    let saved = match &editing {
        Editing::New => create_tool(st, project_id, spec).await,
        Editing::Existing(tool) => replace_tool(st, project_id, &tool.name, spec).await,
    };
    match saved {
        Ok(tool) => {
            tracing::info!(project = %project_id, tool = %tool.name, version = tool.version, "console: tool saved");
            let back = format!("{}/projects/{project_id}/tools", session.base);
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, back)]).into_response())
        }
        Err(err) => {
            let problem = Problem {
                field: err.field().and_then(form_field),
                message: err.message().to_string(),
            };
            let status = err.status();
            let mut page = refused(st, session, project_id, &editing, &form, problem).await?;
            *page.status_mut() = status;
            Ok(page)
        }
    }
}

/// The form again as typed, with the server's message beside its field (422).
async fn refused(
    st: &AppState,
    session: &Session,
    project_id: Uuid,
    editing: &Editing,
    form: &ToolForm,
    problem: Problem,
) -> Result<Response, ConsoleError> {
    let mut page = page(st, session, project_id, editing, form, Some(&problem), None).await?;
    *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    Ok(page)
}

/// `POST /console/projects/{id}/tools/preview`: the preview's HTML for the form as typed.
pub async fn preview(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(form): Form<PreviewForm>,
) -> Result<Response, ConsoleError> {
    session.check_change(form.form.csrf.as_deref())?;
    projects::find(&st, project_id).await?;
    let editing = match form.editing.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => Editing::Existing(Box::new(find(&st, project_id, name).await?)),
        None => Editing::New,
    };
    let markup = preview_markup(&st, project_id, &editing, &form.form).await;
    let mut response = Html(markup.into_string()).into_response();
    layout::secure_headers(response.headers_mut());
    Ok(response)
}

#[derive(Deserialize)]
pub struct PreviewForm {
    /// The stored tool being edited (its other fields complete the draft).
    editing: Option<String>,
    #[serde(flatten)]
    form: ToolForm,
}

/// The request the draft would send with the example arguments (the admin API's
/// render: secrets redacted), or what keeps it from rendering.
async fn preview_markup(st: &AppState, project_id: Uuid, editing: &Editing, form: &ToolForm) -> Markup {
    let problem = |message: String| html! { p.preview-problem role="status" { (message) } };
    let spec = match form.spec(st, editing.base()) {
        Ok(spec) => spec,
        Err(problem_) => return problem(problem_.message),
    };
    let arguments = match serde_json::from_str::<Value>(if form.example_arguments.trim().is_empty() {
        "{}"
    } else {
        &form.example_arguments
    }) {
        Ok(Value::Object(arguments)) => arguments,
        _ => return problem("example arguments: a JSON object".into()),
    };
    let problems = match arguments::check_draft(&spec.input_schema, &Value::Object(arguments.clone())) {
        Ok(problems) => problems,
        Err(message) => return problem(message),
    };
    let tool = draft(project_id, editing, spec);
    match render::preview(st, &tool, &arguments, None, problems).await {
        Ok(request) => request_markup(&request),
        Err(err) => problem(err.message().to_string()),
    }
}

/// A tool definition of a spec not yet stored, for rendering only.
fn draft(project_id: Uuid, editing: &Editing, spec: ToolSpec) -> ToolDefinition {
    let now = chrono::Utc::now();
    let stored = match editing {
        Editing::Existing(tool) => Some(tool.as_ref()),
        Editing::New => None,
    };
    ToolDefinition {
        id: stored.map_or_else(Uuid::nil, |t| t.id),
        project_id,
        name: spec.name,
        title: spec.title,
        description: spec.description,
        input_schema: spec.input_schema,
        output_schema: spec.output_schema,
        annotations: spec.annotations,
        response_mode: spec.response_mode,
        base_url: spec.base_url,
        http_method: spec.http_method,
        endpoint_path: spec.endpoint_path,
        headers_template: spec.headers_template,
        query_template: spec.query_template,
        body_template: spec.body_template,
        auth_strategy: spec.auth_strategy,
        has_auth_secret: true,
        previous_secret_expires_at: None,
        timeout_ms: spec.timeout_ms,
        enabled: spec.enabled,
        require_member: spec.require_member,
        inject_member_identity: spec.inject_member_identity,
        retry: spec.retry,
        task_support: spec.task_support,
        approval: spec.approval,
        client_capabilities: spec.client_capabilities,
        source: None,
        version: 0,
        created_at: now,
        updated_at: now,
        auth_secret_ciphertext: None,
        auth_secret_previous_ciphertext: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn page(
    st: &AppState,
    session: &Session,
    project_id: Uuid,
    editing: &Editing,
    form: &ToolForm,
    problem: Option<&Problem>,
    preview: Option<Markup>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(st, project_id).await?;
    let tools_page = format!("{}/projects/{project_id}/tools", session.base);
    let (heading, action, editing_name) = match editing {
        Editing::New => ("New tool".to_string(), format!("{tools_page}/new"), String::new()),
        Editing::Existing(tool) => (
            format!("Edit {}", tool.name),
            format!("{tools_page}/{}/edit", tool.name),
            tool.name.clone(),
        ),
    };
    let preview = match preview {
        Some(markup) => markup,
        None if problem.is_none() => preview_markup(st, project_id, editing, form).await,
        None => html! { p { "Fix the form to see the request." } },
    };
    // The message beside the field it concerns; one the form has no field for, on top.
    let beside = |field: &str| problem.filter(|p| p.field == Some(field)).map(|p| p.message.as_str());
    let top = problem.filter(|p| p.field.is_none()).map(|p| p.message.as_str());
    let text = |id: &'static str, label: &str, value: &str, kind: &str| {
        let message = beside(id);
        html! {
            label for=(id) { (label) }
            input id=(id) name=(id) type=(kind) value=(value)
                aria-invalid=[message.map(|_| "true")]
                aria-describedby=[message.map(|_| format!("{id}-problem"))];
            @if let Some(message) = message { p.field-problem id=(format!("{id}-problem")) role="alert" { (message) } }
        }
    };
    let area = |id: &'static str, label: &str, value: &str, rows: u32| {
        let message = beside(id);
        html! {
            label for=(id) { (label) }
            textarea id=(id) name=(id) rows=(rows) spellcheck="false"
                aria-invalid=[message.map(|_| "true")]
                aria-describedby=[message.map(|_| format!("{id}-problem"))] { (value) }
            @if let Some(message) = message { p.field-problem id=(format!("{id}-problem")) role="alert" { (message) } }
        }
    };
    let choice = |id: &'static str, label: &str, value: &str, options: &[&str]| {
        let message = beside(id);
        html! {
            label for=(id) { (label) }
            select id=(id) name=(id) aria-invalid=[message.map(|_| "true")]
                aria-describedby=[message.map(|_| format!("{id}-problem"))] {
                @for option in options { option value=(option) selected[*option == value] { (option) } }
            }
            @if let Some(message) = message { p.field-problem id=(format!("{id}-problem")) role="alert" { (message) } }
        }
    };
    let has_secret = matches!(editing, Editing::Existing(tool) if tool.has_auth_secret);
    let body = html! {
        style { (PreEscaped(EDITOR_STYLE)) }
        h2 { (heading) }
        @if let Some(message) = top { p #form-problem role="alert" { (message) } }
        div.editor {
            form #tool-form method="post" action=(action) data-preview=(format!("{tools_page}/preview")) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="editing" value=(editing_name);
                fieldset {
                    legend { "Tool" }
                    (text("name", "Name", &form.name, "text"))
                    (text("title", "Title", &form.title, "text"))
                    (area("description", "Description (what the model reads)", &form.description, 3))
                    (area("input_schema", "Input schema (JSON Schema)", &form.input_schema, 8))
                }
                fieldset {
                    legend { "Request" }
                    (choice("http_method", "Method", &form.http_method, &METHODS))
                    (text("base_url", "Base URL", &form.base_url, "url"))
                    (text("endpoint_path", "Path template (e.g. /items/{id})", &form.endpoint_path, "text"))
                    (area("headers_template", "Header templates (JSON object)", &form.headers_template, 3))
                    (area("query_template", "Query templates (JSON object)", &form.query_template, 3))
                    (area("body_template", "Body template (JSON)", &form.body_template, 4))
                    (text("timeout_ms", "Timeout (ms)", &form.timeout_ms, "number"))
                }
                fieldset {
                    legend { "Authentication" }
                    (choice("auth_strategy", "Strategy", &form.auth_strategy, &AUTH))
                    (text("auth_secret", if has_secret { "Secret (stored; leave empty to keep it)" } else { "Secret" }, "", "password"))
                    p { small { "The secret is never shown, nor sent back with a refused form." } }
                }
                fieldset {
                    legend { "Retry policy (empty: the defaults)" }
                    (text("retry_max_attempts", "Attempts in all", &form.retry_max_attempts, "number"))
                    (text("retry_initial_backoff_ms", "Initial backoff (ms)", &form.retry_initial_backoff_ms, "number"))
                    (text("retry_max_backoff_ms", "Largest backoff (ms)", &form.retry_max_backoff_ms, "number"))
                }
                fieldset {
                    legend { "Behaviour" }
                    (choice("response_mode", "Response mode", &form.response_mode, &MODES))
                    (choice("approval", "Approval", &form.approval, &APPROVALS))
                    label { input type="checkbox" name="enabled" value="on" checked[form.enabled.is_some()]; " Enabled" }
                }
                fieldset {
                    legend { "Preview" }
                    (area("example_arguments", "Example arguments (JSON, for the preview only)", &form.example_arguments, 3))
                }
                p {
                    button type="submit" name="action" value="save" { "Save tool" }
                    " "
                    button type="submit" name="action" value="preview" { "Preview" }
                    " "
                    a href=(tools_page) { "Cancel" }
                }
            }
            section aria-labelledby="preview-heading" {
                h2 #preview-heading { "Request preview" }
                p { "What a call with the example arguments would send (default integration; secrets redacted)." }
                div #preview aria-live="polite" { (preview) }
            }
        }
        (assets::script(&session.base))
    };
    Ok(layout::project_page(session, &project, "Tools", body))
}
