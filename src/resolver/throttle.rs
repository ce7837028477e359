//! Manners towards each registry host: a bound on requests in flight, and a pause after 429.
//!
//! A burst of pods with cold images must not become a burst of hundreds of connections to one
//! registry, and a registry that says "too many requests" must not be asked again at once: every
//! cold lookup during the pause fails fast (the policy turns that into "not checked", allowed or
//! denied per `--on-registry-error`) instead of digging the rate-limit hole deeper.
//!
//! The pause is the 429's `Retry-After` when it has one (at most an hour: see
//! `headers::MAX_RETRY_AFTER`); otherwise exponential, [`FIRST_BACKOFF`] doubling per consecutive
//! 429 up to [`MAX_BACKOFF`], and forgotten after the first success. Cache hits never reach a
//! throttle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The pause after a first 429 from a host.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause, however many 429s in a row.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Default bound on requests in flight to one registry host.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Hosts remembered at most; a host idle this long is forgotten (with its pause, long over).
const MAX_HOSTS: u64 = 10_000;
const HOST_IDLE: Duration = Duration::from_secs(600);

/// Per-host gates, created on first use.
pub struct Throttle {
    concurrency: usize,
    hosts: Cache<String, Arc<Host>>,
}

struct Host {
    permits: Arc<Semaphore>,
    backoff: Mutex<Backoff>,
}

#[derive(Debug, Default)]
struct Backoff {
    /// No request before this instant.
    until: Option<Instant>,
    /// 429s in a row, each answered after the previous pause ended.
    strikes: u32,
}

impl Backoff {
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

/// Leave to send one request to a host; hold it until the answer has been read.
pub struct Pass {
    host: Arc<Host>,
    _permit: OwnedSemaphorePermit,
}

impl Throttle {
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            hosts: Cache::builder()
                .max_capacity(MAX_HOSTS)
                .time_to_idle(HOST_IDLE)
                .build(),
        }
    }

    /// Waits for a free slot at `host`; `Err(retry_in)` at once while the host is paused, and
    /// also when a pause began while this caller was queued.
    pub async fn enter(&self, host: &str) -> Result<Pass, Duration> {
        let concurrency = self.concurrency;
        let gate = self
            .hosts
            .get_with_by_ref(host, async move {
                Arc::new(Host {
                    permits: Arc::new(Semaphore::new(concurrency)),
                    backoff: Mutex::default(),
                })
            })
            .await;
        gate.paused()?;
        let permit = gate
            .permits
            .clone()
            .acquire_owned()
            .await
            // The semaphore is never closed.
            .map_err(|_| Duration::ZERO)?;
        gate.paused()?;
        Ok(Pass {
            host: gate,
            _permit: permit,
        })
    }
}

impl Host {
    fn paused(&self) -> Result<(), Duration> {
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match backoff.remaining(Instant::now()) {
            Some(left) => Err(left),
            None => Ok(()),
        }
    }
}

impl Pass {
    /// The host answered 429: pause it for `retry_after` (the registry's word) or by
    /// backoff, unless a pause already covers that long (as when many requests in flight hit
    /// the limit together), and return how long it stays paused.
    pub fn rate_limited(&self, retry_after: Option<Duration>) -> Duration {
        let now = Instant::now();
        let mut backoff = self.host.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let left = backoff.remaining(now);
        if let Some(left) = left
            && retry_after.is_none_or(|asked| asked <= left)
        {
            return left;
        }
        let pause = retry_after.unwrap_or_else(|| pause_after(backoff.strikes));
        backoff.strikes = backoff.strikes.saturating_add(1);
        backoff.until = Some(now + pause);
        pause
    }

    /// The host served what was asked: the next 429 starts the pauses over.
    pub fn succeeded(&self) {
        let mut backoff = self.host.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff.strikes = 0;
    }
}

/// `FIRST_BACKOFF · 2^strikes`, at most `MAX_BACKOFF`.
fn pause_after(strikes: u32) -> Duration {
    FIRST_BACKOFF
        .checked_mul(1u32.checked_shl(strikes).unwrap_or(u32::MAX))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let pauses: Vec<u64> = (0..8).map(|s| pause_after(s).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(pause_after(u32::MAX), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn a_429_pauses_the_host_and_a_success_resets_the_count() {
        let throttle = Throttle::new(2);
        let pass = throttle.enter("r.example").await.unwrap();
        assert_eq!(pass.rate_limited(None), FIRST_BACKOFF);
        // A second 429 from a request already in flight does not lengthen the pause...
        assert!(pass.rate_limited(None) <= FIRST_BACKOFF);
        drop(pass);
        let left = throttle.enter("r.example").await.err().unwrap();
        assert!(left <= FIRST_BACKOFF && !left.is_zero(), "{left:?}");
        // ...unless the registry asks for longer: its Retry-After is honoured.
        let again = Throttle::new(2);
        let pass = again.enter("r.example").await.unwrap();
        assert_eq!(pass.rate_limited(None), FIRST_BACKOFF);
        let asked = Duration::from_secs(90);
        assert_eq!(pass.rate_limited(Some(asked)), asked);
        drop(pass);
        let left = again.enter("r.example").await.err().unwrap();
        assert!(left > Duration::from_secs(80), "{left:?}");
        // Other hosts are not affected.
        let other = throttle.enter("other.example").await.unwrap();
        other.succeeded();
    }

    #[tokio::test]
    async fn at_most_the_bound_in_flight() {
        let throttle = Throttle::new(2);
        let a = throttle.enter("r.example").await.unwrap();
        let _b = throttle.enter("r.example").await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), throttle.enter("r.example"));
        assert!(third.await.is_err(), "a third pass while two are held");
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(50), throttle.enter("r.example"));
        assert!(third.await.is_ok());
    }
}
