//! The Runs screen's live tail: `GET …/runs.stream` streams (server-sent events)
//! each run of the page's filters that is new or changed, as its rendered table
//! row (`console.js` puts it in place). It reads run history once a second, as
//! the page would on Refresh; a stream ends after a few minutes (the browser
//! reconnects, and the session is checked again).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::stream;
use tengine_control::principals::ReadScope;
use tengine_projector::history::{self, runs::RunFilter};
use uuid::Uuid;

use super::{
    ConsoleError,
    auth::Session,
    layout, projects,
    runs::{Filters, row, tail_filter},
};
use crate::AppState;

/// How often run history is read.
const EVERY: Duration = Duration::from_secs(1);
/// Reads per stream before it ends (about five minutes).
const READS: u32 = 300;
/// How far back the tail starts: runs still moving when the page loaded change in place.
const LOOK_BACK: chrono::Duration = chrono::Duration::minutes(1);

struct Tail {
    st: Arc<AppState>,
    project_id: Uuid,
    filter: RunFilter,
    root: String,
    /// What each run looked like when last sent: (status, attempts).
    sent: HashMap<Uuid, (String, i32)>,
    reads: u32,
    pending: Vec<Event>,
}

impl Tail {
    /// The next event: what is pending, else what changed since the last read.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop() {
                return Some((Ok(event), self));
            }
            if self.reads >= READS {
                return None;
            }
            if self.reads > 0 {
                tokio::time::sleep(EVERY).await;
            }
            self.reads = self.reads.saturating_add(1);
            let runs = match history::runs::list(&self.st.pool, self.project_id, &ReadScope::everything(), &self.filter)
                .await
            {
                Ok(runs) => runs,
                Err(err) => {
                    tracing::warn!(error = %err, "console live tail: reading runs");
                    continue;
                }
            };
            // Newest first from history; sent oldest first, so each lands on top in order.
            for run in runs.iter() {
                let seen = (run.status.clone(), run.attempts);
                if self.sent.get(&run.run_id) == Some(&seen) {
                    continue;
                }
                self.sent.insert(run.run_id, seen);
                let html = row(&self.root, run).into_string();
                self.pending
                    .push(Event::default().event("run").id(run.run_id.to_string()).data(html));
            }
        }
    }
}

/// `GET /console/projects/{id}/runs.stream?<the page's filters>`.
pub async fn tail(
    session: Session,
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Query(filters): Query<Filters>,
) -> Result<Response, ConsoleError> {
    projects::find(&st, project_id).await?;
    let mut filter = tail_filter(&filters)?;
    let since = chrono::Utc::now().checked_sub_signed(LOOK_BACK);
    filter.from = filter.from.max(since);
    let tail = Tail {
        st,
        project_id,
        filter,
        root: format!("{}/projects/{project_id}/runs", session.base),
        sent: HashMap::new(),
        reads: 0,
        pending: Vec::new(),
    };
    let events = stream::unfold(tail, Tail::next);
    let mut response = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    layout::secure_headers(response.headers_mut());
    Ok(response)
}
