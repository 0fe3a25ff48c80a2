//! The projects list (the console's home) and a project's overview.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::Response,
};
use maud::{Markup, html};
use serde_json::Value;
use tengine_control::{
    principals::ReadScope,
    projects::{self, Project},
};
use tengine_projector::history::usage;
use uuid::Uuid;

use super::{ConsoleError, PAGE_MAX, auth::Session, layout};
use crate::AppState;

/// `GET /console`: every project, as a link named by its name.
pub async fn list(session: Session, State(st): State<Arc<AppState>>) -> Result<Response, ConsoleError> {
    let mut all = projects::list(&st.pool).await?;
    // A project key's session sees its own project only.
    all.retain(|project| session.may_see(project.id));
    let total = all.len();
    let body = html! {
        h1 { "Projects" }
        @if all.is_empty() { p { "No projects yet: create one with " code { "POST /v1/projects" } "." } }
        ul {
            @for project in all.iter().take(PAGE_MAX) {
                li { a href=(format!("{}/projects/{}", session.base, project.id)) { (project.name) } }
            }
        }
        @if total > PAGE_MAX { p { "Showing " (PAGE_MAX) " of " (total) " projects." } }
    };
    Ok(layout::page(&session, "Projects", body))
}

/// The project named in the path, or 404.
pub async fn find(st: &AppState, project_id: Uuid) -> Result<Project, ConsoleError> {
    projects::get(&st.pool, project_id)
        .await
        .map_err(ConsoleError::missing("project"))
}

/// `GET /console/projects/{id}`: calls, errors, mean and p50/p95 latency over
/// 24 h and 7 days, the tools failing most, the projector's lag and the command
/// queue's depth, and the project's settings at a glance.
pub async fn overview(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let project = find(&st, project_id).await?;
    let day = Totals::since(&st, project_id, 24).await?;
    let week = Totals::since(&st, project_id, 24 * 7).await?;
    let failing = failing_tools(&st, project_id).await?;
    let lag = st.dispatcher.projector_lag(&st.pool).await;
    let depth = st.dispatcher.queue_depth().await;
    let unknown = || "unknown (NATS did not answer)".to_string();
    let body = html! {
        table {
            caption { "Calls (whole hours)" }
            thead { tr { th scope="col" { "Period" } th scope="col" { "Calls" } th scope="col" { "Errors" }
                th scope="col" { "Error rate" } th scope="col" { "Mean latency" }
                th scope="col" { "p50 latency" } th scope="col" { "p95 latency" } } }
            tbody { (day.row("24 hours", "day")) (week.row("7 days", "week")) }
        }
        h2 { "Pipeline (whole cluster)" }
        dl {
            dt { "Projector lag" }
            dd #projector-lag { (lag.map_or_else(unknown, |n| format!("{n} events not in run history yet"))) }
            dt { "Queue depth" }
            dd #queue-depth {
                (depth.map_or_else(unknown, |d| format!("{} commands waiting for a worker, {} being executed",
                    d.waiting, d.in_progress)))
            }
        }
        h2 { "Tools failing most (7 days)" }
        @if failing.is_empty() { p { "No failures." } }
        @else { ol { @for (tool, failures) in &failing { li { code { (tool) } ": " (failures) " errors" } } } }
        h2 { "Settings" }
        dl {
            dt { "Project ID" } dd { code { (project.id) } }
            dt { "Created" } dd { (project.created_at.to_rfc3339()) }
            dt { "Monthly call limit" }
            dd { (project.monthly_call_limit.map_or("unlimited".to_string(), |n| n.to_string())) }
            dt { "Stores bodies" } dd { (if project.store_bodies { "yes" } else { "no" }) }
        }
    };
    Ok(layout::project_page(&session, &project, "Overview", body))
}

/// Calls of a period, summed from the hourly usage.
#[derive(Default)]
struct Totals {
    calls: i64,
    failures: i64,
    latency_ms_sum: i64,
    percentiles: Option<usage::Percentiles>,
}

impl Totals {
    async fn since(st: &AppState, project_id: Uuid, hours: i64) -> Result<Self, ConsoleError> {
        let from = chrono::Utc::now().checked_sub_signed(chrono::Duration::hours(hours));
        let rows = usage::summed(&st.pool, project_id, &ReadScope::everything(), from, None, &[]).await?;
        let percentiles = usage::latency_percentiles(&st.pool, project_id, from).await?;
        let number = |row: &Value, key: &str| row[key].as_i64().unwrap_or(0);
        Ok(rows.first().map_or_else(Self::default, |row| Self {
            calls: number(row, "calls"),
            failures: number(row, "failures"),
            latency_ms_sum: number(row, "latency_ms_sum"),
            percentiles,
        }))
    }

    fn row(&self, period: &str, id: &str) -> Markup {
        let rate = (self.calls > 0).then(|| format!("{:.1} %", self.failures as f64 * 100.0 / self.calls as f64));
        let mean = self.latency_ms_sum.checked_div(self.calls).map(|ms| format!("{ms} ms"));
        html! {
            tr { th scope="row" { (period) } td { (self.calls) } td { (self.failures) }
                td { (rate.unwrap_or_else(|| "–".into())) } td { (mean.unwrap_or_else(|| "–".into())) }
                td id=(format!("p50-{id}")) { (self.percentiles.map_or_else(|| "–".into(), |p| milliseconds(p.p50_ms))) }
                td id=(format!("p95-{id}")) { (self.percentiles.map_or_else(|| "–".into(), |p| milliseconds(p.p95_ms))) } }
        }
    }
}

/// The five tools with the most failures over 7 days.
async fn failing_tools(st: &AppState, project_id: Uuid) -> Result<Vec<(String, i64)>, ConsoleError> {
    let from = chrono::Utc::now().checked_sub_signed(chrono::Duration::days(7));
    let rows = usage::summed(&st.pool, project_id, &ReadScope::everything(), from, None, &["tool"]).await?;
    let mut failing: Vec<(String, i64)> = rows
        .iter()
        .filter_map(|row| Some((row["tool"].as_str()?.to_string(), row["failures"].as_i64()?)))
        .filter(|(_, failures)| *failures > 0)
        .collect();
    failing.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    failing.truncate(5);
    Ok(failing)
}

/// A percentile estimate (within 10 %, from the histogram): whole ms, one
/// decimal under 10 ms.
fn milliseconds(ms: f64) -> String {
    if ms < 10.0 {
        format!("≈ {ms:.1} ms")
    } else {
        format!("≈ {ms:.0} ms")
    }
}
