//! `render`: the request a call of a tool would send (default integration, a fresh
//! run id), without sending it; secrets redacted.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tengine_control::projects;
use tengine_core::{
    domain::{AuthStrategy, ToolDefinition},
    envelope::{Caller, Member},
    errors,
    request::{self, RenderedRequest as Outbound},
    signing, templates,
};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    super::{
        auth::Admin,
        error::{ApiError, ApiResult},
        extract::{Ids, OptionalJsonBody, ToolPath},
        openapi::{AdminErrors, BadRequest, NotFound, RenderRefused, TooLarge},
    },
    TAG, tool_not_found,
};
use crate::AppState;

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderRequest {
    /// The call's arguments (checked against the tool's `input_schema`).
    #[serde(default)]
    arguments: Map<String, Value>,
    /// A member to render `member.*` and identity headers for.
    #[serde(default)]
    member: Option<RenderMember>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderMember {
    id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// The request as it would be sent.
#[derive(Serialize, ToSchema)]
pub struct RenderedRequest {
    pub(crate) method: &'static str,
    pub(crate) url: String,
    /// `[name, value]` pairs in sending order; the automatic `Content-Type` and `User-Agent` are not
    /// shown.
    #[schema(value_type = Vec<Vec<String>>)]
    pub(crate) headers: Vec<(String, String)>,
    /// The JSON body (a form-encoded one as a string), or `null` without one.
    pub(crate) body: Option<Value>,
}

/// Show the request a call would send, without sending it.
///
/// The default integration and a fresh run id are used. Secrets are redacted (`Bearer <redacted>`;
/// signatures `<computed when sent>`; `webhook-id` is real for the render's run id). Arguments that
/// fail the schema or a template are 422 `invalid_arguments`.
#[utoipa::path(post, path = "/v1/projects/{project_id}/tools/{name}/render", operation_id = "render_tool", tag = TAG,
    security(("admin_token" = [])), params(ToolPath),
    request_body(content = Option<RenderRequest>, description = "optional: an empty body takes the defaults"),
    responses((status = 200, body = RenderedRequest), AdminErrors, BadRequest, NotFound, RenderRefused, TooLarge))]
pub async fn render(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ToolPath { project_id, name }): Ids<ToolPath>,
    OptionalJsonBody(input): OptionalJsonBody<RenderRequest>,
) -> ApiResult<Json<RenderedRequest>> {
    let tool = tengine_control::tools::get(&st.pool, project_id, &name)
        .await
        .map_err(tool_not_found)?;
    let problems = st
        .validators
        .check(&tool, &Value::Object(input.arguments.clone()))
        .map_err(ApiError::internal)?;
    let member = input.member.map(|m| Member {
        id: m.id,
        email: m.email,
        roles: m.roles,
        session_issued_at: chrono::Utc::now(),
    });
    preview(&st, &tool, &input.arguments, member, problems).await.map(Json)
}

/// The request a call of `tool` with `arguments` would send, secrets redacted:
/// `render`'s work, shared with the console (its tool editor's live preview and a
/// run's page). `problems` are the arguments' schema violations, found by the
/// caller (a saved tool's validator is cached, a draft's is not).
pub(crate) async fn preview(
    st: &AppState,
    tool: &ToolDefinition,
    arguments: &Map<String, Value>,
    member: Option<Member>,
    problems: Vec<String>,
) -> ApiResult<RenderedRequest> {
    let project_id = tool.project_id;
    let project = projects::get(&st.pool, project_id).await?;
    let caller = Caller {
        project_id,
        integration_id: project.default_integration_id,
        api_key_id: Uuid::nil(),
        member,
    };
    let run_id = Uuid::now_v7();
    if !problems.is_empty() {
        return Err(ApiError::new(errors::INVALID_ARGUMENTS, problems.join("; ")));
    }
    let ctx = templates::Context {
        arguments,
        reserved: templates::reserved_variables(&caller, run_id),
    };
    let request = request::render(tool, &ctx).map_err(|e| ApiError::new(errors::INVALID_ARGUMENTS, e.to_string()))?;
    let headers = headers(tool, &caller, run_id, &request);
    let body = request
        .body
        .as_ref()
        // A form-encoded body is shown as its text.
        .map(|b| {
            serde_json::from_slice::<Value>(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
        });
    Ok(RenderedRequest {
        method: request.method.as_str(),
        url: request.url.to_string(),
        headers,
        body,
    })
}

/// The headers the worker would send: identity and webhook-id (for this render's
/// run id), the tool's own, and its authentication with the secrets redacted.
fn headers(tool: &ToolDefinition, caller: &Caller, run_id: Uuid, request: &Outbound) -> Vec<(String, String)> {
    let target = signing::request_target(&request.url);
    let signed = signing::Target {
        method: request.method.as_str(),
        target: &target,
        body: request.body.as_deref().unwrap_or_default(),
    };
    let mut out: Vec<(String, String)> = signing::outbound_headers(
        caller,
        tool.inject_member_identity,
        run_id,
        chrono::Utc::now().timestamp(),
        signed,
        &[],
        None,
    )
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    out.extend(request.headers.iter().cloned());
    match tool.auth_strategy {
        AuthStrategy::None => {}
        AuthStrategy::StaticBearer => out.push(("Authorization".into(), "Bearer <redacted>".into())),
        AuthStrategy::HmacSignature => {
            out.push((
                signing::HEADER_SIGNATURE.into(),
                "tng3=<computed when sent> tng2=<computed when sent>".into(),
            ));
            out.push((
                signing::HEADER_WEBHOOK_SIGNATURE.into(),
                "v1,<computed when sent>".into(),
            ));
        }
    }
    out
}
