//! Poison events: events the projector cannot apply because of what they carry.
//!
//! A batch that fails with an error retrying cannot fix ([`permanent`]: a
//! PostgreSQL data exception, SQLSTATE class 22; an integrity constraint
//! violation, 23; a program limit, 54; a value the driver cannot encode) is
//! applied again event by event, each in its own transaction with its processed
//! mark and the checkpoint. An event that still fails, and a message that is no
//! event at all, is recorded in `projector_dead_letters` (its raw bytes, the
//! error, its stream sequence) in a transaction that also marks it processed and
//! moves the checkpoint; then the projector goes on with the next events. Every
//! other error (connection lost, pool timeout, serialization failure, a server
//! shutting down) is retried until it succeeds, as before: those pass.
//!
//! A run with a dead letter shows `history_error` in the admin API; `/v1/health`
//! (`dead_letters`) and the `tengine_projector_dead_letters` gauge count them;
//! `tengine projector dead-letters` lists them and [`reapply`]s one once an
//! operator fixed the cause.

use std::{collections::BTreeSet, future::Future, time::Duration};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tengine_core::{
    Topology,
    envelope::{EventEnvelope, RunEvent},
    storable,
};
use uuid::Uuid;

use crate::{apply_batch, apply_events, checkpoint, retention};

/// A message of the event log as it was stored.
pub struct Raw<'a> {
    pub seq: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
}

/// What to do when the database fails for a reason that may pass.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnTransient {
    /// The projector: wait and retry, for as long as it takes.
    RetryForever,
    /// A rebuild: fail (its operator sees the error and runs it again).
    Fail,
}

/// Whether retrying `err` cannot help: the data is what the database refuses.
pub fn permanent(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.get(..2), Some("22" | "23" | "54"))),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The error as an operator should read it (the server's own message for a
/// database error).
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
}

/// Runs `work` until it succeeds or fails permanently (with `RetryForever`), or
/// once (with `Fail`).
async fn settle<F, Fut>(on_transient: OnTransient, what: &str, work: F) -> Result<(), sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), sqlx::Error>>,
{
    work.retry(backoff())
        .when(|err| on_transient == OnTransient::RetryForever && !permanent(err))
        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "{what} failed; retrying"))
        .await
}

/// Applies `messages` to run history. Events the database refuses for their
/// data, and messages that cannot be decoded, are recorded as dead letters
/// instead; returns how many. Errs only on a transient failure with
/// [`OnTransient::Fail`].
pub async fn project(
    pool: &PgPool,
    consumer: &str,
    close_after_secs: u64,
    messages: &[Raw<'_>],
    on_transient: OnTransient,
) -> Result<usize, sqlx::Error> {
    let mut events = Vec::with_capacity(messages.len());
    // Index in `messages` of each decoded event.
    let mut origin = Vec::with_capacity(messages.len());
    let mut undecodable = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match EventEnvelope::decode(message.payload) {
            Ok(envelope) => {
                events.push((message.seq, envelope));
                origin.push(i);
            }
            Err(err) => undecodable.push((i, err.to_string())),
        }
    }
    let mut dead = 0;
    if !events.is_empty() {
        let batch = settle(on_transient, "projecting a batch", || {
            apply_batch(pool, consumer, close_after_secs, &events)
        })
        .await;
        match batch {
            Ok(()) => {}
            Err(err) if permanent(&err) => {
                tracing::warn!(error = %err, events = events.len(), "a batch has an event the database refuses; applying its events one by one");
                for (one, at) in events.iter().zip(&origin) {
                    let applied = settle(on_transient, "projecting an event", || {
                        apply_batch(pool, consumer, close_after_secs, std::slice::from_ref(one))
                    })
                    .await;
                    match applied {
                        Ok(()) => {}
                        Err(err) if permanent(&err) => {
                            let letter = Letter {
                                raw: &messages[*at],
                                event: Some(&one.1),
                                error: describe(&err),
                                sqlstate: sqlstate(&err),
                            };
                            record(pool, consumer, &letter, on_transient).await?;
                            dead += 1;
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
            Err(err) => return Err(err),
        }
    }
    for (at, error) in undecodable {
        let letter = Letter {
            raw: &messages[at],
            event: None,
            error,
            sqlstate: None,
        };
        record(pool, consumer, &letter, on_transient).await?;
        dead += 1;
    }
    Ok(dead)
}

struct Letter<'a> {
    raw: &'a Raw<'a>,
    event: Option<&'a EventEnvelope>,
    error: String,
    sqlstate: Option<String>,
}

/// The project an event belongs to.
fn project_of(event: &RunEvent) -> Option<Uuid> {
    match event {
        RunEvent::Accepted { caller, .. } | RunEvent::Rejected { caller, .. } => Some(caller.project_id),
        RunEvent::AttemptStarted { project_id, .. }
        | RunEvent::AttemptFinished { project_id, .. }
        | RunEvent::CancelRequested { project_id, .. }
        | RunEvent::ApprovalDecided { project_id, .. } => Some(*project_id),
        RunEvent::AwaitingApproval { caller, .. } | RunEvent::ClientRetried { caller, .. } => Some(caller.project_id),
        RunEvent::Finished(outcome) => Some(outcome.caller.project_id),
        RunEvent::UpstreamProgress { .. } => None,
    }
}

/// Records a dead letter, marks its event processed and moves the checkpoint
/// past it, in one transaction. Retried until it commits (with `RetryForever`):
/// everything it writes is storable by construction.
async fn record(
    pool: &PgPool,
    consumer: &str,
    letter: &Letter<'_>,
    on_transient: OnTransient,
) -> Result<(), sqlx::Error> {
    let (event_id, run_id, project_id) = match letter.event {
        Some(envelope) => (
            Some(envelope.id),
            Some(envelope.body.run_id()),
            project_of(&envelope.body),
        ),
        None => {
            let ids = Topology::event_subject_ids(letter.raw.subject);
            (None, ids.map(|(_, run)| run), ids.map(|(project, _)| project))
        }
    };
    tracing::error!(
        seq = letter.raw.seq,
        subject = %letter.raw.subject,
        ?run_id,
        error = %letter.error,
        "an event cannot be applied to run history; recorded as a dead letter (see `tengine projector dead-letters`)"
    );
    let write = || async {
        let mut tx = pool.begin().await?;
        if let Some(id) = event_id {
            let day = retention::uuid_day(id);
            retention::ensure_partitions(&mut tx, &BTreeSet::from([day])).await?;
            sqlx::query("INSERT INTO processed_events (event_id, day) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(day)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO projector_dead_letters (consumer, stream_seq, event_id, run_id, project_id, subject, \
             payload, error, sqlstate) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (consumer, stream_seq) DO NOTHING",
        )
        .bind(storable::text(consumer))
        .bind(i64::try_from(letter.raw.seq).unwrap_or(i64::MAX))
        .bind(event_id)
        .bind(run_id)
        .bind(project_id)
        .bind(storable::text(letter.raw.subject))
        .bind(letter.raw.payload)
        .bind(storable::text(&letter.error))
        .bind(letter.sqlstate.as_deref().map(storable::text))
        .execute(&mut *tx)
        .await?;
        checkpoint(&mut tx, consumer, letter.raw.seq).await?;
        tx.commit().await
    };
    write
        .retry(backoff())
        .when(|_| on_transient == OnTransient::RetryForever)
        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "recording a dead letter failed; retrying"))
        .await
}

/// A dead letter, as `tengine projector dead-letters` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub stream_seq: i64,
    pub event_id: Option<Uuid>,
    pub run_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub subject: String,
    pub error: String,
    pub sqlstate: Option<String>,
    pub created_at: DateTime<Utc>,
    pub reapplied_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, consumer, stream_seq, event_id, run_id, project_id, subject, error, sqlstate, created_at, reapplied_at";

/// Every dead letter, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM projector_dead_letters ORDER BY id"))
        .fetch_all(pool)
        .await
}

/// Applies dead letter `id` through the projector's own code (after its cause was
/// fixed) and marks it re-applied, in one transaction. Refused when it was
/// re-applied already, still cannot be decoded, or the database still refuses it.
pub async fn reapply(pool: &PgPool, close_after_secs: u64, id: i64) -> anyhow::Result<DeadLetter> {
    let mut tx = pool.begin().await?;
    // Locked: two operators re-applying the same letter apply it once.
    type Stored = (String, i64, Vec<u8>, Option<DateTime<Utc>>);
    let row: Option<Stored> = sqlx::query_as(
        "SELECT consumer, stream_seq, payload, reapplied_at FROM projector_dead_letters WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .context("reading the dead letter")?;
    let Some((consumer, seq, payload, reapplied_at)) = row else {
        anyhow::bail!("there is no dead letter #{id} (`tengine projector dead-letters` lists them)");
    };
    if let Some(at) = reapplied_at {
        anyhow::bail!("dead letter #{id} was already re-applied at {at}");
    }
    let envelope = EventEnvelope::decode(&payload)
        .map_err(|e| anyhow::anyhow!("dead letter #{id} still cannot be decoded ({e}); it cannot be re-applied"))?;
    // Recorded as processed when it was set aside: forget that, so it applies now.
    sqlx::query("DELETE FROM processed_events WHERE event_id = $1 AND day = $2")
        .bind(envelope.id)
        .bind(retention::uuid_day(envelope.id))
        .execute(&mut *tx)
        .await?;
    let event = [(u64::try_from(seq).unwrap_or(0), envelope)];
    apply_events(&mut tx, &consumer, close_after_secs, &event)
        .await
        .map_err(|e| anyhow::anyhow!("dead letter #{id} still cannot be applied: {}", describe(&e)))?;
    let letter: DeadLetter = sqlx::query_as(&format!(
        "UPDATE projector_dead_letters SET reapplied_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(letter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error with just a SQLSTATE.
    #[derive(Debug)]
    struct Refused(&'static str);

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Refused {}

    impl sqlx::error::DatabaseError for Refused {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Refused(code)))
    }

    #[test]
    fn only_data_errors_are_permanent() {
        // NUL in text, a bad value, a constraint, an index row too large.
        for code in ["22021", "22008", "22P05", "23514", "23502", "54000"] {
            assert!(permanent(&server(code)), "{code}");
        }
        // Connection, transaction rollback, resources, operator intervention, and
        // schema errors (a deployment fixes them): retried.
        for code in ["08006", "40001", "40P01", "53300", "57P01", "42P01", "XX000"] {
            assert!(!permanent(&server(code)), "{code}");
        }
        assert!(!permanent(&sqlx::Error::PoolTimedOut));
        assert!(!permanent(&sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(permanent(&sqlx::Error::Encode("out of range".into())));
        assert_eq!(sqlstate(&server("22021")).as_deref(), Some("22021"));
        assert_eq!(describe(&server("23514")), "23514");
    }
}
