//! The Runs screen: a project's recent runs, filtered by tool and status (in the
//! URL), newest first by cursor; and a run's detail with its attempts. Read
//! through the projector's history readers, like `GET /v1/.../runs`.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use tengine_control::principals::ReadScope;
use tengine_projector::history::{
    self,
    runs::{AttemptRecord, BodiesRecord, RunFilter, RunRecord},
};
use url::form_urlencoded;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, layout, projects};
use crate::{
    AppState,
    admin::runs::{decode_cursor, encode_cursor},
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
        Ok(RunFilter {
            tool_name: tool,
            status,
            member_id: member,
            before,
            limit: i64::try_from(self.page_size()).unwrap_or(50).saturating_add(1),
            ..RunFilter::default()
        })
    }
}

/// `GET /console/projects/{id}/runs?tool=&status=&member=&run=&limit=&cursor=`.
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
    let body = html! {
        (filter_form(&root, &filter))
        @if runs.is_empty() { p { "No runs match." } }
        @else { (table(&root, &runs)) }
        @if let Some(cursor) = next.flatten() {
            p { a href=(next_page(&root, &filter, size, &cursor)) rel="next" { "Older runs" } }
        }
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

fn filter_form(root: &str, filter: &RunFilter) -> Markup {
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
                label for="run" { "Run ID" }
                input id="run" name="run" size="36";
            }
            button type="submit" { "Filter" }
        }
    }
}

fn next_page(root: &str, filter: &RunFilter, size: usize, cursor: &str) -> String {
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
    if size != PAGE_SIZE {
        query.append_pair("limit", &size.to_string());
    }
    query.append_pair("cursor", cursor);
    format!("{root}?{}", query.finish())
}

fn table(root: &str, runs: &[RunRecord]) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Run" } th scope="col" { "Tool" } th scope="col" { "Status" }
                th scope="col" { "HTTP" } th scope="col" { "Latency" } th scope="col" { "Attempts" } th scope="col" { "Accepted" } } }
            tbody {
                @for run in runs {
                    tr {
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
        }
    }
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or("–".to_string(), |v| v.to_string())
}

/// `GET /console/projects/{id}/runs/{run_id}`: status, error and the attempts timeline.
pub async fn detail(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path((project_id, run_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let (run, attempts) = history::runs::get(&st.pool, run_id)
        .await
        .map_err(ConsoleError::missing("run"))?;
    // Another project's run looks absent.
    if run.project_id != project_id {
        return Err(ConsoleError::not_found("run"));
    }
    let bodies = history::runs::bodies(&st.pool, run_id).await?;
    let body = html! {
        h2 { "Run " code { (run.run_id) } }
        dl {
            dt { "Tool" } dd { code { (run.tool_name) } }
            dt { "Status" } dd class=(run.status) { (run.status) }
            dt { "HTTP status" } dd { (optional(run.http_status)) }
            dt { "Latency" } dd { (run.latency_ms.map_or("–".to_string(), |ms| format!("{ms} ms"))) }
            dt { "Member" } dd { (run.member_id.as_deref().unwrap_or("–")) }
            dt { "Accepted" } dd { (run.accepted_at.to_rfc3339()) }
            dt { "Finished" } dd { (optional(run.finished_at.map(|t| t.to_rfc3339()))) }
            @if let Some(error) = &run.error {
                dt { "Error" } dd role="alert" { (run.error_class.as_deref().unwrap_or("error")) ": " (error) }
            }
            @if let Some(history_error) = &run.history_error { dt { "History" } dd { (history_error) } }
        }
        h2 { "Attempts" }
        (timeline(&attempts))
        @if let Some(bodies) = &bodies { (stored_bodies(bodies)) }
        p { a href=(format!("{}/projects/{project_id}/runs", session.base)) { "All runs" } }
    };
    Ok(layout::project_page(&session, &project, "Runs", body))
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

fn timeline(attempts: &[AttemptRecord]) -> Markup {
    html! {
        @if attempts.is_empty() { p { "No attempt was made." } }
        @else {
            ol {
                @for a in attempts {
                    li {
                        "Attempt " (a.attempt) ": sent " (a.started_at.to_rfc3339())
                        @if let Some(finished) = a.finished_at { ", answered " (finished.to_rfc3339()) }
                        @if let Some(status) = a.http_status { " with HTTP " (status) }
                        @if let Some(error) = &a.error { " — " (a.error_class.as_deref().unwrap_or("error")) ": " (error) }
                    }
                }
            }
        }
    }
}
