//! The Usage screen: a project's calls over the last day, week or month grouped
//! by tool, member, integration or hour (from the hourly usage table), as a
//! bar chart (SVG, `chart`) with the same numbers in a table under it, and the
//! same rows as CSV.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use tengine_control::principals::ReadScope;
use tengine_projector::history::usage;
use uuid::Uuid;

use super::{ConsoleError, auth::Session, chart, layout, projects};
use crate::AppState;

/// Periods offered: (query value, label, hours).
const PERIODS: [(&str, &str, i64); 3] = [
    ("day", "24 hours", 24),
    ("week", "7 days", 168),
    ("month", "30 days", 720),
];
/// Rows shown or exported at most (30 days by hour is 720).
const ROWS_MAX: usize = 1000;

#[derive(Deserialize, Default)]
pub struct UsageQuery {
    by: Option<String>,
    period: Option<String>,
}

/// What a query asks for, checked: (group name, period label, hours).
struct Selection {
    by: &'static str,
    period: (&'static str, &'static str, i64),
}

impl UsageQuery {
    fn selection(&self) -> Result<Selection, ConsoleError> {
        let by = self.by.as_deref().filter(|b| !b.is_empty()).unwrap_or("tool");
        let by = usage::GROUPS
            .iter()
            .map(|(name, _)| *name)
            .find(|name| *name == by)
            .ok_or_else(|| {
                ConsoleError::new(
                    StatusCode::BAD_REQUEST,
                    "by must be tool, member, integration, hour or day",
                )
            })?;
        let period = self.period.as_deref().filter(|p| !p.is_empty()).unwrap_or("day");
        let period = PERIODS
            .into_iter()
            .find(|(name, _, _)| *name == period)
            .ok_or_else(|| ConsoleError::new(StatusCode::BAD_REQUEST, "period must be day, week or month"))?;
        Ok(Selection { by, period })
    }
}

/// One row: the group's value and its sums.
struct Row {
    key: String,
    calls: i64,
    failures: i64,
    mean_ms: Option<i64>,
}

async fn rows(st: &AppState, project_id: Uuid, selection: &Selection) -> Result<Vec<Row>, ConsoleError> {
    let from = chrono::Utc::now().checked_sub_signed(chrono::Duration::hours(selection.period.2));
    let found = usage::summed(
        &st.pool,
        project_id,
        &ReadScope::everything(),
        from,
        None,
        &[selection.by],
    )
    .await?;
    let number = |row: &Value, key: &str| row[key].as_i64().unwrap_or(0);
    Ok(found
        .iter()
        .take(ROWS_MAX)
        .map(|row| Row {
            key: match &row[selection.by] {
                Value::String(s) => s.clone(),
                Value::Null => "–".into(),
                other => other.to_string(),
            },
            calls: number(row, "calls"),
            failures: number(row, "failures"),
            mean_ms: number(row, "latency_ms_sum").checked_div(number(row, "calls")),
        })
        .collect())
}

/// `GET /console/projects/{id}/usage?by=&period=`.
pub async fn show(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Query(query): Query<UsageQuery>,
) -> Result<Response, ConsoleError> {
    let project = projects::find(&st, project_id).await?;
    let selection = query.selection()?;
    let rows = rows(&st, project_id, &selection).await?;
    let root = format!("{}/projects/{project_id}/usage", session.base);
    let body = html! {
        (form(&root, &selection))
        @if rows.is_empty() { p { "No calls in the last " (selection.period.1) "." } }
        @else {
            (chart::bars("usage-chart", &format!("Calls and errors over the last {} by {}", selection.period.1, selection.by),
                &rows.iter().map(|r| chart::Bar { label: &r.key, calls: r.calls, errors: r.failures }).collect::<Vec<_>>()))
            (table(&selection, &rows))
        }
        p { a href=(format!("{root}.csv?by={}&period={}", selection.by, selection.period.0)) download { "Download CSV" } }
    };
    Ok(layout::project_page(&session, &project, "Usage", body))
}

fn form(root: &str, selection: &Selection) -> Markup {
    html! {
        form.filters method="get" action=(root) {
            div {
                label for="by" { "Grouped by" }
                select id="by" name="by" {
                    @for (name, _) in usage::GROUPS { option value=(name) selected[*name == selection.by] { (name) } }
                }
            }
            div {
                label for="period" { "Period" }
                select id="period" name="period" {
                    @for (name, label, _) in PERIODS { option value=(name) selected[name == selection.period.0] { (label) } }
                }
            }
            button type="submit" { "Show" }
        }
    }
}

fn table(selection: &Selection, rows: &[Row]) -> Markup {
    html! {
        table {
            caption { "Calls over the last " (selection.period.1) " by " (selection.by) " (whole hours)" }
            thead { tr { th scope="col" { (selection.by) } th scope="col" { "Calls" } th scope="col" { "Errors" } th scope="col" { "Mean latency" } } }
            tbody {
                @for row in rows {
                    tr { th scope="row" { code { (row.key) } } td { (row.calls) } td { (row.failures) }
                        td { (row.mean_ms.map_or("–".to_string(), |ms| format!("{ms} ms"))) } }
                }
            }
        }
    }
}

/// `GET /console/projects/{id}/usage.csv?by=&period=`: the rows the page shows.
pub async fn csv(
    _: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Query(query): Query<UsageQuery>,
) -> Result<Response, ConsoleError> {
    projects::find(&st, project_id).await?;
    let selection = query.selection()?;
    let rows = rows(&st, project_id, &selection).await?;
    let mut out = format!("{},calls,errors,mean_latency_ms\r\n", selection.by);
    for row in &rows {
        let mean = row.mean_ms.map(|ms| ms.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{mean}\r\n",
            csv_field(&row.key),
            row.calls,
            row.failures
        ));
    }
    let name = format!(
        "attachment; filename=\"usage-{}-{}.csv\"",
        selection.by, selection.period.0
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, name),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        out,
    )
        .into_response())
}

/// A CSV field, quoted (RFC 4180); a leading `=`, `+`, `-` or `@` is escaped
/// so that a spreadsheet does not read the value as a formula.
fn csv_field(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    format!("\"{}\"", guarded.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("lookup"), "\"lookup\"");
        assert_eq!(csv_field("a\"b,c"), "\"a\"\"b,c\"");
        assert_eq!(csv_field("=cmd()"), "\"'=cmd()\"");
    }
}
