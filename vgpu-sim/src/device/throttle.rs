//! The auto-converge engine throttle, as QEMU throttles vCPUs: over windows of wall time,
//! the engine may be busy at most `100 - percent` percent of the time. It changes only when
//! commands run, never what they do, so the guest's output stays the same.
//!
//! Time comes from an [`EngineClock`], so that tests drive the throttle with a clock they
//! control instead of depending on how fast the machine runs the engine.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the throttle reads the time.
pub trait EngineClock: Send + Sync + Debug {
    /// Time since some fixed point; never goes backwards.
    fn now(&self) -> Duration;
}

/// The host's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl EngineClock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The throttle's state: the percentage and the current window.
#[derive(Debug)]
pub(crate) struct Throttle {
    clock: Arc<dyn EngineClock>,
    percent: u8,
    start: Duration,
    busy: Duration,
}

impl Throttle {
    /// Length of one accounting window.
    pub(crate) const WINDOW: Duration = Duration::from_millis(50);

    /// Off (0%), reading time from `clock`.
    pub(crate) fn new(clock: Arc<dyn EngineClock>) -> Self {
        let start = clock.now();
        Self {
            clock,
            percent: 0,
            start,
            busy: Duration::ZERO,
        }
    }

    /// Set the cut to `percent` (clamped to 99) and start a fresh window.
    pub(crate) fn set(&mut self, percent: u8) {
        self.percent = percent.min(99);
        self.start = self.clock.now();
        self.busy = Duration::ZERO;
    }

    /// The cut in percent.
    pub(crate) fn percent(&self) -> u8 {
        self.percent
    }

    /// Whether the engine may run now.
    pub(crate) fn allow(&mut self) -> bool {
        if self.percent == 0 {
            return true;
        }
        let now = self.clock.now();
        let wall = now.saturating_sub(self.start);
        if wall >= Self::WINDOW {
            self.start = now;
            self.busy = Duration::ZERO;
            return true;
        }
        let share = f64::from(100 - self.percent) / 100.0;
        self.busy.as_secs_f64() < wall.as_secs_f64() * share
    }

    /// The engine starts a busy period; pass the result to [`Self::end_busy`].
    pub(crate) fn start_busy(&self) -> Option<Duration> {
        (self.percent > 0).then(|| self.clock.now())
    }

    /// The busy period begun at `started` ends now.
    pub(crate) fn end_busy(&mut self, started: Option<Duration>) {
        if let Some(t) = started {
            self.busy += self.clock.now().saturating_sub(t);
        }
    }
}

/// A clock that tests set by hand.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct ManualClock {
    nanos: std::sync::atomic::AtomicU64,
    /// Added on every read: the cost of whatever ran between two reads.
    step_nanos: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl ManualClock {
    /// Move the clock forward by `d`.
    pub(crate) fn advance(&self, d: Duration) {
        self.nanos
            .fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Make every read advance the clock by `d` after it is read.
    pub(crate) fn step_each_read(&self, d: Duration) {
        self.step_nanos
            .store(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl EngineClock for ManualClock {
    fn now(&self) -> Duration {
        use std::sync::atomic::Ordering::SeqCst;
        let step = self.step_nanos.load(SeqCst);
        Duration::from_nanos(self.nanos.fetch_add(step, SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(clock: &Arc<ManualClock>, ms: u64) {
        let now = clock.now().as_millis() as u64;
        clock.advance(Duration::from_millis(ms - now));
    }

    #[test]
    fn the_engine_gets_its_share_of_wall_time() {
        let clock = Arc::new(ManualClock::default());
        let mut t = Throttle::new(clock.clone());
        assert!(t.allow(), "off: always allowed");
        t.set(75);
        at(&clock, 10);
        assert!(t.allow(), "nothing spent yet");
        let s = t.start_busy();
        at(&clock, 14);
        t.end_busy(s);
        assert!(!t.allow(), "4 ms of 14 is more than 25%");
        at(&clock, 20);
        assert!(t.allow(), "4 ms of 20 is less than 25%");
        let s = t.start_busy();
        at(&clock, 45);
        t.end_busy(s);
        assert!(!t.allow(), "29 ms of 45 is more than 25%");
        at(&clock, 50);
        assert!(t.allow(), "a new window starts afresh");
        assert_eq!(t.busy, Duration::ZERO);
        t.set(200);
        assert_eq!(t.percent(), 99, "clamped");
    }
}
