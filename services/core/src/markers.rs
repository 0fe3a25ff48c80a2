//! Proof that a copy kept in memory is current: a fence of markers.
//!
//! An instance keeps a copy of data whose changes reach it through one ordered
//! channel (PostgreSQL notifications for access data, a watched JetStream bucket for
//! cancellations). While the copy is being read, the instance sends itself a marker
//! through the same channel every few milliseconds. The channel keeps order, so once
//! a marker sent at `s` is back, every change made before `s` has reached the copy.
//! The copy may be used only while the newest marker back was sent less than the
//! fence's window ago; otherwise the reader goes to the source, as it would with no
//! copy. An idle instance sends nothing: its first read after a pause goes to the
//! source, and markers start again.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// How long a returned marker proves a copy current. Requests that narrow access
/// wait it out (`tengine_control::freshness::settle`).
pub const WINDOW: Duration = Duration::from_millis(80);
/// How often a marker is sent: a few per window, so one slow marker does not void the copy.
pub const MARK_EVERY: Duration = Duration::from_millis(20);
/// A copy nobody read for this long sends no markers (an idle instance stores nothing);
/// its next read goes to the source.
pub const BUSY_FOR: Duration = Duration::from_secs(2);
/// Markers remembered while on their way (more are never in flight within a window).
const IN_FLIGHT: usize = 64;

/// When markers are sent, and their numbers.
pub struct MarkerClock {
    tick: tokio::time::Interval,
    number: u64,
}

impl MarkerClock {
    /// A marker every `every` (a few per window, so one slow marker does not void the copy).
    pub fn every(every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, number: 0 }
    }
}

/// See the module's comment.
pub struct MarkerFence {
    window: Duration,
    /// An instance nobody asked for this long sends no markers.
    busy_for: Duration,
    origin: Instant,
    /// Nanoseconds since `origin` until which the copy may be used (0: not now).
    fresh_until: AtomicU64,
    /// Nanoseconds since `origin` until which markers are sent.
    busy_until: AtomicU64,
    /// Markers on their way: (number, when sent), oldest first.
    in_flight: Mutex<VecDeque<(u64, Instant)>>,
}

impl MarkerFence {
    pub fn new(window: Duration, busy_for: Duration) -> Self {
        Self {
            window,
            busy_for,
            origin: Instant::now(),
            fresh_until: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            in_flight: Mutex::new(VecDeque::with_capacity(IN_FLIGHT)),
        }
    }

    /// Whether the copy may be used now. Asking keeps the markers going.
    pub fn is_fresh(&self) -> bool {
        let now = self.now();
        self.busy_until
            .fetch_max(now.saturating_add(nanos(self.busy_for)), Ordering::Relaxed);
        now < self.fresh_until.load(Ordering::SeqCst)
    }

    /// Changes may have been missed: the copy is not used until a marker sent
    /// after this is back.
    pub fn void(&self) {
        self.fresh_until.store(0, Ordering::SeqCst);
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.clear();
        }
    }

    /// Marker `number` is back: changes made before it was sent have been applied.
    pub fn returned(&self, number: u64) {
        let sent = self.in_flight.lock().ok().and_then(|mut in_flight| {
            // Markers come back in order; older ones still listed were lost.
            let mut sent = None;
            while in_flight.front().is_some_and(|(n, _)| *n <= number) {
                sent = in_flight.pop_front().filter(|(n, _)| *n == number).map(|(_, at)| at);
            }
            sent
        });
        if let Some(sent) = sent {
            let until = nanos(sent.saturating_duration_since(self.origin).saturating_add(self.window));
            self.fresh_until.fetch_max(until, Ordering::SeqCst);
        }
    }

    /// The next marker to send, waiting for its turn (every `clock`'s period while
    /// the copy is being read); `None` at `shutdown`. The caller stores it in the
    /// channel; a marker lost on the way only delays the proof.
    pub async fn next_marker(&self, clock: &mut MarkerClock, shutdown: &CancellationToken) -> Option<u64> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                _ = clock.tick.tick() => {}
            }
            if self.now() >= self.busy_until.load(Ordering::Relaxed) {
                continue;
            }
            clock.number = clock.number.wrapping_add(1);
            if let Ok(mut in_flight) = self.in_flight.lock() {
                if in_flight.len() >= IN_FLIGHT {
                    in_flight.pop_front();
                }
                in_flight.push_back((clock.number, Instant::now()));
            }
            return Some(clock.number);
        }
    }

    fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(fence: &MarkerFence, number: u64) {
        if let Ok(mut in_flight) = fence.in_flight.lock() {
            in_flight.push_back((number, Instant::now()));
        }
    }

    #[test]
    fn only_a_marker_that_was_sent_and_came_back_makes_the_copy_usable() {
        let fence = MarkerFence::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!fence.is_fresh());
        fence.returned(7);
        assert!(!fence.is_fresh(), "a marker never sent proves nothing");
        sent(&fence, 7);
        fence.returned(7);
        assert!(fence.is_fresh());
        fence.void();
        assert!(!fence.is_fresh());
    }

    #[test]
    fn a_marker_back_after_a_void_proves_nothing() {
        let fence = MarkerFence::new(Duration::from_secs(60), Duration::from_secs(60));
        sent(&fence, 1);
        fence.void();
        fence.returned(1);
        assert!(
            !fence.is_fresh(),
            "sent before the void, it may predate a missed change"
        );
    }

    #[test]
    fn the_proof_lasts_one_window_from_when_the_marker_was_sent() {
        let fence = MarkerFence::new(Duration::from_millis(30), Duration::from_secs(60));
        sent(&fence, 1);
        std::thread::sleep(Duration::from_millis(40));
        fence.returned(1);
        assert!(!fence.is_fresh(), "sent 40 ms ago, it proves nothing now");
    }

    #[tokio::test]
    async fn markers_are_sent_only_while_the_copy_is_read() {
        let fence = MarkerFence::new(Duration::from_millis(80), Duration::from_millis(100));
        let shutdown = CancellationToken::new();
        let mut clock = MarkerClock::every(Duration::from_millis(5));
        let idle = tokio::time::timeout(Duration::from_millis(60), fence.next_marker(&mut clock, &shutdown));
        assert!(idle.await.is_err(), "nobody read the copy: no marker");
        let _ = fence.is_fresh();
        let busy = tokio::time::timeout(Duration::from_millis(60), fence.next_marker(&mut clock, &shutdown));
        assert_eq!(busy.await.ok().flatten(), Some(1), "a read starts the markers");
        shutdown.cancel();
        assert_eq!(fence.next_marker(&mut clock, &shutdown).await, None);
    }
}
