//! Operator approvals (tools with `approval: operator`): the call is validated,
//! claimed and charged as usual, then its command is parked in the KV bucket
//! `{PREFIX}_APPROVALS` instead of the queue, and an `AwaitingApproval` event puts
//! the run in history. Someone with the admin token approves it (the command is
//! queued, under its own Run ID: it runs once) or rejects it (it ends `rejected` /
//! `approval_denied` and never reaches the API); one not decided by its expiry is
//! refused the same way by the sweeper every ingress runs. Each decision is an
//! `ApprovalDecided` event, so who decided what and when is in run history.
//!
//! A decision takes the parked entry by compare-and-set: of several operators (or
//! a sweeper) deciding at once, one wins. Everything lives in NATS and history, so
//! a parked run survives restarts of every process.

use std::time::Duration;

use async_nats::jetstream::kv;
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tengine_core::{
    envelope::{ApprovalDecision, CommandEnvelope, ErrorClass, ExecuteCommand, RunEvent, RunOutcome, RunStatus},
    payload,
    telemetry::TraceContext,
};
use uuid::Uuid;

use crate::AppState;

/// How often each ingress looks for approvals past their expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Approvals {
    kv: kv::Store,
}

/// A parked call.
#[derive(Clone, Serialize, Deserialize)]
struct Parked {
    /// The command, as it will be queued (a MessagePack envelope, base64).
    command: String,
    project_id: Uuid,
    expires_at: DateTime<Utc>,
    /// Set while a decision is being carried out.
    #[serde(default)]
    deciding: bool,
}

/// A parked call as operators see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Pending {
    pub run_id: Uuid,
    pub tool_name: String,
    pub api_key_id: Uuid,
    pub integration_id: Uuid,
    pub member_id: Option<String>,
    #[schema(value_type = Object)]
    pub arguments: Map<String, Value>,
    pub accepted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("no call awaits approval under that run id (it ran, was decided, or never existed)")]
    NotFound,
    #[error("another decision on this call is being carried out")]
    Deciding,
    #[error("the approval expired at {0}; the call was refused")]
    Expired(DateTime<Utc>),
    #[error("the decision could not be carried out right now ({0}); retry")]
    Unavailable(String),
}

impl Approvals {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Parks `command` until it is decided or `expires_at`.
    pub async fn park(&self, command: &ExecuteCommand, expires_at: DateTime<Utc>) -> Result<(), String> {
        let encoded = CommandEnvelope::new(command.run_id, command.clone())
            .encode()
            .map_err(|e| e.to_string())?;
        let parked = Parked {
            command: STANDARD.encode(encoded),
            project_id: command.caller.project_id,
            expires_at,
            deciding: false,
        };
        let value = serde_json::to_vec(&parked).map_err(|e| e.to_string())?;
        self.kv
            .create(command.run_id.to_string(), value.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Whether a run is parked here.
    pub async fn is_parked(&self, run_id: Uuid) -> bool {
        matches!(self.kv.get(run_id.to_string()).await, Ok(Some(_)))
    }

    /// The project's parked calls, oldest first.
    pub async fn pending(&self, project_id: Uuid) -> Result<Vec<Pending>, String> {
        let mut pending = Vec::new();
        for (_, parked, command) in self.all().await? {
            if parked.project_id == project_id && !parked.deciding {
                pending.push(Pending {
                    run_id: command.run_id,
                    tool_name: command.tool_name,
                    api_key_id: command.caller.api_key_id,
                    integration_id: command.caller.integration_id,
                    member_id: command.caller.member.map(|m| m.id),
                    arguments: command.arguments,
                    accepted_at: command.accepted_at,
                    expires_at: parked.expires_at,
                });
            }
        }
        pending.sort_by_key(|p| p.accepted_at);
        Ok(pending)
    }

    /// Every parked call with its entry revision.
    async fn all(&self) -> Result<Vec<(u64, Parked, ExecuteCommand)>, String> {
        let mut keys = self.kv.keys().await.map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(entry)) = self.kv.entry(key).await
                && entry.operation == kv::Operation::Put
                && let Some((parked, command)) = decode(&entry.value)
            {
                found.push((entry.revision, parked, command));
            }
        }
        Ok(found)
    }

    /// Takes a parked call for a decision (compare-and-set). An entry still
    /// marked as being decided whose run already has its outcome is a decision
    /// whose clean-up failed: it is removed and reads as not found.
    async fn take_for(&self, st: &AppState, run_id: Uuid) -> Result<(Parked, ExecuteCommand, u64), DecisionError> {
        match self.take(run_id).await {
            Err(DecisionError::Deciding) => {
                let Ok(Some(entry)) = self.kv.entry(run_id.to_string()).await else {
                    return Err(DecisionError::Deciding);
                };
                let project_id = decode(&entry.value).map(|(parked, _)| parked.project_id);
                match project_id {
                    Some(project_id) if st.dispatcher.recorded(project_id, run_id).await.is_some() => {
                        self.forget(run_id, entry.revision).await;
                        Err(DecisionError::NotFound)
                    }
                    _ => Err(DecisionError::Deciding),
                }
            }
            taken => taken,
        }
    }

    /// Takes a parked call for a decision (compare-and-set).
    async fn take(&self, run_id: Uuid) -> Result<(Parked, ExecuteCommand, u64), DecisionError> {
        let entry = self
            .kv
            .entry(run_id.to_string())
            .await
            .map_err(|e| DecisionError::Unavailable(e.to_string()))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or(DecisionError::NotFound)?;
        let (mut parked, command) = decode(&entry.value).ok_or(DecisionError::NotFound)?;
        if parked.deciding {
            return Err(DecisionError::Deciding);
        }
        parked.deciding = true;
        let value = serde_json::to_vec(&parked).map_err(|e| DecisionError::Unavailable(e.to_string()))?;
        let revision = self
            .kv
            .update(run_id.to_string(), value.into(), entry.revision)
            .await
            .map_err(|_| DecisionError::Deciding)?;
        Ok((parked, command, revision))
    }

    /// Gives a call back to the parked ones (its decision failed).
    async fn untake(&self, run_id: Uuid, mut parked: Parked, revision: u64) {
        parked.deciding = false;
        if let Ok(value) = serde_json::to_vec(&parked)
            && let Err(err) = self.kv.update(run_id.to_string(), value.into(), revision).await
        {
            tracing::warn!(%run_id, error = %err, "giving a parked call back failed");
        }
    }

    /// Removes a decided call (only at the revision its decision took; a passing
    /// NATS fault is retried, and what is left is cleaned up by `take_for`).
    async fn forget(&self, run_id: Uuid, revision: u64) {
        for _ in 0..3 {
            match self.kv.purge_expect_revision(run_id.to_string(), Some(revision)).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%run_id, error = %err, "removing a decided call from the parked ones");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

fn decode(value: &[u8]) -> Option<(Parked, ExecuteCommand)> {
    let parked: Parked = serde_json::from_slice(value).ok()?;
    let bytes = STANDARD.decode(&parked.command).ok()?;
    let command = CommandEnvelope::decode(&bytes).ok()?.body;
    Some((parked, command))
}

/// Approves a parked call: it is queued now and runs once.
pub async fn approve(st: &AppState, run_id: Uuid, by: &str, note: Option<String>) -> Result<(), DecisionError> {
    let (parked, command, revision) = st.approvals.take_for(st, run_id).await?;
    if parked.expires_at <= Utc::now() {
        let expired_at = parked.expires_at;
        refuse(st, &command, parked, revision, ApprovalDecision::Expired, None, None).await?;
        return Err(DecisionError::Expired(expired_at));
    }
    // The same Run ID (and Nats-Msg-Id): approved twice, it would be stored once.
    if let Err(err) = st
        .dispatcher
        .enqueue(
            &command,
            &TraceContext::default(),
            Duration::from_secs(3),
            Duration::ZERO,
        )
        .await
    {
        st.approvals.untake(run_id, parked, revision).await;
        return Err(DecisionError::Unavailable(err.to_string()));
    }
    decided(st, &command, ApprovalDecision::Approved, Some(by), note).await;
    st.approvals.forget(run_id, revision).await;
    tracing::info!(%run_id, by, "call approved");
    Ok(())
}

/// Rejects a parked call: it ends `rejected` and never reaches the API.
pub async fn reject(st: &AppState, run_id: Uuid, by: &str, reason: String) -> Result<(), DecisionError> {
    let (parked, command, revision) = st.approvals.take_for(st, run_id).await?;
    if parked.expires_at <= Utc::now() {
        let expired_at = parked.expires_at;
        refuse(st, &command, parked, revision, ApprovalDecision::Expired, None, None).await?;
        return Err(DecisionError::Expired(expired_at));
    }
    refuse(
        st,
        &command,
        parked,
        revision,
        ApprovalDecision::Rejected,
        Some(by),
        Some(reason),
    )
    .await?;
    tracing::info!(%run_id, by, "call rejected");
    Ok(())
}

/// Withdraws a parked call its client cancelled (`tasks/cancel`): it ends
/// `cancelled` without running. `false` when it is not parked (any more).
pub async fn withdraw(st: &AppState, run_id: Uuid) -> bool {
    let Ok((parked, command, revision)) = st.approvals.take(run_id).await else {
        return false;
    };
    let outcome = RunOutcome {
        status: RunStatus::Cancelled,
        error_class: None,
        error: Some("the client cancelled the call while it awaited approval; the API was not called".into()),
        ..refused_outcome(&command, Utc::now())
    };
    if let Err(err) = st
        .dispatcher
        .publish(command.caller.project_id, RunEvent::Finished(outcome))
        .await
    {
        tracing::warn!(%run_id, error = %err, "withdrawing a parked call");
        st.approvals.untake(run_id, parked, revision).await;
        return false;
    }
    st.approvals.forget(run_id, revision).await;
    true
}

/// An outcome for a parked call that never ran.
fn refused_outcome(command: &ExecuteCommand, finished_at: DateTime<Utc>) -> RunOutcome {
    RunOutcome {
        run_id: command.run_id,
        caller: command.caller.clone(),
        tool_name: command.tool_name.clone(),
        status: RunStatus::Rejected,
        error_class: Some(ErrorClass::ApprovalDenied),
        error: None,
        response: None,
        attempts: 0,
        accepted_at: command.accepted_at,
        finished_at,
        latency_ms: u64::try_from(
            finished_at
                .signed_duration_since(command.accepted_at)
                .num_milliseconds(),
        )
        .unwrap_or(0),
        bodies: None,
        keep_result_until: command.keep_result_until,
        last_attempt: None,
        origin: command.origin.clone().map(Box::new),
    }
}

/// Ends a parked call without running it: its outcome (rejected,
/// `approval_denied`), the decision, and the waiting client's answer.
async fn refuse(
    st: &AppState,
    command: &ExecuteCommand,
    parked: Parked,
    revision: u64,
    decision: ApprovalDecision,
    by: Option<&str>,
    reason: Option<String>,
) -> Result<(), DecisionError> {
    let why = match (decision, &reason) {
        (ApprovalDecision::Expired, _) => "its approval expired before an operator decided".to_string(),
        (_, Some(reason)) => format!("an operator rejected it: {reason}"),
        (_, None) => "an operator rejected it".to_string(),
    };
    let outcome = RunOutcome {
        error: Some(payload::bounded_error(format!("{why}; the API was not called"))),
        ..refused_outcome(command, Utc::now())
    };
    // The decision goes into the log before the outcome: history never shows the
    // run finished while its approval still reads pending.
    decided(st, command, decision, by, reason).await;
    if let Err(err) = st
        .dispatcher
        .publish(command.caller.project_id, RunEvent::Finished(outcome.clone()))
        .await
    {
        st.approvals.untake(command.run_id, parked, revision).await;
        return Err(DecisionError::Unavailable(err.to_string()));
    }
    if let Some(reply_to) = &command.reply_to {
        st.dispatcher.reply(reply_to, outcome).await;
    }
    st.approvals.forget(command.run_id, revision).await;
    Ok(())
}

async fn decided(
    st: &AppState,
    command: &ExecuteCommand,
    decision: ApprovalDecision,
    by: Option<&str>,
    reason: Option<String>,
) {
    let event = RunEvent::ApprovalDecided {
        run_id: command.run_id,
        project_id: command.caller.project_id,
        decision,
        by: by.map(str::to_string),
        reason: reason.map(payload::bounded_error),
        decided_at: Utc::now(),
    };
    st.dispatcher.log(command.caller.project_id, event).await;
}

/// Refuses, every [`SWEEP_EVERY`] (or the approval TTL, if shorter), the parked
/// calls past their expiry. Every ingress sweeps; taking a call is a
/// compare-and-set, so each is refused once. It ends with its ingress (it holds
/// it weakly).
pub async fn sweep(st: std::sync::Weak<AppState>, ttl: Duration) {
    let mut every = tokio::time::interval(SWEEP_EVERY.min(ttl).max(Duration::from_millis(500)));
    loop {
        every.tick().await;
        let Some(st) = st.upgrade() else { return };
        let Ok(all) = st.approvals.all().await else { continue };
        for (_, parked, command) in all {
            if parked.deciding || parked.expires_at > Utc::now() {
                continue;
            }
            if let Ok((parked, command, revision)) = st.approvals.take(command.run_id).await
                && let Err(err) = refuse(&st, &command, parked, revision, ApprovalDecision::Expired, None, None).await
            {
                tracing::warn!(run_id = %command.run_id, error = %err, "refusing an expired approval");
            }
        }
    }
}
