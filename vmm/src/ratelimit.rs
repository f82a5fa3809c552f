//! A token bucket for warnings about guest misbehaviour: a misbehaving guest must not flood
//! the log.

use std::time::{Duration, Instant};

/// Allows `burst` events, refilled at one per `period`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    burst: u32,
    tokens: u32,
    period: Duration,
    last: Instant,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter allowing `burst` events, then one per `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            tokens: burst,
            period,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// Whether an event may be logged now.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill =
            (now.duration_since(self.last).as_nanos() / self.period.as_nanos().max(1)) as u32;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Events suppressed so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new(10, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppress() {
        let mut r = RateLimit::new(3, Duration::from_secs(3600));
        assert!(r.allow() && r.allow() && r.allow());
        assert!(!r.allow());
        assert_eq!(r.suppressed(), 1);
    }
}
