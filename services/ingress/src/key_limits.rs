//! Per-key limits on what one credential can make an ingress hold: session writes
//! (DELETE, `logging/setLevel`: each leaves state on every instance until the
//! session expires) and open streams (each holds a connection and a task). Keyed by
//! API key, so one noisy key cannot slow or fill an instance for the others.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

pub struct KeyLimits {
    session_writes: DefaultKeyedRateLimiter<Uuid>,
    streams: Arc<Mutex<HashMap<Uuid, usize>>>,
    max_streams: usize,
}

/// An open stream's slot; freed when dropped (the stream ended or the client left).
pub struct StreamSlot {
    streams: Arc<Mutex<HashMap<Uuid, usize>>>,
    key: Uuid,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.streams.lock()
            && let Some(open) = streams.get_mut(&self.key)
        {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

impl KeyLimits {
    pub fn new(session_writes_per_second: u32, max_streams: usize) -> Self {
        let rate = NonZeroU32::new(session_writes_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(session_writes_per_second.saturating_mul(2)).unwrap_or(rate);
        Self {
            session_writes: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            streams: Arc::default(),
            max_streams,
        }
    }

    /// Whether `key` may write session state now.
    pub fn session_write(&self, key: Uuid) -> bool {
        let allowed = self.session_writes.check_key(&key).is_ok();
        if !allowed {
            metrics::counter!(tengine_core::prometheus::KEY_LIMITED, "limit" => "session_writes").increment(1);
        }
        allowed
    }

    /// A stream slot for `key`, unless it holds `max_streams_per_key` already.
    pub fn open_stream(&self, key: Uuid) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().ok()?;
        let open = streams.entry(key).or_insert(0);
        if *open >= self.max_streams {
            metrics::counter!(tengine_core::prometheus::KEY_LIMITED, "limit" => "streams").increment(1);
            return None;
        }
        *open = open.saturating_add(1);
        Some(StreamSlot {
            streams: self.streams.clone(),
            key,
        })
    }

    /// Forgets rate-limit state of keys idle long enough to be back at full burst
    /// (keeps the limiter's memory bounded by the keys active recently).
    pub fn forget_idle(&self) {
        self.session_writes.retain_recent();
        self.session_writes.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_writes_are_limited_per_key() {
        let limits = KeyLimits::new(5, 2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let allowed = (0..100).filter(|_| limits.session_write(a)).count();
        assert!((5..=12).contains(&allowed), "burst of twice the rate, got {allowed}");
        assert!(limits.session_write(b), "another key is not affected");
    }

    #[test]
    fn stream_slots_are_freed_when_dropped() {
        let limits = KeyLimits::new(5, 2);
        let key = Uuid::now_v7();
        let first = limits.open_stream(key).expect("first");
        let _second = limits.open_stream(key).expect("second");
        assert!(limits.open_stream(key).is_none(), "a third is refused");
        assert!(limits.open_stream(Uuid::now_v7()).is_some(), "other keys are not");
        drop(first);
        assert!(limits.open_stream(key).is_some(), "a freed slot is reusable");
    }
}
