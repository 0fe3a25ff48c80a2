//! The Runs screen: a project's recent runs, filtered by tool, status, member,
//! integration and time range (in the URL), newest first by cursor, with a live
//! tail (`tail`: server-sent rows, see `console.js`; without JavaScript the
//! Refresh link does the same); and a run's detail: its origin, the attempts
//! timeline, the request it would render now, its bodies and its re-drives. Read
//! through the projector's history readers, like `GET /v1/.../runs`.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use tengine_control::{integrations, principals::ReadScope, tools};
use tengine_projector::history::{
    self,
    runs::{AttemptRecord, BodiesRecord, RunFilter, RunRecord},
};
use url::form_urlencoded;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, layout, projects};
use crate::{
    AppState,
    admin::{
        runs::{decode_cursor, encode_cursor},
        tools::render,
    },
};

/// Runs a page by default and at most (`?limit=` asks for fewer).
const PAGE_SIZE: usize = 50;
const STATUSES: [&str; 7] = [
    "accepted",
    "running",
    "succeeded",
    "failed",
    "rejected",
    "cancelled",
    "revoked",
];
/// Characters of a stored body shown at most (the rest is through the admin API).
const BODY_SHOWN_MAX: usize = 16 * 1024;
/// Longest tool or member filter accepted.
const MAX_FILTER_LEN: usize = 128;

#[derive(Deserialize, Default)]
pub struct Filters {
    tool: Option<String>,
    status: Option<String>,
    member: Option<String>,
    /// An integration id.
    integration: Option<String>,
    /// Accepted at or after / before: `YYYY-MM-DDTHH:MM` (a `datetime-local` field, UTC) or RFC 3339.
    from: Option<String>,
    to: Option<String>,
    /// A run id: straight to its page.
    run: Option<String>,
    cursor: Option<String>,
    /// 1–50, default 50.
    limit: Option<usize>,
}

impl Filters {
    /// Empty fields (a submitted form's blanks) mean no filter.
    fn field(value: Option<&String>) -> Option<String> {
        value.map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_string)
    }

    fn page_size(&self) -> usize {
        self.limit.unwrap_or(PAGE_SIZE).clamp(1, PAGE_SIZE)
    }

    fn run_filter(&self) -> Result<RunFilter, ConsoleError> {
        let tool = Self::field(self.tool.as_ref());
        let status = Self::field(self.status.as_ref());
        let member = Self::field(self.member.as_ref());
        if [&tool, &member]
            .iter()
            .any(|f| f.as_ref().is_some_and(|f| f.len() > MAX_FILTER_LEN))
        {
            return Err(ConsoleError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "the tool and member filters are 128 characters at most",
            ));
        }
        if status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
            return Err(ConsoleError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "unknown status filter",
            ));
        }
        let before = match Self::field(self.cursor.as_ref()) {
            Some(c) => Some(
                decode_cursor(&c)
                    .ok_or_else(|| ConsoleError::new(axum::http::StatusCode::BAD_REQUEST, "invalid cursor"))?,
            ),
            None => None,
        };
        let integration_id = match Self::field(self.integration.as_ref()) {
            Some(id) => Some(Uuid::parse_str(&id).map_err(|_| {
                ConsoleError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "the integration filter is an integration's id",
                )
            })?),
            None => None,
        };
        Ok(RunFilter {
            tool_name: tool,
            status,
            member_id: member,
            integration_id,
            from: time(self.from.as_ref(), "from")?,
            to: time(self.to.as_ref(), "to")?,
            before,
            limit: i64::try_from(self.page_size()).unwrap_or(50).saturating_add(1),
        })
    }
}

/// A time filter: a `datetime-local` value (taken as UTC) or RFC 3339.
fn time(value: Option<&String>, name: &str) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    let Some(text) = Filters::field(value) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M").map(|t| t.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()))
        .map(Some)
        .map_err(|_| {
            ConsoleError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("`{name}` is a time: YYYY-MM-DDTHH:MM (UTC) or RFC 3339"),
            )
        })
}

/// The filters as a query string (no cursor, no limit).
fn filter_query(filter: &RunFilter) -> form_urlencoded::Serializer<'static, String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(tool) = &filter.tool_name {
        query.append_pair("tool", tool);
    }
    if let Some(status) = &filter.status {
        query.append_pair("status", status);
    }
    if let Some(member) = &filter.member_id {
        query.append_pair("member", member);
    }
    if let Some(integration) = filter.integration_id {
        query.append_pair("integration", &integration.to_string());
    }
    if let Some(from) = filter.from {
        query.append_pair("from", &from.to_rfc3339());
    }
    if let Some(to) = filter.to {
        query.append_pair("to", &to.to_rfc3339());
    }
    query
}

/// `GET /console/projects/{id}/runs?tool=&status=&member=&integration=&from=&to=&run=&limit=&cursor=`.
pub async fn list(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Query(filters): Query<Filters>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    if let Some(run) = Filters::field(filters.run.as_ref()) {
        return jump(&session, project_id, &run);
    }
    let filter = filters.run_filter()?;
    let mut runs = history::runs::list(&st.pool, project_id, &ReadScope::everything(), &filter).await?;
    let size = filters.page_size();
    let next = (runs.len() > size).then(|| {
        runs.truncate(size);
        runs.last().map(|r| encode_cursor(r.accepted_at, r.run_id))
    });
    let root = format!("{}/projects/{project_id}/runs", session.base);
    let integrations = integrations::list(&st.pool, project_id).await?;
    let query = filter_query(&filter).finish();
    let here = if query.is_empty() {
        root.clone()
    } else {
        format!("{root}?{query}")
    };
    // The first page follows new runs live; older pages stay as they are.
    let tail = filter.before.is_none().then(|| format!("{root}.stream?{query}"));
    let body = html! {
        (filter_form(&root, &filter, &integrations))
        p {
            a href=(here) { "Refresh" }
            @if tail.is_some() { " " span #tail-status role="status" aria-live="polite" {} }
        }
        @if runs.is_empty() { p #no-runs { "No runs match." } }
        (table(&root, &runs, tail.as_deref()))
        @if let Some(cursor) = next.flatten() {
            p { a href=(next_page(&root, &filter, size, &cursor)) rel="next" { "Older runs" } }
        }
        @if tail.is_some() { (super::assets::script(&session.base)) }
    };
    Ok(layout::project_page(&session, &project, "Runs", body))
}

/// The run-id box: to the run's page (which says whether it exists here).
fn jump(session: &Session, project_id: Uuid, run: &str) -> Result<Response, ConsoleError> {
    let run = Uuid::parse_str(run)
        .map_err(|_| ConsoleError::new(axum::http::StatusCode::BAD_REQUEST, "a run ID is a UUID"))?;
    let target = format!("{}/projects/{project_id}/runs/{run}", session.base);
    Ok(axum::response::Redirect::to(&target).into_response())
}

fn filter_form(root: &str, filter: &RunFilter, integrations: &[integrations::Integration]) -> Markup {
    let local = |t: Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default();
    html! {
        form.filters method="get" action=(root) role="search" {
            div {
                label for="tool" { "Tool" }
                input id="tool" name="tool" value=(filter.tool_name.as_deref().unwrap_or_default());
            }
            div {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "any" }
                    @for status in STATUSES {
                        option value=(status) selected[filter.status.as_deref() == Some(status)] { (status) }
                    }
                }
            }
            div {
                label for="member" { "Member" }
                input id="member" name="member" value=(filter.member_id.as_deref().unwrap_or_default());
            }
            div {
                label for="integration" { "Integration" }
                select id="integration" name="integration" {
                    option value="" { "any" }
                    @for integration in integrations.iter().take(super::PAGE_MAX) {
                        option value=(integration.id) selected[filter.integration_id == Some(integration.id)] { (integration.name) }
                    }
                }
            }
            div {
                label for="from" { "From (UTC)" }
                input id="from" name="from" type="datetime-local" value=(local(filter.from));
            }
            div {
                label for="to" { "To (UTC)" }
                input id="to" name="to" type="datetime-local" value=(local(filter.to));
            }
            div {
                label for="run" { "Run ID" }
                input id="run" name="run" size="36";
            }
            button type="submit" { "Filter" }
        }
    }
}

fn next_page(root: &str, filter: &RunFilter, size: usize, cursor: &str) -> String {
    let mut query = filter_query(filter);
    if size != PAGE_SIZE {
        query.append_pair("limit", &size.to_string());
    }
    query.append_pair("cursor", cursor);
    format!("{root}?{}", query.finish())
}

/// The runs table; `tail` is the live tail's stream, for `console.js`.
fn table(root: &str, runs: &[RunRecord], tail: Option<&str>) -> Markup {
    html! {
        table #runs data-tail=[tail] {
            thead { tr { th scope="col" { "Run" } th scope="col" { "Tool" } th scope="col" { "Status" }
                th scope="col" { "HTTP" } th scope="col" { "Latency" } th scope="col" { "Attempts" } th scope="col" { "Accepted" } } }
            tbody {
                @for run in runs { (row(root, run)) }
            }
        }
    }
}

/// One run's row (also what the live tail sends).
pub(super) fn row(root: &str, run: &RunRecord) -> Markup {
    html! {
        tr id=(format!("run-{}", run.run_id)) {
            td { a href=(format!("{root}/{}", run.run_id)) { code { (run.run_id) } } }
            td { code { (run.tool_name) } }
            td class=(run.status) { (run.status) }
            td { (optional(run.http_status)) }
            td { (run.latency_ms.map_or("–".to_string(), |ms| format!("{ms} ms"))) }
            td { (run.attempts) }
            td { (run.accepted_at.format("%Y-%m-%d %H:%M:%S UTC")) }
        }
    }
}

/// The live tail's filter: the page's, from a minute before it opened.
pub(super) fn tail_filter(filters: &Filters) -> Result<RunFilter, ConsoleError> {
    let mut filter = filters.run_filter()?;
    filter.before = None;
    filter.limit = i64::try_from(PAGE_SIZE).unwrap_or(50);
    Ok(filter)
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or("–".to_string(), |v| v.to_string())
}

/// `GET /console/projects/{id}/runs/{run_id}`: origin, status, the attempts
/// timeline, the request it renders, its bodies and its re-drives.
pub async fn detail(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, run_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let (run, attempts) = find(&st, project_id, run_id).await?;
    let bodies = history::runs::bodies(&st.pool, run_id).await?;
    let kept = history::runs::arguments(&st.pool, run_id).await?;
    let redrives = history::runs::redrives(&st.pool, project_id, run_id).await?;
    let rendered = rendered_request(&st, project_id, &run, &kept).await;
    let root = format!("{}/projects/{project_id}/runs", session.base);
    let finished = !matches!(run.status.as_str(), "accepted" | "running");
    let body = html! {
        h2 { "Run " code { (run.run_id) } }
        dl {
            dt { "Tool" } dd { code { (run.tool_name) } }
            dt { "Status" } dd class=(run.status) { (run.status) }
            dt { "HTTP status" } dd { (optional(run.http_status)) }
            dt { "Latency" } dd { (run.latency_ms.map_or("–".to_string(), |ms| format!("{ms} ms"))) }
            dt { "Member" } dd { (run.member_id.as_deref().unwrap_or("–")) }
            dt { "Integration" } dd { code { (run.integration_id) } }
            dt { "Trace ID" } dd #trace-id { @match &run.trace_id { Some(t) => code { (t) }, None => "–" } }
            dt { "Idempotency key" } dd #idempotency-key {
                @match &run.idempotency_key {
                    Some(k) => { code { (k) } " (a client retry with this key is answered from this run, not run again)" },
                    None => "–",
                }
            }
            dt { "Accepted" } dd { (run.accepted_at.to_rfc3339()) }
            dt { "Finished" } dd { (optional(run.finished_at.map(|t| t.to_rfc3339()))) }
            @if let Some(error) = &run.error {
                dt { "Error" } dd role="alert" { (run.error_class.as_deref().unwrap_or("error")) ": " (error) }
            }
            @if let Some(history_error) = &run.history_error { dt { "History" } dd { (history_error) } }
            @if let Some(original) = run.redrive_of {
                dt { "Re-drive of" } dd #redrive-of { a href=(format!("{root}/{original}")) { code { (original) } } }
            }
        }
        @if finished {
            p { a href=(format!("{root}/{run_id}/redrive")) aria-label=(format!("Re-drive run {run_id}")) { "Re-drive…" } }
        }
        @if !redrives.is_empty() {
            h2 { "Re-drives" }
            ul #redrives {
                @for (id, status) in &redrives {
                    li { a href=(format!("{root}/{id}")) { code { (id) } } " " span class=(status) { (status) } }
                }
            }
        }
        h2 { "Attempts" }
        (timeline(&run, &attempts))
        h2 { "Request" }
        (rendered)
        @if let Some(bodies) = &bodies { (stored_bodies(bodies)) }
        @else { h2 { "Response" } p { "Bodies are not kept for this run (the project's store_bodies was off)." } }
        p { a href=(root) { "All runs" } }
    };
    Ok(layout::project_page(&session, &project, "Runs", body))
}

/// The run of this project, or 404 (another project's run looks absent).
pub(super) async fn find(
    st: &AppState,
    project_id: Uuid,
    run_id: Uuid,
) -> Result<(RunRecord, Vec<AttemptRecord>), ConsoleError> {
    let (run, attempts) = history::runs::get(&st.pool, run_id)
        .await
        .map_err(ConsoleError::missing("run"))?;
    if run.project_id != project_id {
        return Err(ConsoleError::not_found("run"));
    }
    Ok((run, attempts))
}

/// The request the run's kept arguments render with the tool as it is now
/// (the admin API's render: secrets redacted); why not, when it cannot be shown.
async fn rendered_request(
    st: &AppState,
    project_id: Uuid,
    run: &RunRecord,
    kept: &history::runs::KeptArguments,
) -> Markup {
    let Some(arguments) = kept
        .arguments
        .as_deref()
        .and_then(|a| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(a).ok())
    else {
        return html! { p { "The call's arguments were not kept (the project keeps them with the bodies), so its request cannot be shown." } };
    };
    let tool = match tools::get(&st.pool, project_id, &run.tool_name).await {
        Ok(tool) => tool,
        Err(_) => return html! { p { "The tool no longer exists, so its request cannot be rendered." } },
    };
    let problems = st
        .validators
        .check(&tool, &serde_json::Value::Object(arguments.clone()))
        .unwrap_or_default();
    let member = run.member_id.clone().map(|id| tengine_core::envelope::Member {
        id,
        email: None,
        roles: Vec::new(),
        session_issued_at: run.accepted_at,
    });
    match render::preview(st, &tool, &arguments, member, problems).await {
        Ok(request) => html! {
            p { "As version " (tool.version) " of the tool renders the kept arguments"
                @if kept.arguments_altered == Some(true) { " (kept redacted)" }
                "; secrets redacted, signatures computed when sent." }
            (request_markup(&request))
        },
        Err(err) => html! { p { "The kept arguments do not render with the tool as it is now: " (err.message()) } },
    }
}

/// A rendered request as text: request line, headers, body.
pub(super) fn request_markup(request: &render::RenderedRequest) -> Markup {
    let body = request
        .body
        .as_ref()
        .map(|b| serde_json::to_string_pretty(b).unwrap_or_default());
    html! {
        pre #rendered-request {
            (request.method) " " (request.url) "\n"
            @for (name, value) in &request.headers { (name) ": " (value) "\n" }
            @if let Some(body) = body { "\n" (body) }
        }
    }
}

/// The bodies run history kept (already redacted and capped by the project's settings).
fn stored_bodies(bodies: &BodiesRecord) -> Markup {
    let shown = |body: &Option<String>| {
        body.as_deref().map(|b| match b.char_indices().nth(BODY_SHOWN_MAX) {
            Some((cut, _)) => format!("{}…", &b[..cut]),
            None => b.to_string(),
        })
    };
    html! {
        h2 { "Bodies" }
        @if bodies.bodies_truncated == Some(true) { p { "Cut to the project's body size limit." } }
        h3 { "Request" }
        @match shown(&bodies.request_body) { Some(body) => pre { (body) }, None => p { "None." } }
        h3 { "Response" }
        @match shown(&bodies.response_body) { Some(body) => pre { (body) }, None => p { "None." } }
    }
}

/// Queued → sent → answered, per attempt; between attempts, the backoff and
/// the reason for the retry (the previous attempt's answer).
fn timeline(run: &RunRecord, attempts: &[AttemptRecord]) -> Markup {
    let ms = |from: DateTime<Utc>, to: DateTime<Utc>| to.signed_duration_since(from).num_milliseconds();
    let reason = |a: &AttemptRecord| match (&a.error, a.http_status) {
        (Some(error), _) => format!("{}: {error}", a.error_class.as_deref().unwrap_or("error")),
        (None, Some(status)) => format!("HTTP {status}"),
        (None, None) => "no answer".to_string(),
    };
    html! {
        ol #timeline {
            li { "Queued " (run.accepted_at.to_rfc3339()) }
            @if let Some(approval) = &run.approval {
                li {
                    "Approval: " (approval.0["state"].as_str().unwrap_or("pending"))
                    @if let Some(by) = approval.0["by"].as_str() { " by " (by) }
                    @if let Some(at) = approval.0["decided_at"].as_str() { " at " (at) }
                    @if let Some(reason) = approval.0["reason"].as_str() { " (" (reason) ")" }
                }
            }
            @for (i, a) in attempts.iter().enumerate() {
                @if let Some(previous) = i.checked_sub(1).and_then(|p| attempts.get(p)) {
                    li.retry {
                        "Retried after " (reason(previous))
                        @if let Some(finished) = previous.finished_at { ", backoff " (ms(finished, a.started_at)) " ms" }
                    }
                }
                li {
                    "Attempt " (a.attempt) ": sent " (a.started_at.to_rfc3339())
                    @if let Some(finished) = a.finished_at {
                        ", answered " (finished.to_rfc3339()) " (" (ms(a.started_at, finished)) " ms)"
                    }
                    @if let Some(status) = a.http_status { " with HTTP " (status) }
                    @if let Some(error) = &a.error { " — " (a.error_class.as_deref().unwrap_or("error")) ": " (error) }
                }
            }
            @if attempts.is_empty() { li { "No attempt was made." } }
            @if let Some(finished) = run.finished_at { li { "Finished " (finished.to_rfc3339()) ": " (run.status) } }
            @if run.client_retries > 0 {
                li #client-retries {
                    "Client retries answered from this run (deduplicated, the API not called again): "
                    (run.client_retries)
                }
            }
        }
    }
}
