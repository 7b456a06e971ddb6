//! Waiting for what another process or actor brings about (a node UP, a record written, a pid
//! file, a log line): one loop for every tool and test that waits, probing at a fixed interval
//! until a deadline and answering the probe's last error if it never succeeds. A deadline, not
//! a count of tries, so that a slow probe does not stretch the wait without bound.

use std::time::{Duration, Instant};

/// How to wait: probe every `every`, give up once `limit` has passed since the first probe.
#[derive(Clone, Copy, Debug)]
pub struct Poll {
    /// The pause between two probes.
    pub every: Duration,
    /// How long to keep probing.
    pub limit: Duration,
}

impl Poll {
    /// Probe every `every` for at most `limit`.
    pub const fn new(every: Duration, limit: Duration) -> Self {
        Poll { every, limit }
    }

    /// Probe until `probe` answers `Ok`, or answer its last error once the limit has passed
    /// (the probe always runs at least once). In tokio's time, so that a test with paused time
    /// waits in virtual time.
    pub async fn until<T, E>(&self, mut probe: impl AsyncFnMut() -> Result<T, E>) -> Result<T, E> {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            match probe().await {
                Ok(value) => return Ok(value),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(self.every).await,
            }
        }
    }

    /// [`Poll::until`] for a thread that may block (no async runtime).
    pub fn until_blocking<T, E>(&self, mut probe: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        let deadline = Instant::now() + self.limit;
        loop {
            match probe() {
                Ok(value) => return Ok(value),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(self.every),
            }
        }
    }
}

/// `Ok(())` if `condition` holds, else `Err(what)`: a probe for a plain condition.
pub fn holds(condition: bool, what: &str) -> Result<(), String> {
    match condition {
        true => Ok(()),
        false => Err(what.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_first_success() {
        let mut tries = 0;
        let poll = Poll::new(Duration::from_millis(1), Duration::from_secs(60));
        let answer = poll.until_blocking(|| {
            tries += 1;
            if tries == 3 {
                Ok(tries)
            } else {
                Err("not yet")
            }
        });
        assert_eq!(answer, Ok(3));
    }

    #[test]
    fn answers_the_last_error_at_the_deadline() {
        let mut tries = 0;
        let poll = Poll::new(Duration::from_millis(1), Duration::ZERO);
        let answer: Result<(), String> = poll.until_blocking(|| {
            tries += 1;
            Err(format!("try {tries}"))
        });
        assert_eq!(answer, Err("try 1".to_owned()));
    }

    #[tokio::test]
    async fn the_async_loop_waits_between_probes() {
        let mut tries = 0;
        let poll = Poll::new(Duration::from_millis(1), Duration::from_secs(60));
        let answer = poll
            .until(async || {
                tries += 1;
                holds(tries == 5, "fewer than five tries")
            })
            .await;
        assert_eq!((answer, tries), (Ok(()), 5));
    }
}
