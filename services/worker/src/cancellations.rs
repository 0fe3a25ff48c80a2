//! Which runs were cancelled, from memory: a watched copy of the cancellation
//! bucket (`{PREFIX}_CANCELLED`), so that a call does not wait for a KV read before
//! its API is called.
//!
//! The copy is trusted only with proof that it is current, as
//! `tengine_control::freshness` does for access data:
//! * *Markers* (a [`MarkerFence`]). While this worker is busy it writes its own key
//!   in the bucket every [`MARK_EVERY`]. The bucket is one stream, so once the watch
//!   delivers a marker written at `s`, every mark stored before `s` is in the copy.
//!   The copy is used only while the newest marker back was written less than
//!   [`WINDOW`] ago.
//! * *Completeness.* The watch sees marks stored after it started; a mark always
//!   comes after its run was accepted, so the copy answers for runs accepted after
//!   the watch started (a clock-skew margin added), and for [`KEPT`] (what memory
//!   holds). Any other run, or a stale copy, is read from the bucket as before.
//! * *Broadcasts.* A cancellation is also announced on core NATS after its mark is
//!   stored (`{prefix}.control.marked`, and aborts): in the usual case the copy
//!   has it at once, not only after the watch delivered it.
//!
//! A mark stored within the last [`WINDOW`] whose broadcast was lost may be missed:
//! the same as a cancellation that comes just after the worker looked, which no
//! design avoids (the run then reaches the API and is recorded as it happened).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tengine_core::markers::{MARK_EVERY, MarkerClock, MarkerFence};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a marker proves the copy current, and how long after its last question
/// a worker stops writing markers (an idle cluster stores nothing).
pub use tengine_core::markers::{BUSY_FOR, WINDOW};
/// How long a mark is kept in memory; older runs are read from the bucket.
pub const KEPT: Duration = Duration::from_secs(600);
/// Most marks kept; beyond it the copy starts over (and answers for newer runs only).
const MAX_KEPT: usize = 200_000;
/// Clock difference tolerated between an ingress (which stamps `accepted_at`) and this worker.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(2);
/// The prefix of marker keys (never a run id).
const MARKER_PREFIX: &str = "marker.";

/// The copy; cheap to clone.
#[derive(Clone)]
pub struct Cancellations(Arc<Inner>);

struct Inner {
    kv: kv::Store,
    fence: MarkerFence,
    /// Unix ms after which accepted runs are covered by the copy (`i64::MAX`: none).
    complete_after_ms: AtomicI64,
    /// Cancelled runs seen, with when.
    runs: Mutex<HashMap<Uuid, Instant>>,
    marker_key: String,
}

impl Cancellations {
    /// A copy that is never used: every question goes to the bucket.
    pub fn unwatched(kv: kv::Store) -> Self {
        Self(Arc::new(Inner {
            kv,
            fence: MarkerFence::new(WINDOW, BUSY_FOR),
            complete_after_ms: AtomicI64::new(i64::MAX),
            runs: Mutex::new(HashMap::new()),
            marker_key: format!("{MARKER_PREFIX}{}", Uuid::new_v4().simple()),
        }))
    }

    /// Watches the bucket and writes markers until `shutdown`.
    pub fn start(kv: kv::Store, shutdown: CancellationToken) -> Self {
        let me = Self::unwatched(kv);
        tokio::spawn(me.clone().watch(shutdown.clone()));
        tokio::spawn(me.clone().mark(shutdown));
        me
    }

    /// Whether `run_id` (accepted at `accepted_at`) was cancelled.
    pub async fn is_cancelled(&self, run_id: Uuid, accepted_at: DateTime<Utc>) -> bool {
        if let Some(cancelled) = self.from_memory(run_id, accepted_at) {
            return cancelled;
        }
        matches!(self.0.kv.entry(run_id.to_string()).await, Ok(Some(entry)) if entry.operation == kv::Operation::Put)
    }

    /// What the copy says of `run_id` (accepted at `accepted_at`), when it may answer.
    pub fn from_memory(&self, run_id: Uuid, accepted_at: DateTime<Utc>) -> Option<bool> {
        if self.seen(run_id) {
            return Some(true);
        }
        self.answers_for(accepted_at).then_some(false)
    }

    /// Records a cancellation heard of (a broadcast, an abort).
    pub fn note(&self, run_id: Uuid) {
        let Ok(mut runs) = self.0.runs.lock() else { return };
        if runs.len() >= MAX_KEPT {
            runs.retain(|_, seen| seen.elapsed() < KEPT);
            if runs.len() >= MAX_KEPT {
                // Too many to keep: start over, answering only for runs accepted from now on.
                runs.clear();
                let after = Utc::now().timestamp_millis();
                self.0.complete_after_ms.fetch_max(after, Ordering::SeqCst);
            }
        }
        runs.insert(run_id, Instant::now());
    }

    fn seen(&self, run_id: Uuid) -> bool {
        self.0
            .runs
            .lock()
            .is_ok_and(|runs| runs.get(&run_id).is_some_and(|seen| seen.elapsed() < KEPT))
    }

    /// Whether the copy is current and covers a run accepted at `accepted_at`.
    fn answers_for(&self, accepted_at: DateTime<Utc>) -> bool {
        if !self.0.fence.is_fresh() {
            return false;
        }
        let accepted = accepted_at.timestamp_millis();
        let margin = CLOCK_SKEW.num_milliseconds();
        let complete_after = self.0.complete_after_ms.load(Ordering::SeqCst);
        // Kept long enough: a mark of this run came after it was accepted.
        let kept_since = Utc::now().timestamp_millis().saturating_sub(millis(KEPT));
        accepted > complete_after.saturating_add(margin) && accepted > kept_since.saturating_add(margin)
    }

    /// The watch, restarted after a failure; while it is down the copy is not used.
    async fn watch(self, shutdown: CancellationToken) {
        loop {
            match self.0.kv.watch_all().await {
                Ok(mut watch) => {
                    // Marks stored from now on reach this watch.
                    self.0
                        .complete_after_ms
                        .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
                    loop {
                        let entry = tokio::select! {
                            () = shutdown.cancelled() => return,
                            entry = watch.next() => entry,
                        };
                        match entry {
                            Some(Ok(entry)) => self.apply(&entry),
                            Some(Err(err)) => {
                                tracing::warn!(error = %err, "watching cancellations; reading them from the bucket");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "watching cancellations; reading them from the bucket"),
            }
            // Marks may be missed until the next watch starts: answer for none.
            self.0.fence.void();
            self.0.complete_after_ms.store(i64::MAX, Ordering::SeqCst);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn apply(&self, entry: &kv::Entry) {
        if entry.key == self.0.marker_key {
            if let Some(number) = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                self.0.fence.returned(number);
            }
            return;
        }
        if entry.operation == kv::Operation::Put
            && let Ok(run_id) = entry.key.parse::<Uuid>()
        {
            self.note(run_id);
        }
    }

    /// Writes the marker every [`MARK_EVERY`] while this worker is busy.
    async fn mark(self, shutdown: CancellationToken) {
        let mut clock = MarkerClock::every(MARK_EVERY);
        while let Some(number) = self.0.fence.next_marker(&mut clock, &shutdown).await {
            if let Err(err) = self.0.kv.put(&self.0.marker_key, number.to_string().into()).await {
                tracing::debug!(error = %err, "writing the cancellation marker");
            }
        }
        // The marker key leaves with the worker.
        let _ = self.0.kv.purge(&self.0.marker_key).await;
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
