//! Background tasks that live exactly as long as their owner.

/// Aborts a background task (a sampler, housekeeping) when its owner is done.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
