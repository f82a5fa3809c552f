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
        let rate = rate as f64;
        Self {
            rate,
            burst: (rate / 100.0).max(64.0 * 1024.0),
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Account for `n` bytes, sleeping until the rate allows them.
    pub fn take(&mut self, n: usize) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            let wait = -self.tokens / self.rate;
            std::thread::sleep(Duration::from_secs_f64(wait));
            self.tokens = 0.0;
            self.last = Instant::now();
        }
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
}
