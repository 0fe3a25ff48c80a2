//! `import`: an OpenAPI 3.0/3.1 document (the body, or `?url=`) planned by
//! `tengine-openapi` into one tool per operation, compared with the tools the
//! project imported before from the same API (by their stored `source`), and
//! reported; applied unless `dry_run` (the default).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State},
};
use serde::Serialize;
use serde_json::Value;
use tengine_control::tools;
use tengine_core::{
    addresses::{Policy, PolicyResolver},
    domain::{ToolDefinition, ToolSpec},
};
use tengine_openapi::{Options, Outcome};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    super::{
        auth::Admin,
        error::{ApiError, ApiResult},
        extract::{Ids, ProjectPath, RawBody},
        openapi::{AdminErrors, BadRequest, InvalidField, NotFound, TooLarge},
        projects,
    },
    TAG, spec_document, tools_changed,
};
use crate::{AppState, arguments};

/// Largest document accepted, in the body or from `?url=` (GitHub's is 14 MB).
pub const DOCUMENT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How long fetching `?url=` may take, whole.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const FETCH_REDIRECTS: usize = 5;

/// The import's options (all query parameters; `tag`, `method` and `operation_id` repeat).
#[derive(Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Only report (default `true`); `false` applies.
    dry_run: Option<bool>,
    /// Create the new tools enabled (default `false`: created disabled, for review).
    enable: Option<bool>,
    /// Only operations with this tag (repeatable: any of them).
    tag: Vec<String>,
    /// Only operations whose path starts with this.
    path_prefix: Option<String>,
    /// Only this method (repeatable).
    method: Vec<String>,
    /// Only this operationId (repeatable).
    operation_id: Vec<String>,
    /// Put before every new tool's name.
    name_prefix: Option<String>,
    /// The API's URL, instead of the document's `servers` (`https://host[:port][/path]`).
    base_url: Option<String>,
    /// Fetch the document from here (through the outbound address policy) instead of the body.
    url: Option<String>,
}

impl ImportQuery {
    fn parse(raw: Option<&str>) -> ApiResult<Self> {
        let mut query = Self::default();
        let flag = |key: &str, value: &str| match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ApiError::bad_request(format!("`{key}` must be true or false"))),
        };
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let value = value.into_owned();
            match key.as_ref() {
                "dry_run" => query.dry_run = Some(flag(&key, &value)?),
                "enable" => query.enable = Some(flag(&key, &value)?),
                "tag" => query.tag.push(value),
                "path_prefix" => query.path_prefix = Some(value),
                "method" => query.method.push(value),
                "operation_id" => query.operation_id.push(value),
                "name_prefix" => query.name_prefix = Some(value),
                "base_url" => query.base_url = Some(value),
                "url" => query.url = Some(value),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}` (known: dry_run, enable, tag, path_prefix, method, \
                         operation_id, name_prefix, base_url, url)"
                    )));
                }
            }
        }
        Ok(query)
    }
}

/// What the import does (did) with one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    /// A new tool.
    Create,
    /// The tool imported from this operation before changes (`changes` says how).
    Update,
    /// The tool imported from this operation before is already as the document says.
    Unchanged,
    /// No tool: `reason` says why.
    Skipped,
    /// Applying failed (e.g. a concurrent change): `reason` says why.
    Failed,
}

/// One field's change in an update.
#[derive(Serialize, ToSchema)]
pub struct FieldChange {
    #[schema(value_type = Object)]
    from: Value,
    #[schema(value_type = Object)]
    to: Value,
}

/// One operation of the document.
#[derive(Serialize, ToSchema)]
pub struct ImportedOperation {
    method: String,
    path: String,
    operation_id: Option<String>,
    tags: Vec<String>,
    action: ImportAction,
    /// The tool's name (new or existing).
    tool: Option<String>,
    /// Why the operation is skipped (or applying failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// What the mapping approximated or left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    /// The auth strategy the document's security scheme calls for (set it, and the secret, yourself).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    suggested_auth: Option<Value>,
    /// `create`: the tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<ToolSpec>,
    /// `create` and `update`: the source reference stored with the tool (argument → location map included).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    source: Option<Value>,
    /// `update`: each changed field, from → to.
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<BTreeMap<String, FieldChange>>,
}

#[derive(Default, Serialize, ToSchema)]
pub struct ImportCounts {
    create: usize,
    update: usize,
    unchanged: usize,
    skipped: usize,
    failed: usize,
}

/// The import's report.
#[derive(Serialize, ToSchema)]
pub struct ImportReport {
    dry_run: bool,
    /// The document's `openapi` version.
    openapi: String,
    /// Its `info.title` (imported tools are matched by it and the operation).
    title: String,
    api_version: String,
    /// The document's servers (the first is used unless `base_url` is given).
    servers: Vec<String>,
    counts: ImportCounts,
    /// Operations the filters left out (not listed).
    filtered_out: usize,
    operations: Vec<ImportedOperation>,
    /// Tools imported from this API before whose operation the document no longer has (they are not
    /// deleted); listed only by an import without filters.
    stale: Vec<String>,
}

/// Import tools from an OpenAPI 3.0 or 3.1 document (docs/openapi-import.md).
///
/// The body is the document (`application/json` or `application/yaml`, up to 64 MiB), or `?url=` names
/// one to fetch. Every operation is reported: created, updated (with a diff), unchanged, or skipped with
/// the reason. Tools are matched to operations by the stored `source` (the document's title and
/// `METHOD /path`), so re-importing updates rather than duplicates; an update keeps the tool's name,
/// auth, timeouts, retries and other settings not taken from the document. New tools are created
/// disabled unless `enable=true`. Nothing is written with `dry_run` (the default).
#[utoipa::path(post, path = "/v1/projects/{project_id}/tools/import", operation_id = "import_tools", tag = TAG,
    security(("admin_token" = [])), params(ProjectPath, ImportQuery),
    request_body(description = "the OpenAPI document (JSON or YAML); empty with `?url=`",
        content((Object = "application/json"), (String = "application/yaml"))),
    responses((status = 200, body = ImportReport), AdminErrors, BadRequest, NotFound, InvalidField, TooLarge))]
pub async fn import(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    RawQuery(raw): RawQuery,
    RawBody(body): RawBody,
) -> ApiResult<Json<ImportReport>> {
    let query = ImportQuery::parse(raw.as_deref())?;
    projects::exists(&st, project_id).await?;
    let document = match (&query.url, body.is_empty()) {
        (Some(url), true) => fetch(&st, project_id, url).await?,
        (None, false) => body,
        (Some(_), false) => {
            return Err(ApiError::bad_request(
                "send the document in the body or name it with ?url=, not both",
            ));
        }
        (None, true) => {
            return Err(ApiError::bad_request(
                "send the OpenAPI document as the body (application/json or application/yaml), or name it with ?url=",
            ));
        }
    };
    let options = Options {
        tags: query.tag.clone(),
        path_prefix: query.path_prefix.clone(),
        methods: query.method.clone(),
        operation_ids: query.operation_id.clone(),
        name_prefix: query.name_prefix.clone(),
        base_url: query.base_url.clone(),
        allow_insecure: st.config.allow_insecure_upstreams,
    };
    // Parsing and planning a large document is CPU work (GitHub's: ~0.2 s in release).
    let plan = tokio::task::spawn_blocking(move || planned(&document, &options))
        .await
        .map_err(ApiError::internal)??;

    let existing: HashMap<String, ToolDefinition> = tools::imported(&st.pool, project_id, &plan.title)
        .await?
        .into_iter()
        .filter_map(|t| {
            let key = t.source.as_ref()?.get("key")?.as_str()?.to_string();
            Some((key, t))
        })
        .collect();
    let taken: HashSet<String> = tools::names(&st.pool, project_id).await?.into_iter().collect();
    let dry_run = query.dry_run.unwrap_or(true);
    let mut run = Run {
        st: &st,
        project_id,
        dry_run,
        enable: query.enable.unwrap_or(false),
        existing,
        taken,
        changed: false,
    };
    let mut report = ImportReport {
        dry_run,
        openapi: plan.openapi,
        title: plan.title,
        api_version: plan.api_version,
        servers: plan.servers,
        counts: ImportCounts::default(),
        filtered_out: plan.filtered_out,
        operations: Vec::with_capacity(plan.operations.len()),
        stale: Vec::new(),
    };
    for operation in plan.operations {
        let entry = run.operation(operation).await?;
        let counter = match entry.action {
            ImportAction::Create => &mut report.counts.create,
            ImportAction::Update => &mut report.counts.update,
            ImportAction::Unchanged => &mut report.counts.unchanged,
            ImportAction::Skipped => &mut report.counts.skipped,
            ImportAction::Failed => &mut report.counts.failed,
        };
        *counter = counter.saturating_add(1);
        report.operations.push(entry);
    }
    if report.filtered_out == 0 {
        report.stale = run.existing.into_values().map(|t| t.name).collect();
        report.stale.sort();
    }
    if run.changed {
        tools_changed(&st, project_id).await;
    }
    Ok(Json(report))
}

/// One import's state: the project's tools of this API (by `METHOD /path`) not
/// yet matched, every name taken, whether anything was written.
struct Run<'a> {
    st: &'a AppState,
    project_id: Uuid,
    dry_run: bool,
    enable: bool,
    existing: HashMap<String, ToolDefinition>,
    taken: HashSet<String>,
    changed: bool,
}

impl Run<'_> {
    /// What becomes of one planned operation (done unless a dry run).
    async fn operation(&mut self, operation: tengine_openapi::Operation) -> ApiResult<ImportedOperation> {
        let mut entry = ImportedOperation {
            method: operation.method,
            path: operation.path,
            operation_id: operation.operation_id,
            tags: operation.tags,
            action: ImportAction::Skipped,
            tool: None,
            reason: None,
            notes: Vec::new(),
            suggested_auth: None,
            spec: None,
            source: None,
            changes: None,
        };
        let planned = match operation.outcome {
            Outcome::Skipped(reason) => {
                entry.reason = Some(reason);
                return Ok(entry);
            }
            Outcome::Tool(planned) => planned,
        };
        entry.notes = planned.notes;
        entry.suggested_auth = planned
            .suggested_auth
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok());
        let source = serde_json::to_value(&planned.source).map_err(ApiError::internal)?;
        let (st, project_id) = (self.st, self.project_id);
        let written = match self.existing.remove(&planned.source.key) {
            Some(current) => {
                entry.tool = Some(current.name.clone());
                let spec = match updated_spec(st, &current, planned.spec, self.enable) {
                    Ok(spec) => spec,
                    Err(reason) => {
                        entry.reason = Some(reason);
                        return Ok(entry);
                    }
                };
                let changes = differences(&current, &spec, &source);
                if changes.is_empty() {
                    entry.action = ImportAction::Unchanged;
                    return Ok(entry);
                }
                entry.action = ImportAction::Update;
                entry.changes = Some(changes);
                entry.source = Some(source.clone());
                if self.dry_run {
                    return Ok(entry);
                }
                tools::replace_imported(&st.pool, &st.secrets, project_id, &current.name, &spec, &source)
                    .await
                    .map(drop)
            }
            None => {
                let mut spec = planned.spec;
                spec.name = tengine_openapi::unique_name(&spec.name, &self.taken);
                spec.enabled = self.enable;
                self.taken.insert(spec.name.clone());
                entry.tool = Some(spec.name.clone());
                entry.action = ImportAction::Create;
                entry.source = Some(source.clone());
                let written = match self.dry_run {
                    true => None,
                    false => Some(
                        tools::create_imported(&st.pool, &st.secrets, project_id, &spec, &source)
                            .await
                            .map(drop),
                    ),
                };
                entry.spec = Some(spec);
                match written {
                    None => return Ok(entry),
                    Some(written) => written,
                }
            }
        };
        match written {
            Ok(()) => self.changed = true,
            Err(err) => {
                entry.action = ImportAction::Failed;
                entry.reason = Some(ApiError::from(err).message().to_string());
            }
        }
        Ok(entry)
    }
}

/// The plan, each tool's schemas compiled as the admin API compiles every tool's
/// (a schema the validator refuses is that operation's skip reason).
fn planned(document: &[u8], options: &Options) -> ApiResult<tengine_openapi::Plan> {
    let refused = |e: tengine_openapi::DocumentError| ApiError::invalid_field("document", e.to_string());
    let value = tengine_openapi::parse(document).map_err(refused)?;
    let mut plan = tengine_openapi::plan(&value, options).map_err(refused)?;
    for operation in &mut plan.operations {
        let refusal = match &operation.outcome {
            Outcome::Tool(tool) => [
                ("input_schema", Some(&tool.spec.input_schema)),
                ("output_schema", tool.spec.output_schema.as_ref()),
            ]
            .into_iter()
            .find_map(|(field, schema)| match schema.map(arguments::compiles) {
                Some(Err(e)) => Some(format!("the tool's {field} does not compile: {e}")),
                _ => None,
            }),
            Outcome::Skipped(_) => None,
        };
        if let Some(reason) = refusal {
            operation.outcome = Outcome::Skipped(reason);
        }
    }
    Ok(plan)
}

/// The document's fields of `planned` over `current`'s: the name, auth, timeouts,
/// retries and the other settings an operator may have changed stay.
fn updated_spec(st: &AppState, current: &ToolDefinition, planned: ToolSpec, enable: bool) -> Result<ToolSpec, String> {
    let mut document = spec_document(current);
    let planned = serde_json::to_value(&planned).map_err(|e| e.to_string())?;
    for field in DOCUMENT_FIELDS {
        document[*field] = planned.get(*field).cloned().unwrap_or(Value::Null);
    }
    document["enabled"] = Value::Bool(current.enabled || enable);
    let spec: ToolSpec = serde_json::from_value(document).map_err(|e| e.to_string())?;
    spec.validate(st.config.allow_insecure_upstreams)
        .map_err(|e| format!("the updated tool would be invalid: {e}"))
}

/// The fields an import takes from the document (the others are the operator's).
const DOCUMENT_FIELDS: &[&str] = &[
    "title",
    "description",
    "input_schema",
    "output_schema",
    "annotations",
    "response_mode",
    "base_url",
    "http_method",
    "endpoint_path",
    "headers_template",
    "query_template",
    "body_template",
];

/// What an update changes: the document's fields, `enabled` and the source.
fn differences(current: &ToolDefinition, spec: &ToolSpec, source: &Value) -> BTreeMap<String, FieldChange> {
    let before = spec_document(current);
    let after = serde_json::to_value(spec).unwrap_or(Value::Null);
    let mut changes = BTreeMap::new();
    for field in DOCUMENT_FIELDS.iter().chain(&["enabled"]) {
        let (from, to) = (
            before.get(*field).cloned().unwrap_or(Value::Null),
            after.get(*field).cloned().unwrap_or(Value::Null),
        );
        if from != to {
            changes.insert((*field).to_string(), FieldChange { from, to });
        }
    }
    let stored = current.source.clone().unwrap_or(Value::Null);
    if &stored != source {
        changes.insert(
            "source".into(),
            FieldChange {
                from: stored,
                to: source.clone(),
            },
        );
    }
    changes
}

/// The document at `raw`, through the project's outbound address policy (as a
/// tool call would reach it), within [`FETCH_TIMEOUT`] and [`DOCUMENT_MAX_BYTES`].
async fn fetch(st: &AppState, project_id: Uuid, raw: &str) -> ApiResult<Bytes> {
    let refused = |message: String| ApiError::invalid_field("url", message);
    let url = url::Url::parse(raw).map_err(|e| refused(format!("is not a URL ({e})")))?;
    let insecure = st.config.allow_insecure_upstreams;
    let project = tengine_control::projects::get(&st.pool, project_id).await?;
    let policy = Policy::for_project(st.config.allow_private_upstreams, &project.outbound_allowlist);
    let resolver = PolicyResolver {
        policy: Arc::new(policy.clone()),
    };
    // A literal IP never goes through the resolver: checked here, and on redirects.
    let check = move |url: &url::Url| -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if insecure => {}
            _ => return Err("must be https (http only with allow_insecure_upstreams)".into()),
        }
        policy.check_literal_host(url)
    };
    check(&url).map_err(&refused)?;
    let redirect_check = check.clone();
    let client = reqwest::Client::builder()
        // A proxy from the environment would be the address checked, not the document's host.
        .no_proxy()
        .user_agent(concat!("tengine/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= FETCH_REDIRECTS {
                attempt.error("too many redirects")
            } else if let Err(reason) = redirect_check(attempt.url()) {
                attempt.error(reason)
            } else {
                attempt.follow()
            }
        }))
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(ApiError::internal)?;
    let mut response = client
        .get(url)
        .header(
            "Accept",
            "application/json, application/yaml;q=0.9, application/x-yaml;q=0.9, text/yaml;q=0.9, */*;q=0.1",
        )
        .send()
        .await
        .map_err(|e| refused(format!("could not be fetched: {}", error_chain(&e))))?;
    if !response.status().is_success() {
        return Err(refused(format!("answered HTTP {}", response.status().as_u16())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| refused(format!("could not be read: {}", error_chain(&e))))?
    {
        if body.len().saturating_add(chunk.len()) > DOCUMENT_MAX_BYTES {
            return Err(refused(format!(
                "the document is larger than {DOCUMENT_MAX_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// An error with its causes (reqwest's own message hides the policy's refusal).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
