//! Per-principal request rate limits: one token bucket per principal, `burst` tokens
//! deep, refilled at `per_second` (Amazon MQ documents a burst of 100 and a refill of
//! 15 per second for its API). A request takes one token or is throttled.
//!
//! The clock is a parameter ([`RateLimiter::check_at`]) so tests drive time by hand.
//! Memory is bounded: a bucket that has been idle long enough to be full again is
//! indistinguishable from a new one, so sweeps drop those; and at most
//! [`MAX_BUCKETS`] are held.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The most buckets held at once. Keys are verified principals, so reaching this
/// needs that many distinct users active within one refill period.
pub const MAX_BUCKETS: usize = 100_000;

/// How often, at most, a check sweeps out idle buckets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// One principal's bucket. Invariant: `0 <= tokens <= burst` as of `updated`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<String, Bucket>,
    last_sweep: Option<Instant>,
}

/// Token buckets by principal. Cheap to share behind an `Arc`; one short critical
/// section per check.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// A limiter of `burst` requests refilled at `per_second`; either being 0 turns
    /// limiting off.
    pub fn new(burst: u32, per_second: f64) -> Self {
        RateLimiter {
            burst: f64::from(burst),
            per_second: if per_second.is_finite() {
                per_second.max(0.0)
            } else {
                0.0
            },
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.burst >= 1.0 && self.per_second > 0.0
    }

    /// Takes a token for `principal` now; `Err(retry_after)` when the bucket is empty.
    pub fn check(&self, principal: &str) -> Result<(), Duration> {
        self.check_at(principal, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (instants may repeat; an instant
    /// earlier than a bucket's last update refills nothing).
    pub fn check_at(&self, principal: &str, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let due = buckets
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
        if due || buckets.map.len() >= MAX_BUCKETS {
            self.sweep(&mut buckets, now);
        }
        if let Some(bucket) = buckets.map.get_mut(principal) {
            return self.take(bucket, now);
        }
        if buckets.map.len() >= MAX_BUCKETS {
            // Every held bucket is in use: failing open for a newcomer beats
            // throttling principals who never sent a request.
            tracing::warn!(
                buckets = MAX_BUCKETS,
                "rate limiter full; not limiting a new principal"
            );
            return Ok(());
        }
        let mut bucket = Bucket {
            tokens: self.burst,
            updated: now,
        };
        let taken = self.take(&mut bucket, now);
        buckets.map.insert(principal.to_owned(), bucket);
        taken
    }

    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = bucket.updated.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Drops every bucket that would be full by `now`: forgetting it changes nothing.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.per_second);
        buckets
            .map
            .retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        buckets.last_sweep = Some(now);
    }

    /// How many buckets are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_then_the_next_request_is_throttled() {
        let limiter = RateLimiter::new(100, 15.0);
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(limiter.check_at("alice", t0).is_ok(), "request {i}");
        }
        let retry = limiter
            .check_at("alice", t0)
            .expect_err("101st is throttled");
        // One token takes 1/15 s to refill.
        assert!(retry > ms(60) && retry <= ms(67), "{retry:?}");
    }

    #[test]
    fn tokens_refill_at_the_configured_rate_up_to_the_burst() {
        let limiter = RateLimiter::new(10, 5.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.check_at("a", t0).expect("within burst");
        }
        assert!(limiter.check_at("a", t0).is_err());
        // 1 s later: exactly 5 tokens.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            limiter.check_at("a", t1).expect("refilled");
        }
        assert!(limiter.check_at("a", t1).is_err());
        // An hour later the bucket holds the burst, not 18,000 tokens.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..10 {
            limiter.check_at("a", t2).expect("full again");
        }
        assert!(limiter.check_at("a", t2).is_err());
    }

    #[test]
    fn principals_have_separate_buckets() {
        let limiter = RateLimiter::new(2, 1.0);
        let t0 = Instant::now();
        limiter.check_at("a", t0).expect("a1");
        limiter.check_at("a", t0).expect("a2");
        assert!(limiter.check_at("a", t0).is_err());
        limiter.check_at("b", t0).expect("b is not affected by a");
    }

    #[test]
    fn zero_disables() {
        for limiter in [RateLimiter::new(0, 15.0), RateLimiter::new(100, 0.0)] {
            assert!(!limiter.enabled());
            let t0 = Instant::now();
            for _ in 0..1000 {
                limiter.check_at("a", t0).expect("never throttled");
            }
            assert!(limiter.is_empty());
        }
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let limiter = RateLimiter::new(1, 1.0);
        let t0 = Instant::now() + Duration::from_secs(10);
        limiter.check_at("a", t0).expect("first");
        assert!(limiter.check_at("a", t0 - Duration::from_secs(5)).is_err());
        assert!(limiter.check_at("a", t0).is_err());
        limiter
            .check_at("a", t0 + Duration::from_secs(1))
            .expect("refilled after a second");
    }

    #[test]
    fn idle_buckets_are_swept_and_memory_stays_bounded() {
        let limiter = RateLimiter::new(10, 10.0); // full again after 1 s idle
        let t0 = Instant::now();
        for i in 0..1000 {
            limiter
                .check_at(&format!("p{i}"), t0)
                .expect("first request");
        }
        assert_eq!(limiter.len(), 1000);
        // After the sweep interval, all of them are full and forgotten; only the new
        // caller's bucket remains.
        let later = t0 + SWEEP_INTERVAL;
        limiter.check_at("new", later).expect("new caller");
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn a_busy_bucket_survives_a_sweep() {
        let limiter = RateLimiter::new(10, 0.1); // 100 s to refill
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.check_at("busy", t0).expect("burst");
        }
        let later = t0 + SWEEP_INTERVAL;
        // 60 s at 0.1/s refilled 6 tokens: the bucket was kept, not reset to 10.
        for _ in 0..6 {
            limiter.check_at("busy", later).expect("refilled token");
        }
        assert!(limiter.check_at("busy", later).is_err());
    }
}
