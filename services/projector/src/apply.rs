//! Applying a batch of events to run history: the fresh events grouped by kind,
//! one function (and one statement or a few) per kind, usage counted once per run.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, Transaction};
use tengine_core::{
    envelope::{ApprovalDecision, RunEvent, RunOutcome},
    storable,
};
use uuid::Uuid;

use crate::{STATUS_RANK, history::usage, retention};

/// An attempt number as its column type.
fn attempt_no(a: u32) -> i32 {
    i32::try_from(a).unwrap_or(i32::MAX)
}

/// Binds $1–$26 of an outcome statement (a macro: `query` and `query_as` are
/// different types with the same `bind`).
macro_rules! bind_finished {
    ($query:expr, $rows:expr) => {{
        let rows = &$rows;
        $query
            .bind(&rows.run)
            .bind(&rows.project)
            .bind(&rows.integration)
            .bind(&rows.key)
            .bind(&rows.tool)
            .bind(&rows.status)
            .bind(&rows.error_class)
            .bind(&rows.error)
            .bind(&rows.http_status)
            .bind(&rows.latency)
            .bind(&rows.attempts)
            .bind(&rows.accepted)
            .bind(&rows.finished)
            .bind(&rows.member)
            .bind(&rows.request_body)
            .bind(&rows.response_body)
            .bind(&rows.truncated)
            .bind(&rows.day)
            .bind(&rows.response_size)
            .bind(&rows.response_truncated)
            .bind(&rows.arguments)
            .bind(&rows.arguments_altered)
            .bind(&rows.started)
            .bind(&rows.trace)
            .bind(&rows.idempotency_key)
            .bind(&rows.redrive_of)
    }};
}

/// The fresh events of a batch, grouped by kind for one statement per kind
/// (statements per event were the projector's cost). Within a kind each row is
/// written once (one statement cannot touch a row twice); the merge rules are the
/// order-independent ones of the event-by-event statements they replaced.
#[derive(Default)]
pub(crate) struct Grouped<'a> {
    accepted: BTreeMap<Uuid, &'a RunEvent>,
    /// (run, attempt) → the AttemptStarted event.
    started: BTreeMap<(Uuid, u32), (DateTime<Utc>, NaiveDate)>,
    /// run → (earliest start, highest attempt) for the run row.
    running: BTreeMap<Uuid, (DateTime<Utc>, u32)>,
    /// Retried attempts' own events, and the last attempt carried by `Finished`.
    attempt_finished: BTreeMap<(Uuid, u32), std::borrow::Cow<'a, RunEvent>>,
    finished: BTreeMap<Uuid, &'a RunOutcome>,
    /// Rare kinds, applied one by one.
    others: Vec<&'a RunEvent>,
}

impl<'a> Grouped<'a> {
    pub(crate) fn add(&mut self, event: &'a RunEvent) {
        match event {
            RunEvent::Accepted { run_id, .. } => {
                self.accepted.entry(*run_id).or_insert(event);
            }
            RunEvent::AttemptStarted {
                run_id,
                attempt,
                started_at,
                ..
            } => {
                self.started
                    .entry((*run_id, *attempt))
                    .or_insert((*started_at, retention::uuid_day(*run_id)));
                let run = self.running.entry(*run_id).or_insert((*started_at, *attempt));
                run.0 = run.0.min(*started_at);
                run.1 = run.1.max(*attempt);
            }
            RunEvent::AttemptFinished { run_id, attempt, .. } => {
                self.attempt_finished
                    .insert((*run_id, *attempt), std::borrow::Cow::Borrowed(event));
            }
            RunEvent::Finished(outcome) => {
                if let Some(last) = &outcome.last_attempt {
                    let event = (**last).clone().into_event(outcome.run_id, outcome.caller.project_id);
                    self.attempt_finished
                        .insert((outcome.run_id, last.attempt), std::borrow::Cow::Owned(event));
                }
                self.finished.insert(outcome.run_id, outcome);
            }
            RunEvent::UpstreamProgress { .. } => {}
            RunEvent::Rejected { .. }
            | RunEvent::ClientRetried { .. }
            | RunEvent::CancelRequested { .. }
            | RunEvent::AwaitingApproval { .. }
            | RunEvent::ApprovalDecided { .. } => self.others.push(event),
        }
    }

    /// One statement (or a few) per event kind, in an order that keeps the merge
    /// rules: rows first created by `Accepted`, the rare kinds before `Finished`
    /// (which always wins). Returns the usage of the runs it counted already (see
    /// [`Grouped::apply_finished`]); [`count_usage`] counts the others.
    pub(crate) async fn apply(
        self,
        tx: &mut Transaction<'_, Postgres>,
        close_after_secs: u64,
    ) -> Result<Vec<Counted>, sqlx::Error> {
        self.apply_accepted(tx).await?;
        self.apply_attempts_started(tx).await?;
        self.apply_attempts_finished(tx).await?;
        for event in &self.others {
            apply_event(tx, event).await?;
        }
        let counted = self.apply_finished(tx, close_after_secs).await?;
        self.close_lost_attempts(tx).await?;
        Ok(counted)
    }

    /// A finished run's attempts that never reported an end: their worker stopped
    /// during them and the run was delivered again. Their end is recorded with the
    /// run's, so history shows no attempt running forever. Only runs delivered more
    /// than once can have one; a run's attempt events precede its outcome in the log.
    async fn close_lost_attempts(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        let (mut run, mut day, mut at) = (Vec::new(), Vec::new(), Vec::new());
        for outcome in self.finished.values().filter(|o| o.attempts > 1) {
            run.push(outcome.run_id);
            day.push(retention::uuid_day(outcome.run_id));
            at.push(outcome.finished_at);
        }
        if run.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE run_attempts SET finished_at = x.f, error = $4 \
             FROM UNNEST($1::uuid[], $2::date[], $3::timestamptz[]) AS x(r, d, f) \
             WHERE run_attempts.run_id = x.r AND run_attempts.day = x.d AND run_attempts.finished_at IS NULL",
        )
        .bind(&run)
        .bind(&day)
        .bind(&at)
        .bind(LOST_ATTEMPT)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// `Accepted`: the run's row, created or given its earliest acceptance time.
    async fn apply_accepted(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.accepted.is_empty() {
            return Ok(());
        }
        let mut rows = AcceptedRows::default();
        for event in self.accepted.values() {
            if let RunEvent::Accepted {
                run_id,
                caller,
                tool_name,
                accepted_at,
                origin,
            } = event
            {
                let origin = origin.clone().unwrap_or_default();
                rows.trace.push(origin.trace_id.as_deref().map(storable::owned));
                rows.idempotency_key
                    .push(origin.idempotency_key.as_deref().map(storable::owned));
                rows.redrive_of.push(origin.redrive_of);
                rows.run.push(*run_id);
                rows.project.push(caller.project_id);
                rows.integration.push(caller.integration_id);
                rows.key.push(caller.api_key_id);
                rows.tool.push(storable::owned(tool_name));
                rows.at.push(*accepted_at);
                rows.member.push(caller.member.as_ref().map(|m| storable::owned(&m.id)));
                rows.day.push(retention::uuid_day(*run_id));
            }
        }
        sqlx::query(
            "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, accepted_at, \
             member_id, day, trace_id, idempotency_key, redrive_of) \
             SELECT r, p, i, k, t, 'accepted', a, m, d, tr, ik, rd FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], \
             $4::uuid[], $5::text[], $6::timestamptz[], $7::text[], $8::date[], $9::text[], $10::text[], \
             $11::uuid[]) AS x(r, p, i, k, t, a, m, d, tr, ik, rd) \
             ON CONFLICT (run_id, day) DO UPDATE SET accepted_at = LEAST(runs.accepted_at, EXCLUDED.accepted_at), \
             trace_id = COALESCE(runs.trace_id, EXCLUDED.trace_id), \
             idempotency_key = COALESCE(runs.idempotency_key, EXCLUDED.idempotency_key), \
             redrive_of = COALESCE(runs.redrive_of, EXCLUDED.redrive_of), updated_at = now()",
        )
        .bind(&rows.run)
        .bind(&rows.project)
        .bind(&rows.integration)
        .bind(&rows.key)
        .bind(&rows.tool)
        .bind(&rows.at)
        .bind(&rows.member)
        .bind(&rows.day)
        .bind(&rows.trace)
        .bind(&rows.idempotency_key)
        .bind(&rows.redrive_of)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// `AttemptStarted`: the attempt rows, and the run `running` (unless already terminal).
    async fn apply_attempts_started(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.started.is_empty() {
            return Ok(());
        }
        let (mut run, mut attempt, mut at, mut day) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((r, a), (s, d)) in &self.started {
            run.push(*r);
            attempt.push(attempt_no(*a));
            at.push(*s);
            day.push(*d);
        }
        sqlx::query(
            "INSERT INTO run_attempts (run_id, attempt, started_at, day) \
             SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::date[]) ON CONFLICT DO NOTHING",
        )
        .bind(&run)
        .bind(&attempt)
        .bind(&at)
        .bind(&day)
        .execute(&mut **tx)
        .await?;
        let (mut run, mut at, mut attempt, mut day) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, (s, a)) in &self.running {
            run.push(*r);
            at.push(*s);
            attempt.push(attempt_no(*a));
            day.push(retention::uuid_day(*r));
        }
        sqlx::query(&format!(
            "UPDATE runs SET status = CASE WHEN {STATUS_RANK} < 2 THEN 'running' ELSE runs.status END, \
             started_at = LEAST(runs.started_at, x.s), attempts = GREATEST(runs.attempts, x.a), \
             updated_at = now() \
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int4[], $4::date[]) AS x(r, s, a, d) \
             WHERE runs.run_id = x.r AND runs.day = x.d"
        ))
        .bind(&run)
        .bind(&at)
        .bind(&attempt)
        .bind(&day)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// `AttemptFinished`: each attempt's answer.
    async fn apply_attempts_finished(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.attempt_finished.is_empty() {
            return Ok(());
        }
        let mut rows = AttemptRows::default();
        for event in self.attempt_finished.values() {
            if let RunEvent::AttemptFinished {
                run_id,
                attempt,
                started_at,
                finished_at,
                http_status,
                error_class,
                error,
                bytes_out,
                bytes_in,
                ..
            } = &**event
            {
                rows.run.push(*run_id);
                rows.attempt.push(attempt_no(*attempt));
                rows.started.push(*started_at);
                rows.finished.push(*finished_at);
                rows.http_status.push(http_status.map(i32::from));
                rows.error_class.push(error_class.map(|c| c.as_str().to_string()));
                rows.error.push(error.as_deref().map(storable::owned));
                rows.bytes_out.push(i64::try_from(*bytes_out).unwrap_or(i64::MAX));
                rows.bytes_in.push(i64::try_from(*bytes_in).unwrap_or(i64::MAX));
                rows.day.push(retention::uuid_day(*run_id));
            }
        }
        sqlx::query(
            "INSERT INTO run_attempts (run_id, attempt, started_at, finished_at, http_status, error_class, error, \
             bytes_out, bytes_in, day) \
             SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::timestamptz[], $5::int4[], \
             $6::text[], $7::text[], $8::int8[], $9::int8[], $10::date[]) \
             ON CONFLICT (run_id, day, attempt) DO UPDATE SET finished_at = EXCLUDED.finished_at, \
             http_status = EXCLUDED.http_status, error_class = EXCLUDED.error_class, error = EXCLUDED.error, \
             bytes_out = EXCLUDED.bytes_out, bytes_in = EXCLUDED.bytes_in",
        )
        .bind(&rows.run)
        .bind(&rows.attempt)
        .bind(&rows.started)
        .bind(&rows.finished)
        .bind(&rows.http_status)
        .bind(&rows.error_class)
        .bind(&rows.error)
        .bind(&rows.bytes_out)
        .bind(&rows.bytes_in)
        .bind(&rows.day)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// `Finished`: the run's outcome (it always wins), and kept results of client-keyed calls.
    ///
    /// Most outcomes are of quick calls, whose row does not exist yet: they are
    /// inserted already counted, their usage taken from the outcome itself, so the
    /// row is written once (updating it again to count it was the projector's
    /// costliest statement). An outcome whose row exists (a long call's, or one
    /// seen before) is merged into it, and [`count_usage`] counts it if no earlier
    /// outcome did. Returns what was counted here.
    async fn apply_finished(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        close_after_secs: u64,
    ) -> Result<Vec<Counted>, sqlx::Error> {
        if self.finished.is_empty() {
            return Ok(Vec::new());
        }
        let rows = FinishedRows::of(self.finished.values().copied());
        let insert = format!(
            "INSERT INTO runs ({FINISHED_COLUMNS}, usage_counted) SELECT * FROM UNNEST({FINISHED_ARRAYS}, $27::bool[]) \
             ON CONFLICT DO NOTHING \
             RETURNING run_id, usage_counted, project_id, integration_id, COALESCE(member_id, '') AS member_id, \
             tool_name, {}, status, COALESCE(latency_ms, 0) AS latency_ms, 0::int8 AS bytes_in, 0::int8 AS bytes_out",
            usage_hour("$28")
        );
        let inserted: Vec<Counted> = bind_finished!(sqlx::query_as(&insert), rows)
            .bind(&rows.counted_from_outcome)
            .bind(close_after_secs as f64)
            .fetch_all(&mut **tx)
            .await?;
        let new: std::collections::HashSet<Uuid> = inserted.iter().map(|c| c.run_id).collect();
        let mut counted = Vec::with_capacity(inserted.len());
        for mut run in inserted.into_iter().filter(|c| c.usage_counted) {
            if let Some(last) = self.finished.get(&run.run_id).and_then(|o| o.last_attempt.as_ref()) {
                run.bytes_in = i64::try_from(last.bytes_in).unwrap_or(i64::MAX);
                run.bytes_out = i64::try_from(last.bytes_out).unwrap_or(i64::MAX);
            }
            counted.push(run);
        }
        if new.len() < self.finished.len() {
            let rows = FinishedRows::of(self.finished.values().copied().filter(|o| !new.contains(&o.run_id)));
            let merge = format!(
                "INSERT INTO runs ({FINISHED_COLUMNS}) SELECT * FROM UNNEST({FINISHED_ARRAYS}) \
             ON CONFLICT (run_id, day) DO UPDATE SET status = EXCLUDED.status, error_class = EXCLUDED.error_class, \
             request_body = EXCLUDED.request_body, response_body = EXCLUDED.response_body, \
             arguments = EXCLUDED.arguments, arguments_altered = EXCLUDED.arguments_altered, \
             bodies_truncated = EXCLUDED.bodies_truncated, response_size = EXCLUDED.response_size, \
             response_truncated = EXCLUDED.response_truncated, \
             error = EXCLUDED.error, http_status = EXCLUDED.http_status, latency_ms = EXCLUDED.latency_ms, \
             attempts = GREATEST(runs.attempts, EXCLUDED.attempts), finished_at = EXCLUDED.finished_at, \
             started_at = LEAST(runs.started_at, EXCLUDED.started_at), \
             accepted_at = LEAST(runs.accepted_at, EXCLUDED.accepted_at), \
             trace_id = COALESCE(runs.trace_id, EXCLUDED.trace_id), \
             idempotency_key = COALESCE(runs.idempotency_key, EXCLUDED.idempotency_key), \
             redrive_of = COALESCE(runs.redrive_of, EXCLUDED.redrive_of), updated_at = now()"
            );
            bind_finished!(sqlx::query(&merge), rows).execute(&mut **tx).await?;
        }
        keep_results(tx, self.finished.values().copied()).await?;
        Ok(counted)
    }
}

/// The columns an outcome writes, and the parameters' types for `UNNEST` ($1–$26).
const FINISHED_COLUMNS: &str = "run_id, project_id, integration_id, api_key_id, tool_name, status, error_class, \
     error, http_status, latency_ms, attempts, accepted_at, finished_at, member_id, request_body, response_body, \
     bodies_truncated, day, response_size, response_truncated, arguments, arguments_altered, started_at, trace_id, \
     idempotency_key, redrive_of";
const FINISHED_ARRAYS: &str = "$1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::int4[], $10::int8[], $11::int4[], $12::timestamptz[], $13::timestamptz[], \
     $14::text[], $15::text[], $16::text[], $17::bool[], $18::date[], $19::int8[], $20::bool[], \
     $21::text[], $22::bool[], $23::timestamptz[], $24::text[], $25::text[], $26::uuid[]";

/// The error of an attempt whose end was never reported (its end is the run's).
pub(crate) const LOST_ATTEMPT: &str = "no answer was recorded: the worker stopped during this attempt and the run was \
     delivered again (the API may have received this request)";

/// Keeps the outcomes of runs called with a client idempotency key (until their
/// `keep_result_until`), so a retry still gets them after the log rolled past.
async fn keep_results<'a>(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: impl Iterator<Item = &'a RunOutcome>,
) -> Result<(), sqlx::Error> {
    let (mut run, mut project, mut until, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for outcome in outcomes {
        let Some(keep_until) = outcome.keep_result_until else {
            continue;
        };
        match tengine_core::envelope::Envelope::new(outcome.run_id, outcome.clone()).encode() {
            Ok(encoded) => {
                run.push(outcome.run_id);
                project.push(outcome.caller.project_id);
                until.push(keep_until);
                bytes.push(encoded);
            }
            Err(err) => tracing::error!(run_id = %outcome.run_id, error = %err, "encoding a kept outcome"),
        }
    }
    if run.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO run_results (run_id, project_id, expires_at, outcome) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bytea[]) \
         ON CONFLICT (run_id) DO UPDATE SET outcome = EXCLUDED.outcome, expires_at = EXCLUDED.expires_at",
    )
    .bind(&run)
    .bind(&project)
    .bind(&until)
    .bind(&bytes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Column arrays for `UNNEST`.
#[derive(Default)]
struct AcceptedRows {
    run: Vec<Uuid>,
    project: Vec<Uuid>,
    integration: Vec<Uuid>,
    key: Vec<Uuid>,
    tool: Vec<String>,
    at: Vec<DateTime<Utc>>,
    member: Vec<Option<String>>,
    day: Vec<NaiveDate>,
    trace: Vec<Option<String>>,
    idempotency_key: Vec<Option<String>>,
    redrive_of: Vec<Option<Uuid>>,
}

#[derive(Default)]
struct AttemptRows {
    run: Vec<Uuid>,
    attempt: Vec<i32>,
    started: Vec<DateTime<Utc>>,
    finished: Vec<DateTime<Utc>>,
    http_status: Vec<Option<i32>>,
    error_class: Vec<Option<String>>,
    error: Vec<Option<String>>,
    bytes_out: Vec<i64>,
    bytes_in: Vec<i64>,
    day: Vec<NaiveDate>,
}

#[derive(Default)]
struct FinishedRows {
    run: Vec<Uuid>,
    project: Vec<Uuid>,
    integration: Vec<Uuid>,
    key: Vec<Uuid>,
    tool: Vec<String>,
    status: Vec<String>,
    error_class: Vec<Option<String>>,
    error: Vec<Option<String>>,
    http_status: Vec<Option<i32>>,
    latency: Vec<i64>,
    attempts: Vec<i32>,
    accepted: Vec<DateTime<Utc>>,
    started: Vec<Option<DateTime<Utc>>>,
    finished: Vec<DateTime<Utc>>,
    member: Vec<Option<String>>,
    request_body: Vec<Option<String>>,
    response_body: Vec<Option<String>>,
    truncated: Vec<Option<bool>>,
    day: Vec<NaiveDate>,
    response_size: Vec<Option<i64>>,
    response_truncated: Vec<Option<bool>>,
    arguments: Vec<Option<String>>,
    arguments_altered: Vec<Option<bool>>,
    trace: Vec<Option<String>>,
    idempotency_key: Vec<Option<String>>,
    redrive_of: Vec<Option<Uuid>>,
    counted_from_outcome: Vec<bool>,
}

impl FinishedRows {
    fn of<'a>(outcomes: impl Iterator<Item = &'a RunOutcome>) -> Self {
        let mut rows = FinishedRows::default();
        for outcome in outcomes {
            rows.run.push(outcome.run_id);
            rows.project.push(outcome.caller.project_id);
            rows.integration.push(outcome.caller.integration_id);
            rows.key.push(outcome.caller.api_key_id);
            rows.tool.push(storable::owned(&outcome.tool_name));
            rows.status.push(outcome.status.as_str().to_string());
            rows.error_class
                .push(outcome.error_class.map(|c| c.as_str().to_string()));
            rows.error.push(outcome.error.as_deref().map(storable::owned));
            rows.http_status
                .push(outcome.response.as_ref().map(|r| i32::from(r.http_status)));
            rows.latency.push(i64::try_from(outcome.latency_ms).unwrap_or(i64::MAX));
            rows.attempts.push(attempt_no(outcome.attempts));
            rows.accepted.push(outcome.accepted_at);
            rows.started.push(outcome.last_attempt.as_ref().map(|a| a.started_at));
            rows.finished.push(outcome.finished_at);
            rows.member
                .push(outcome.caller.member.as_ref().map(|m| storable::owned(&m.id)));
            let bodies = outcome.bodies.as_ref();
            rows.request_body
                .push(bodies.and_then(|b| b.request.as_deref()).map(storable::owned));
            rows.response_body
                .push(bodies.and_then(|b| b.response.as_deref()).map(storable::owned));
            rows.truncated.push(outcome.bodies.as_ref().map(|b| b.truncated));
            rows.arguments
                .push(bodies.and_then(|b| b.arguments.as_deref()).map(storable::owned));
            rows.arguments_altered.push(bodies.map(|b| b.arguments_altered));
            rows.response_size.push(
                outcome
                    .response
                    .as_ref()
                    .and_then(|r| r.size)
                    .map(|size| i64::try_from(size).unwrap_or(i64::MAX)),
            );
            rows.response_truncated
                .push(outcome.response.as_ref().map(|r| r.truncated));
            rows.day.push(retention::uuid_day(outcome.run_id));
            // Also here: a quick call's `Accepted` event is not stored (see the ingress's dispatch).
            let origin = outcome.origin.as_deref().cloned().unwrap_or_default();
            rows.trace.push(origin.trace_id.as_deref().map(storable::owned));
            rows.idempotency_key
                .push(origin.idempotency_key.as_deref().map(storable::owned));
            rows.redrive_of.push(origin.redrive_of);
            rows.counted_from_outcome.push(counted_from_outcome(outcome));
        }
        rows
    }
}

/// Whether the outcome alone gives the run's usage (its bytes are its one
/// attempt's, which it carries): then a new row is counted as it is inserted.
/// A retried run's bytes are summed over its attempts' rows by [`count_usage`].
fn counted_from_outcome(outcome: &RunOutcome) -> bool {
    outcome.status.is_terminal()
        && match (outcome.attempts, &outcome.last_attempt) {
            (0, None) => true,
            (1, Some(last)) => last.attempt == 1,
            _ => false,
        }
}

/// Upper bounds (ms) of the usage latency buckets; the last bucket is "more".
pub const LATENCY_BUCKETS_MS: [i64; 9] = [10, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

type UsageKey = (Uuid, Uuid, String, String, chrono::DateTime<chrono::Utc>);

#[derive(Default)]
struct UsageDelta {
    calls: i64,
    successes: i64,
    failures: i64,
    latency_ms_sum: i64,
    buckets: [i64; 10],
    /// `latency_histogram` (`history::usage::latency_bucket`).
    histogram: Vec<i64>,
    bytes_in: i64,
    bytes_out: i64,
}

/// A run counted in usage: the row its counting statement returns.
#[derive(sqlx::FromRow)]
pub(crate) struct Counted {
    pub(crate) run_id: Uuid,
    /// Whether the row is counted (the statement of new outcomes returns every row).
    usage_counted: bool,
    project_id: Uuid,
    integration_id: Uuid,
    member_id: String,
    tool_name: String,
    hour: DateTime<Utc>,
    status: String,
    latency_ms: i64,
    bytes_in: i64,
    bytes_out: i64,
}

/// The hour a run counts in, as SQL over the run's row (see [`count_usage`]);
/// `close_after` is the statement's parameter holding `close_after_secs`.
fn usage_hour(close_after: &str) -> String {
    format!(
        "CASE WHEN COALESCE(finished_at, accepted_at) >= date_trunc('hour', accepted_at) + interval '1 hour' \
         + make_interval(secs => {close_after}) THEN date_trunc('hour', finished_at) \
         ELSE date_trunc('hour', accepted_at) END AS hour"
    )
}

/// Counts each run once, when it first becomes terminal: the flag and the usage
/// change in the same transaction. `counted` holds the runs the batch's outcomes
/// already counted as their rows were inserted; `runs` are the other settled runs,
/// counted here unless counted before. The batch is aggregated per hour and key
/// first, so each usage row is written once per batch.
///
/// A run counts in the hour it was accepted, unless it finished more than
/// `close_after_secs` after that hour ended: that hour may already be closed and
/// exported, so the run counts in the hour it finished instead. The rule depends
/// only on the run's own times, so a rebuild yields the same hours.
pub(crate) async fn count_usage(
    tx: &mut Transaction<'_, Postgres>,
    runs: &[Uuid],
    close_after_secs: u64,
    mut counted: Vec<Counted>,
) -> Result<(), sqlx::Error> {
    if !runs.is_empty() {
        let more: Vec<Counted> = sqlx::query_as(&format!(
            "UPDATE runs SET usage_counted = true WHERE run_id = ANY($1) AND day = ANY($3) AND NOT usage_counted \
             AND status IN ('succeeded', 'failed', 'rejected', 'cancelled', 'revoked') \
             RETURNING run_id, usage_counted, project_id, integration_id, COALESCE(member_id, '') AS member_id, \
             tool_name, {}, status, COALESCE(latency_ms, 0) AS latency_ms, \
             (SELECT COALESCE(sum(bytes_in), 0)::bigint FROM run_attempts a WHERE a.run_id = runs.run_id \
              AND a.day = runs.day) AS bytes_in, \
             (SELECT COALESCE(sum(bytes_out), 0)::bigint FROM run_attempts a WHERE a.run_id = runs.run_id \
              AND a.day = runs.day) AS bytes_out",
            usage_hour("$2")
        ))
        .bind(runs)
        .bind(close_after_secs as f64)
        // The runs' days, so only their partitions are searched.
        .bind(runs.iter().map(|r| retention::uuid_day(*r)).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        counted.extend(more);
    }
    if counted.is_empty() {
        return Ok(());
    }
    let mut deltas: std::collections::BTreeMap<UsageKey, UsageDelta> = std::collections::BTreeMap::new();
    for run in counted {
        let (status, latency, bytes_in, bytes_out) = (run.status, run.latency_ms, run.bytes_in, run.bytes_out);
        let key = (
            run.project_id,
            run.integration_id,
            run.member_id,
            run.tool_name,
            run.hour,
        );
        let d = deltas.entry(key).or_default();
        d.calls += 1;
        if status == "succeeded" {
            d.successes += 1;
        } else {
            d.failures += 1;
        }
        d.latency_ms_sum += latency;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| latency <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        d.buckets[bucket] += 1;
        if d.histogram.is_empty() {
            d.histogram = vec![0; usage::LATENCY_HISTOGRAM_BUCKETS];
        }
        if let Some(n) = d.histogram.get_mut(usage::latency_bucket(latency)) {
            *n += 1;
        }
        d.bytes_in += bytes_in;
        d.bytes_out += bytes_out;
    }
    for ((project, integration, member, tool, hour), d) in deltas {
        sqlx::query(
            "INSERT INTO usage_hourly (project_id, integration_id, member_id, tool_name, hour, calls, successes, \
             failures, latency_ms_sum, latency_buckets, bytes_in, bytes_out, latency_histogram) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (project_id, integration_id, member_id, tool_name, hour) DO UPDATE SET \
             calls = usage_hourly.calls + EXCLUDED.calls, successes = usage_hourly.successes + EXCLUDED.successes, \
             failures = usage_hourly.failures + EXCLUDED.failures, \
             latency_ms_sum = usage_hourly.latency_ms_sum + EXCLUDED.latency_ms_sum, \
             latency_buckets = (SELECT array_agg(a + b ORDER BY i) FROM unnest(usage_hourly.latency_buckets, \
                 EXCLUDED.latency_buckets) WITH ORDINALITY AS t(a, b, i)), \
             latency_histogram = (SELECT array_agg(COALESCE(a, 0) + COALESCE(b, 0) ORDER BY i) \
                 FROM unnest(usage_hourly.latency_histogram, EXCLUDED.latency_histogram) WITH ORDINALITY AS t(a, b, i)), \
             bytes_in = usage_hourly.bytes_in + EXCLUDED.bytes_in, bytes_out = usage_hourly.bytes_out + EXCLUDED.bytes_out",
        )
        .bind(project)
        .bind(integration)
        .bind(member)
        .bind(tool)
        .bind(hour)
        .bind(d.calls)
        .bind(d.successes)
        .bind(d.failures)
        .bind(d.latency_ms_sum)
        .bind(d.buckets.to_vec())
        .bind(d.bytes_in)
        .bind(d.bytes_out)
        .bind(&d.histogram)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn apply_event(tx: &mut Transaction<'_, Postgres>, event: &RunEvent) -> Result<(), sqlx::Error> {
    // The partition key of the run's rows; the last parameter of each statement.
    let day = retention::uuid_day(event.run_id());
    match event {
        RunEvent::Rejected {
            run_id,
            caller,
            tool_name,
            accepted_at,
            error_class,
            error,
        } => {
            sqlx::query(&format!(
                "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, error_class, error, \
                 latency_ms, accepted_at, finished_at, member_id, day) \
                 VALUES ($1, $2, $3, $4, $5, 'rejected', $6, $7, 0, $8, $8, $9, $10) \
                 ON CONFLICT (run_id, day) DO UPDATE SET status = 'rejected', error_class = EXCLUDED.error_class, \
                 error = EXCLUDED.error, finished_at = EXCLUDED.finished_at, updated_at = now() \
                 WHERE {STATUS_RANK} < 3"
            ))
            .bind(run_id)
            .bind(caller.project_id)
            .bind(caller.integration_id)
            .bind(caller.api_key_id)
            .bind(storable::text(tool_name))
            .bind(error_class.as_str())
            .bind(storable::text(error))
            .bind(accepted_at)
            .bind(caller.member.as_ref().map(|m| storable::text(&m.id)))
            .bind(day)
            .execute(&mut **tx)
            .await?;
        }
        RunEvent::CancelRequested { run_id, .. } => {
            // Only a run still waiting becomes `cancelled`; the worker's Finished
            // (cancelled, or the real outcome if the API was called) settles it.
            sqlx::query(&format!(
                "UPDATE runs SET status = 'cancelled', updated_at = now() WHERE run_id = $1 AND day = $2 AND {STATUS_RANK} < 3"
            ))
            .bind(run_id)
            .bind(day)
            .execute(&mut **tx)
            .await?;
        }
        RunEvent::AwaitingApproval {
            run_id,
            caller,
            tool_name,
            accepted_at,
            expires_at,
        } => {
            // A parked run: its row, waiting (rank 1, like `accepted`).
            sqlx::query(&format!(
                "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, accepted_at, \
                 member_id, approval, day) \
                 VALUES ($1, $2, $3, $4, $5, 'awaiting_approval', $6, $7, $8, $9) \
                 ON CONFLICT (run_id, day) DO UPDATE SET approval = COALESCE(runs.approval, EXCLUDED.approval), \
                 status = CASE WHEN {STATUS_RANK} < 2 THEN 'awaiting_approval' ELSE runs.status END, updated_at = now()"
            ))
            .bind(run_id)
            .bind(caller.project_id)
            .bind(caller.integration_id)
            .bind(caller.api_key_id)
            .bind(storable::text(tool_name))
            .bind(accepted_at)
            .bind(caller.member.as_ref().map(|m| storable::text(&m.id)))
            .bind(sqlx::types::Json(
                serde_json::json!({"state": "pending", "expires_at": expires_at}),
            ))
            .bind(day)
            .execute(&mut **tx)
            .await?;
        }
        RunEvent::ApprovalDecided {
            run_id,
            decision,
            by,
            reason,
            decided_at,
            ..
        } => {
            // Who decided what and when. An approved run is queued (`accepted`) until a
            // worker starts it; a refused one's `Finished` event ends it.
            let record = serde_json::json!({"state": decision.as_str(), "by": by.as_deref().map(storable::text),
                "reason": reason.as_deref().map(storable::text), "decided_at": decided_at});
            sqlx::query(
                "UPDATE runs SET approval = COALESCE(runs.approval, '{}'::jsonb) || $3, \
                 status = CASE WHEN $4 AND runs.status = 'awaiting_approval' THEN 'accepted' ELSE runs.status END, \
                 updated_at = now() WHERE run_id = $1 AND day = $2",
            )
            .bind(run_id)
            .bind(day)
            .bind(sqlx::types::Json(record))
            .bind(*decision == ApprovalDecision::Approved)
            .execute(&mut **tx)
            .await?;
        }
        RunEvent::ClientRetried {
            run_id,
            caller,
            tool_name,
            retried_at,
        } => {
            // The row may not exist yet: held as accepted (by the retry's time, which
            // the run's own events move earlier) until they arrive.
            sqlx::query(
                "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, accepted_at, \
                 member_id, client_retries, day) VALUES ($1, $2, $3, $4, $5, 'accepted', $6, $7, 1, $8) \
                 ON CONFLICT (run_id, day) DO UPDATE SET client_retries = runs.client_retries + 1, updated_at = now()",
            )
            .bind(run_id)
            .bind(caller.project_id)
            .bind(caller.integration_id)
            .bind(caller.api_key_id)
            .bind(storable::owned(tool_name))
            .bind(retried_at)
            .bind(caller.member.as_ref().map(|m| storable::owned(&m.id)))
            .bind(day)
            .execute(&mut **tx)
            .await?;
        }
        // The frequent kinds go through `Grouped` (one statement per kind and batch).
        RunEvent::Accepted { .. }
        | RunEvent::AttemptStarted { .. }
        | RunEvent::AttemptFinished { .. }
        | RunEvent::Finished(_)
        | RunEvent::UpstreamProgress { .. } => {}
    }
    Ok(())
}
