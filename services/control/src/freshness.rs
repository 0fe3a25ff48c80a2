//! In-memory copies of access data (credentials, tools, project settings) that a
//! revocation reaches at once, with proof.
//!
//! PostgreSQL announces every change to access data on the `tengine_control`
//! channel at commit, with the project's id (triggers of migration
//! `20261201000201_control_changes.sql`): no code path, not even SQL typed by hand,
//! changes access without every instance hearing of it. Each instance LISTENs and
//! voids that project's copies.
//!
//! A notification may still be on its way when the revoking request answers. So
//! while its copies are read, each instance also sends itself a *marker* (`NOTIFY`
//! on its own channel) every [`MARK_EVERY`]: a [`MarkerFence`]. PostgreSQL delivers
//! notifications in commit order, so once a marker sent at `s` is back, every change
//! committed before `s` has been applied here. Copies are used only while the
//! newest marker back was sent less than [`WINDOW`] ago; otherwise every read goes
//! to PostgreSQL, as it did before there were copies. A request that narrows access
//! answers [`settle`] after its commit:
//! by then every instance has either applied the change or stopped using copies,
//! so no call is admitted, and no API called, with access revoked before the
//! revocation answered, on any instance, whatever the network or the load.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tengine_core::markers::{BUSY_FOR, MARK_EVERY, MarkerClock, MarkerFence};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::StoreResult;

/// The channel the triggers notify, with a project id as the payload.
const CHANNEL: &str = "tengine_control";
/// How long a marker proves this instance current (see the module's comment).
pub use tengine_core::markers::WINDOW;
/// Longest a copy lives even without a change (it bounds the memory of idle entries).
const TIME_TO_LIVE: Duration = Duration::from_secs(300);

/// How long a request that narrowed access waits after its commit before it answers.
pub async fn settle() {
    tokio::time::sleep(WINDOW.saturating_add(Duration::from_millis(5))).await;
}

/// This instance's view of changes to access data. Cheap to clone.
#[derive(Clone)]
pub struct Freshness(Arc<Inner>);

struct Inner {
    fence: MarkerFence,
    /// Moves on every change and reset: a load that saw it move keeps nothing.
    changes: AtomicU64,
    /// Moves when notifications may have been missed: every copy is void.
    base: AtomicU64,
    /// Changes seen per project (a copy records the count it was loaded under).
    projects: Mutex<HashMap<Uuid, u64>>,
}

/// What a copy was loaded under; it is void once either number moved.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    base: u64,
    project: Uuid,
    changes: u64,
}

impl Freshness {
    /// A view that is never fresh: every read goes to PostgreSQL (no listener).
    pub fn disabled() -> Self {
        Self(Arc::new(Inner {
            fence: MarkerFence::new(WINDOW, BUSY_FOR),
            changes: AtomicU64::new(0),
            base: AtomicU64::new(0),
            projects: Mutex::new(HashMap::new()),
        }))
    }

    /// Listens for changes and sends markers until `shutdown`.
    pub async fn start(pool: PgPool, shutdown: CancellationToken) -> Result<Self, sqlx::Error> {
        let me = Self::disabled();
        let own = format!("tengine_mark_{}", Uuid::new_v4().simple());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen_all([CHANNEL, own.as_str()]).await?;
        tokio::spawn(me.clone().listen(listener, shutdown.clone()));
        let marking = pool.connect_options().as_ref().clone();
        tokio::spawn(me.clone().mark(marking, own, shutdown));
        Ok(me)
    }

    /// Whether copies may be used now.
    pub fn is_fresh(&self) -> bool {
        self.0.fence.is_fresh()
    }

    fn project_changes(&self, project: Uuid) -> u64 {
        self.0
            .projects
            .lock()
            .map(|p| p.get(&project).copied().unwrap_or(0))
            .unwrap_or(u64::MAX)
    }

    fn stamp(&self, project: Uuid) -> Stamp {
        Stamp {
            base: self.0.base.load(Ordering::SeqCst),
            project,
            changes: self.project_changes(project),
        }
    }

    fn valid(&self, stamp: &Stamp) -> bool {
        *stamp == self.stamp(stamp.project)
    }

    /// A change to `project`'s access data was committed.
    fn changed(&self, project: Uuid) {
        if let Ok(mut projects) = self.0.projects.lock() {
            let seen = projects.entry(project).or_insert(0);
            *seen = seen.wrapping_add(1);
        }
        self.0.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes may have been missed: every copy is void, and none is used until a
    /// marker sent after this comes back.
    fn reset(&self) {
        self.0.base.fetch_add(1, Ordering::SeqCst);
        self.0.changes.fetch_add(1, Ordering::SeqCst);
        self.0.fence.void();
    }

    /// Marker `payload` is back: changes committed before it was sent are applied.
    fn marked(&self, payload: &str) {
        if let Ok(number) = payload.parse::<u64>() {
            self.0.fence.returned(number);
        }
    }

    async fn listen(self, mut listener: PgListener, shutdown: CancellationToken) {
        // After a lost connection: the first notification proves LISTEN is back;
        // copies loaded before it may have missed changes made in between.
        let mut recovering = false;
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    if recovering {
                        recovering = false;
                        self.reset();
                    }
                    if notification.channel() == CHANNEL {
                        match Uuid::parse_str(notification.payload()) {
                            Ok(project) => self.changed(project),
                            // Not ours to read: assume anything changed.
                            Err(_) => self.reset(),
                        }
                    } else {
                        self.marked(notification.payload());
                    }
                }
                // The connection was lost; the next call reconnects and listens again.
                Ok(None) => {
                    tracing::warn!(
                        "lost the PostgreSQL listener; reading access data from the database until it is back"
                    );
                    self.reset();
                    recovering = true;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "PostgreSQL listener failed; retrying");
                    self.reset();
                    recovering = true;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Sends markers on a connection of its own that commits without waiting for the
    /// disk: a marker proves order (notifications are queued at commit, in commit
    /// order), not durability, and a synchronous commit per marker was most of
    /// PostgreSQL's work under load. The connection closes while the instance is idle.
    async fn mark(self, options: PgConnectOptions, channel: String, shutdown: CancellationToken) {
        let marking = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(BUSY_FOR.saturating_mul(5))
            // One statement per marker, not two: a broken connection fails the
            // marker, which only delays the proof, and the pool drops it.
            .test_before_acquire(false)
            .acquire_timeout(WINDOW)
            .connect_lazy_with(options.options([("synchronous_commit", "off")]));
        let mut clock = MarkerClock::every(MARK_EVERY);
        while let Some(number) = self.0.fence.next_marker(&mut clock, &shutdown).await {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&channel)
                .bind(number.to_string())
                .execute(&marking);
            match tokio::time::timeout(WINDOW, sent).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::debug!(error = %err, "sending a freshness marker"),
                Err(_) => tracing::debug!("a freshness marker took longer than its window"),
            }
        }
        marking.close().await;
    }
}

/// Values loaded from PostgreSQL, kept while [`Freshness`] says they are current.
pub struct FreshCache<K, V> {
    freshness: Freshness,
    entries: moka::sync::Cache<K, (Stamp, V)>,
}

impl<K, V> FreshCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(freshness: Freshness, capacity: u64) -> Self {
        Self {
            freshness,
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(TIME_TO_LIVE)
                .build(),
        }
    }

    /// The copy of `key`, or what `load` reads (with the project it belongs to;
    /// `None`: not kept, e.g. an unknown credential, which anyone can make up).
    pub async fn get<F, Fut>(&self, key: K, load: F) -> StoreResult<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<(V, Option<Uuid>)>>,
    {
        if self.freshness.is_fresh()
            && let Some((stamp, value)) = self.entries.get(&key)
            && self.freshness.valid(&stamp)
        {
            return Ok(value);
        }
        let before = self.freshness.0.changes.load(Ordering::SeqCst);
        let (value, project) = load().await?;
        if let Some(project) = project {
            let stamp = self.freshness.stamp(project);
            // A change that arrived while loading may postdate what was read.
            if self.freshness.0.changes.load(Ordering::SeqCst) == before {
                self.entries.insert(key, (stamp, value.clone()));
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_voids_the_projects_copies_and_a_reset_voids_all() {
        let fresh = Freshness::disabled();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (sa, sb) = (fresh.stamp(a), fresh.stamp(b));
        fresh.changed(a);
        assert!(!fresh.valid(&sa));
        assert!(fresh.valid(&sb));
        fresh.reset();
        assert!(!fresh.valid(&sb));
    }

    #[tokio::test]
    async fn a_returned_marker_notification_makes_copies_usable() {
        let fresh = Freshness::disabled();
        fresh.marked("1");
        assert!(!fresh.is_fresh(), "a marker never sent proves nothing");
        let shutdown = CancellationToken::new();
        let mut clock = MarkerClock::every(Duration::from_millis(1));
        let number = fresh.0.fence.next_marker(&mut clock, &shutdown).await;
        let Some(number) = number else {
            panic!("a marker while the copies are read")
        };
        fresh.marked("not a marker");
        assert!(!fresh.is_fresh(), "a payload that is no marker proves nothing");
        fresh.marked(&number.to_string());
        assert!(fresh.is_fresh());
        fresh.reset();
        assert!(!fresh.is_fresh(), "a reset voids the proof");
    }
}
