//! Waiting between attempts of work that fails transiently (a Curator away, etcd unhealthy
//! after a cold start), for the loops that retry it: the lifecycle's steps and watch, the
//! decommission reconciler. The delays follow the supervision runtime's own
//! [`polis_actors::Backoff`] policy, so there is one definition of exponential backoff.

use std::fmt::Display;
use std::time::Duration;

use polis_actors::Backoff;

/// 200 ms, doubling up to 5 s; progress (not time) resets the count, hence no `reset_after`.
const POLICY: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(5),
    reset_after: Duration::ZERO,
};

/// The consecutive failures of one retry loop.
#[derive(Debug, Default)]
pub struct Retry {
    failures: u32,
}

impl Retry {
    /// No failure yet.
    pub fn new() -> Self {
        Retry::default()
    }

    /// Progress was made: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Log why `what` is retried, then wait the delay this failure's count calls for.
    pub async fn wait(&mut self, log: &slog::Logger, what: &str, reason: &dyn Display) {
        self.failures = self.failures.saturating_add(1);
        let delay = POLICY.delay(self.failures);
        slog::info!(log, "retrying"; "step" => what, "reason" => %reason,
            "retry_in_ms" => delay.as_millis() as u64);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_cap_and_progress_resets_them() {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let mut retry = Retry::new();
        let mut waited = Vec::new();
        for _ in 0..7 {
            let before = tokio::time::Instant::now();
            retry.wait(&log, "test", &"failed").await;
            waited.push(before.elapsed().as_millis());
        }
        assert_eq!(waited, [200, 400, 800, 1600, 3200, 5000, 5000]);
        retry.reset();
        let before = tokio::time::Instant::now();
        retry.wait(&log, "test", &"failed").await;
        assert_eq!(before.elapsed().as_millis(), 200);
    }
}
