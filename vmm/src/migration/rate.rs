//! Bandwidth: parsing `--bandwidth` values and a token bucket that caps a stream's rate
//! (QEMU's max-bandwidth). What the link delivers is measured per pre-copy round, end to
//! end, by the source (`source.rs`).

use std::time::{Duration, Instant};

/// Parse a rate such as `10Gbit`, `1.25GB/s`, `800MiB/s`, `100Mbit/s` or a plain number of
/// bytes per second. Returns bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches("ps");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a rate (try 10Gbit, 1.25GB/s, 800MiB/s)"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "bit" | "b" => 1.0 / 8.0,
        "Kbit" | "kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "'{s}': unknown unit '{u}' (bit, Kbit, Mbit, Gbit, B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = n * mult;
    if !(v >= 1.0 && v.is_finite()) {
        return Err(format!("'{s}' is not a positive rate"));
    }
    Ok(v as u64)
}

/// A token bucket: `take(n)` sleeps as needed so that the long-run rate is `rate` bytes/s,
/// with bursts of at most `burst` bytes.
///
/// A sleep lasts longer than asked (the kernel's timer slack is 50 µs, and a busy machine
/// adds more), so the time slept is credited as it was, not as it was asked: at 10 Gbit/s
/// with 64 KiB pieces (52 µs each) a bucket that forgot the overshoot delivered about half
/// its rate.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket for `rate` bytes/s with a 10 ms burst.
    pub fn new(rate: u64) -> Self {
        Self::starting_at(rate, Instant::now())
    }

    fn starting_at(rate: u64, now: Instant) -> Self {
        let rate = rate as f64;
        Self {
            rate,
            burst: (rate / 100.0).max(64.0 * 1024.0),
            tokens: 0.0,
            last: now,
        }
    }

    /// The rate, bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Account for `n` bytes, sleeping until the rate allows them.
    pub fn take(&mut self, n: usize) {
        if let Some(wait) = self.take_at(n, Instant::now()) {
            std::thread::sleep(wait);
        }
    }

    /// Account for `n` bytes now; how long to wait before sending them, if at all (for a
    /// bucket shared behind a lock: the caller sleeps after letting go of it).
    pub fn reserve(&mut self, n: usize) -> Option<Duration> {
        self.take_at(n, Instant::now())
    }

    /// Account for `n` bytes at `now`; how long to wait before sending them, if at all.
    /// The debt stays in the bucket: the next call credits the whole time since `now`,
    /// however long the wait really lasted.
    fn take_at(&mut self, n: usize, now: Instant) -> Option<Duration> {
        let since = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + since * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("10Gbit"), Ok(1_250_000_000));
        assert_eq!(parse_rate("10Gbit/s"), Ok(1_250_000_000));
        assert_eq!(parse_rate("1.25GB/s"), Ok(1_250_000_000));
        assert_eq!(parse_rate("1MiB"), Ok(1 << 20));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10Xbit").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn bucket_caps_the_rate() {
        let mut b = TokenBucket::new(10 << 20); // 10 MiB/s
        let t = Instant::now();
        for _ in 0..20 {
            b.take(256 << 10); // 5 MiB in all
        }
        let el = t.elapsed().as_secs_f64();
        // 5 MiB at 10 MiB/s takes about 0.5 s (minus one burst); never much less.
        assert!(el > 0.4, "took {el} s");
    }

    /// Simulated time: `pieces` takes of `piece` bytes, each wait overslept by `over`.
    /// Returns the simulated seconds they took.
    fn simulate(rate: u64, piece: usize, pieces: usize, over: Duration) -> f64 {
        let t0 = Instant::now();
        let mut now = t0;
        let mut b = TokenBucket::starting_at(rate, now);
        for _ in 0..pieces {
            if let Some(w) = b.take_at(piece, now) {
                now += w + over;
            }
        }
        now.duration_since(t0).as_secs_f64()
    }

    #[test]
    fn oversleeping_does_not_slow_the_rate() {
        // 10 Gbit/s in 64 KiB pieces, every sleep 100 µs longer than asked (twice the
        // timer slack): 1 GiB must still take about 1 GiB / 1.25 GB/s.
        let (rate, piece, pieces) = (1_250_000_000u64, 64 << 10, 16 << 10);
        let ideal = (piece * pieces) as f64 / rate as f64;
        let got = simulate(rate, piece, pieces, Duration::from_micros(100));
        // The burst (10 ms) and one overshoot at the end are the only slack allowed.
        assert!(
            got < ideal + 0.0102,
            "{got:.4} s for what the cap allows in {ideal:.4} s"
        );
        // And the cap holds: never faster than the rate less one burst.
        assert!(got > ideal - 0.0101, "{got:.4} s, cap {ideal:.4} s");
    }

    #[test]
    fn the_cap_holds_when_sleeps_are_exact() {
        let (rate, piece, pieces) = (100_000_000u64, 4096, 100_000);
        let ideal = (piece * pieces) as f64 / rate as f64;
        let got = simulate(rate, piece, pieces, Duration::ZERO);
        assert!(
            (got - ideal).abs() < 0.011,
            "{got:.4} s against {ideal:.4} s"
        );
    }
}
