//! The convergence policy: after each pre-copy round, switch over, go on, throttle the
//! engine (auto-converge) or give up. Pure: the round's figures in, a decision out.

use std::time::Duration;

use super::options::SourceOptions;

/// Rounds auto-converge may add to `max_rounds` while its throttle takes effect.
pub(super) const AUTO_CONVERGE_EXTRA_ROUNDS: u32 = 30;
/// Rounds below which pre-copy goes on while each round halves the remainder.
const MAX_EXTRA_ROUNDS: u32 = 6;
/// Assumed target load speed for the estimate, bytes/s.
const TARGET_LOAD_RATE: f64 = 2e9;
/// Fixed target work for the estimate, ms.
const TARGET_FIXED_MS: f64 = 1.0;

/// What to do after a pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Run another round.
    Continue,
    /// The remainder fits the downtime limit: stop the guest and copy the rest.
    Switchover,
    /// Run another round with the engine throttled to this percentage.
    Throttle(u32),
    /// Out of rounds without converging.
    GiveUp,
}

/// The limits the policy works within (from [`SourceOptions`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Downtime limit.
    pub downtime_limit: Duration,
    /// Most pre-copy rounds before giving up (or throttling harder).
    pub max_rounds: u32,
    /// Throttle the engine when the dirty rate outruns the bandwidth.
    pub auto_converge: bool,
}

impl Limits {
    /// The limits `opts` sets.
    pub fn of(opts: &SourceOptions) -> Self {
        Self {
            downtime_limit: opts.downtime_limit,
            max_rounds: opts.max_rounds,
            auto_converge: opts.auto_converge,
        }
    }
}

/// The figures of the round just done.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundFigures {
    /// Rounds done, this one included.
    pub round: u32,
    /// Bytes still to move (estimate).
    pub remaining: u64,
    /// `remaining` after the previous round (`u64::MAX` after the first).
    pub prev_remaining: u64,
    /// Bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Dirty rate in bytes/s.
    pub dirty_rate: f64,
    /// Engine throttle now, percent.
    pub throttle: u32,
}

/// The downtime expected if the source switched over with `remaining` bytes to move at
/// `bandwidth` bytes/s, ms.
pub(super) fn expected_downtime_ms(remaining: u64, bandwidth: f64) -> f64 {
    remaining as f64 / bandwidth * 1e3 + remaining as f64 / TARGET_LOAD_RATE * 1e3 + TARGET_FIXED_MS
}

/// What to do after the round `f`.
pub(super) fn decide(f: &RoundFigures, limits: &Limits) -> Decision {
    let limit_s = limits.downtime_limit.as_secs_f64();
    // Switch over once the remainder fits the limit (as QEMU does) — unless the last
    // round still halved it: then one more short round buys a smaller downtime cheaply.
    let still_shrinking =
        f.remaining.saturating_mul(2) < f.prev_remaining && f.round < MAX_EXTRA_ROUNDS;
    if expected_downtime_ms(f.remaining, f.bandwidth) <= limit_s * 1e3 && !still_shrinking {
        return Decision::Switchover;
    }
    if f.round >= limits.max_rounds {
        if limits.auto_converge && f.round < limits.max_rounds + AUTO_CONVERGE_EXTRA_ROUNDS {
            // Out of rounds but throttling: give the throttle room to take effect.
        } else {
            return Decision::GiveUp;
        }
    }
    let throttle = if limits.auto_converge && f.dirty_rate > f.bandwidth * 0.5 && f.round >= 2 {
        // As QEMU's cpu-throttle-initial (20%) and -increment (10%).
        Some((f.throttle + if f.throttle == 0 { 20 } else { 10 }).min(99))
    } else {
        None
    };
    if f.round >= limits.max_rounds + AUTO_CONVERGE_EXTRA_ROUNDS {
        return Decision::GiveUp;
    }
    match throttle {
        Some(pct) => Decision::Throttle(pct),
        None => Decision::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn limits(max_rounds: u32, auto_converge: bool) -> Limits {
        Limits {
            downtime_limit: Duration::from_millis(300),
            max_rounds,
            auto_converge,
        }
    }

    /// A round at 1 GB/s with `remaining` left, `prev` left the round before.
    fn figures(round: u32, remaining: u64, prev: u64) -> RoundFigures {
        RoundFigures {
            round,
            remaining,
            prev_remaining: prev,
            bandwidth: 1e9,
            dirty_rate: 0.0,
            throttle: 0,
        }
    }

    /// Far more than 300 ms at 1 GB/s.
    const TOO_MUCH: u64 = 1 << 40;

    #[test]
    fn expected_downtime_counts_wire_load_and_fixed_work() {
        assert_eq!(expected_downtime_ms(0, 1e9), TARGET_FIXED_MS);
        let ms = expected_downtime_ms(1_000_000_000, 1e9);
        assert!((ms - (1000.0 + 500.0 + 1.0)).abs() < 1e-9, "{ms}");
    }

    #[test]
    fn switches_over_once_the_remainder_fits_and_stopped_halving() {
        let l = limits(30, false);
        // Fits, and did not halve since the last round.
        assert_eq!(decide(&figures(3, MIB, MIB), &l), Decision::Switchover);
        assert_eq!(
            decide(&figures(3, MIB, MIB * 3 / 2), &l),
            Decision::Switchover
        );
        // Nothing left.
        assert_eq!(decide(&figures(3, 0, 0), &l), Decision::Switchover);
        // Too much left, however it shrank.
        assert_eq!(
            decide(&figures(3, TOO_MUCH, TOO_MUCH), &l),
            Decision::Continue
        );
    }

    #[test]
    fn keeps_going_while_a_round_halves_the_remainder() {
        let l = limits(30, false);
        // The first round always halves (from u64::MAX).
        assert_eq!(decide(&figures(1, MIB, u64::MAX), &l), Decision::Continue);
        for round in 1..MAX_EXTRA_ROUNDS {
            assert_eq!(
                decide(&figures(round, MIB, 4 * MIB), &l),
                Decision::Continue
            );
        }
        // From MAX_EXTRA_ROUNDS on, a remainder that fits switches over even if halved.
        assert_eq!(
            decide(&figures(MAX_EXTRA_ROUNDS, MIB, 4 * MIB), &l),
            Decision::Switchover
        );
    }

    #[test]
    fn does_not_converge_after_max_rounds() {
        let l = limits(5, false);
        for round in 1..5 {
            assert_eq!(
                decide(&figures(round, TOO_MUCH, TOO_MUCH), &l),
                Decision::Continue
            );
        }
        assert_eq!(
            decide(&figures(5, TOO_MUCH, TOO_MUCH), &l),
            Decision::GiveUp
        );
        assert_eq!(
            decide(&figures(6, TOO_MUCH, TOO_MUCH), &l),
            Decision::GiveUp
        );
        // A remainder that fits at the last round still switches over.
        assert_eq!(decide(&figures(5, MIB, MIB), &l), Decision::Switchover);
    }

    #[test]
    fn auto_converge_steps_20_then_10_capped_at_99() {
        let l = limits(30, true);
        let at = |round: u32, throttle: u32, dirty_rate: f64| {
            let mut f = figures(round, TOO_MUCH, TOO_MUCH);
            f.throttle = throttle;
            f.dirty_rate = dirty_rate;
            decide(&f, &l)
        };
        // The dirty rate outruns half the bandwidth from round 2 on.
        assert_eq!(at(2, 0, 6e8), Decision::Throttle(20));
        assert_eq!(at(3, 20, 6e8), Decision::Throttle(30));
        assert_eq!(at(4, 30, 6e8), Decision::Throttle(40));
        assert_eq!(at(9, 90, 6e8), Decision::Throttle(99));
        assert_eq!(at(10, 95, 6e8), Decision::Throttle(99));
        assert_eq!(at(11, 99, 6e8), Decision::Throttle(99));
        // Not before round 2, nor when the dirty rate is at most half the bandwidth.
        assert_eq!(at(1, 0, 6e8), Decision::Continue);
        assert_eq!(at(2, 0, 5e8), Decision::Continue);
        assert_eq!(at(2, 0, 1e8), Decision::Continue);
        // Not without auto-converge.
        let mut f = figures(2, TOO_MUCH, TOO_MUCH);
        f.dirty_rate = 6e8;
        assert_eq!(decide(&f, &limits(30, false)), Decision::Continue);
        // A remainder that fits switches over whatever the dirty rate.
        let mut f = figures(3, MIB, MIB);
        f.dirty_rate = 6e8;
        assert_eq!(decide(&f, &l), Decision::Switchover);
    }

    #[test]
    fn auto_converge_allows_extra_rounds() {
        let l = limits(5, true);
        let at = |round: u32, dirty_rate: f64| {
            let mut f = figures(round, TOO_MUCH, TOO_MUCH);
            f.dirty_rate = dirty_rate;
            f.throttle = 50;
            decide(&f, &l)
        };
        let last = 5 + AUTO_CONVERGE_EXTRA_ROUNDS;
        for round in 5..last {
            assert_eq!(at(round, 0.0), Decision::Continue, "round {round}");
            assert_eq!(at(round, 6e8), Decision::Throttle(60), "round {round}");
        }
        assert_eq!(at(last, 0.0), Decision::GiveUp);
        assert_eq!(at(last, 6e8), Decision::GiveUp);
        assert_eq!(at(last + 1, 6e8), Decision::GiveUp);
    }
}
