//! Waiting on conditions with a deadline, never on a fixed sleep (STYLE 13).

use std::time::Duration;

use tokio::time::Instant;

/// How often polled conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `cond` until it returns `true` (returns `true`) or `timeout` passes
/// (returns `false`). `cond` is always checked at least once, and once more at
/// the deadline.
#[must_use = "assert on the result: false means the condition never held"]
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_true_when_the_condition_holds_and_false_at_the_deadline() {
        let mut n = 0;
        assert!(
            wait_until(Duration::from_secs(1), || {
                n += 1;
                n == 3
            })
            .await
        );
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false).await);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
