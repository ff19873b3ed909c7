//! The admin API's rate limit: one token bucket per admin token.
//!
//! It owns the buckets and their arithmetic. It must never block or sleep: a request over the
//! limit is answered at once with the time to wait. Keys are token names (and one key for
//! unauthenticated attempts), so the map holds as many buckets as there are configured tokens,
//! plus one.
//!
//! tower's `RateLimit` does not fit: it is one budget per service (not per token), and it
//! makes requests wait instead of answering 429.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, `burst` deep, refilled at `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens per second; 0: no limit.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate_per_second` requests per second per key with bursts of `burst`; a rate of 0
    /// limits nothing.
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket at `now`: `Err(wait)` when it is empty, with how
    /// long until it holds one again.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        // A poisoned lock only means another request panicked mid-update; the numbers in it
        // are still numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now.max(bucket.at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("a", t0).is_ok());
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(490) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(limiter.check("b", t0).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check("a", t1).is_ok());
        assert!(limiter.check("a", t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check("a", t2).is_ok());
        }
        assert!(limiter.check("a", t2).is_err());
    }

    #[test]
    fn a_rate_of_zero_limits_nothing() {
        let limiter = RateLimiter::new(0, 1);
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check("a", now).is_ok());
        }
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(limiter.check("a", t0).is_ok());
        assert!(limiter.check("a", t0 - Duration::from_secs(5)).is_err());
        assert!(limiter.check("a", t0 + Duration::from_secs(1)).is_ok());
    }
}
