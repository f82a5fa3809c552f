//! One monotonic clock for both processes of a migration.
//!
//! Downtime is measured from the source's vCPU stop to the target's vCPU resume. Both run
//! on one host in the demo and tests, so `CLOCK_MONOTONIC` (system-wide, unlike Rust's
//! opaque `Instant`) gives timestamps the two processes can subtract.

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on
    // Linux, and clock_gettime writes nothing beyond the struct.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds between two `monotonic_ns` readings.
pub fn ms_between(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_monotonic() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b > a && ms_between(a, b) >= 2.0, "{a} {b}");
    }
}
