//! Rate-limited warnings about guest misbehaviour.
//!
//! A guest can hit a bad offset in a loop; the log must not follow it. Each kind of
//! misbehaviour keeps a counter and is logged on its 1st, 2nd, 4th, 8th... occurrence, with
//! the count so far.

/// The kinds of guest misbehaviour the device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misbehaviour {
    /// An access to an offset with no register.
    UnknownOffset,
    /// An access of the wrong width or alignment.
    BadAccess,
    /// A write to a read-only register, or one not writable in the current state.
    RefusedWrite,
    /// A GTT entry outside guest RAM or with reserved bits.
    BadGttEntry,
}

const KINDS: usize = 4;

/// Counters of guest misbehaviour.
#[derive(Debug, Default, Clone)]
pub(crate) struct GuestWarnings {
    counts: [u64; KINDS],
}

impl GuestWarnings {
    /// Count one occurrence; `Some(count)` when this one should be logged.
    pub(crate) fn hit(&mut self, kind: Misbehaviour) -> Option<u64> {
        let c = &mut self.counts[kind as usize];
        *c = c.wrapping_add(1);
        c.is_power_of_two().then_some(*c)
    }
}

/// Log a warning about guest misbehaviour, rate-limited per kind.
macro_rules! guest_warn {
    ($dev:expr, $kind:expr, $msg:literal, $($kv:tt)+) => {
        if let Some(count) = $dev.warn.hit($kind) {
            slog::warn!($dev.log, $msg; "times" => count, $($kv)+);
        }
    };
}
pub(crate) use guest_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_powers_of_two() {
        let mut w = GuestWarnings::default();
        let logged: Vec<u64> = (0..20)
            .filter_map(|_| w.hit(Misbehaviour::BadAccess))
            .collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
        assert_eq!(w.hit(Misbehaviour::UnknownOffset), Some(1));
    }
}
