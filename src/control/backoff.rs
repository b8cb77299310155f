//! The one retry policy of the control plane: whatever weft waits on outside itself (the
//! registry, a lease renewal) is retried after a delay that doubles from `min` to `max` and
//! starts again from `min` after a success.

use std::time::Duration;

/// A doubling delay between retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A registry that cannot be reached: 100 ms doubling to 5 s (flannel's etcd client).
    pub const REGISTRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
    /// A lease renewal that failed: again after a minute, as flanneld does.
    pub const RENEWAL: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(60));

    /// A backoff from `min` doubling to `max`.
    pub const fn new((min, max): (Duration, Duration)) -> Self {
        Self { min, max, next: min }
    }

    /// The policy for a registry that cannot be reached.
    pub const fn registry() -> Self {
        Self::new(Self::REGISTRY)
    }

    /// The delay before the next attempt; the one after it is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Waits [`Self::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_max_and_resets() {
        let mut b = Backoff::registry();
        let got: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        let mut r = Backoff::new(Backoff::RENEWAL);
        assert_eq!((r.next_delay(), r.next_delay()), (Duration::from_secs(60), Duration::from_secs(60)));
    }
}
