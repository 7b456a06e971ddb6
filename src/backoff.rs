//! Growing delays between attempts of work that fails transiently (a Curator away, etcd
//! unhealthy after a cold start), for the loops that retry it: the lifecycle's steps and watch,
//! the decommission reconciler.

use std::fmt::Display;
use std::time::Duration;

/// The first delay, and the delay after progress.
const FIRST: Duration = Duration::from_millis(200);
/// The longest delay.
const CAP: Duration = Duration::from_secs(5);

/// Delays doubling from [`FIRST`] up to [`CAP`], reset by progress.
pub struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Start at the first delay.
    pub fn new() -> Self {
        Backoff { delay: FIRST }
    }

    /// Progress was made: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.delay = FIRST;
    }

    /// Log why `what` is retried, then wait the current delay and double it.
    pub async fn wait(&mut self, log: &slog::Logger, what: &str, reason: &dyn Display) {
        slog::info!(log, "retrying"; "step" => what, "reason" => %reason,
            "retry_in_ms" => self.delay.as_millis() as u64);
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(CAP);
    }
}
