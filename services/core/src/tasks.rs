//! Background tasks that live exactly as long as their owner, and deadlines.

use std::time::Duration;

/// `now + wait`, saturating instead of panicking for waits that come from input or
/// configuration (a century is as good as forever here).
pub fn deadline_after(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// Aborts a background task (a sampler, housekeeping) when its owner is done.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
