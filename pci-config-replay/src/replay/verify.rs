//! Checking a replayed configuration against the saved one.

use crate::caps::{msi, MSI_BASE};
use crate::config::ConfigSpace;
use crate::error::ReplayError;
use crate::host::InterruptKind;
use crate::state::ConfigSpaceState;

use super::FireVector;

/// Clears the pending bit of `kind`/`vector` in `state`.
fn clear_pending(state: &mut ConfigSpaceState, kind: InterruptKind, vector: u16) {
    match kind {
        InterruptKind::Msi => {
            if let Some(b) = state.config.get_mut(MSI_BASE + msi::PENDING_BITS) {
                *b &= !(msi::PENDING_VECTOR0 as u8);
            }
        }
        InterruptKind::Msix => {
            if let Some(w) = state.msix_pba.get_mut(usize::from(vector) / 64) {
                *w &= !(1u64 << (vector % 64));
            }
        }
    }
}

/// The first difference between `expected` and `now` in the config bytes, the MSI-X table
/// or the PBA.
fn first_difference(
    expected: &ConfigSpaceState,
    now: &ConfigSpaceState,
) -> Result<(), ReplayError> {
    let bytes = |b: &[u8]| b.iter().map(|&b| u64::from(b)).collect::<Vec<u64>>();
    let sections: [(&'static str, Vec<u64>, Vec<u64>); 3] = [
        (
            "config",
            bytes(&expected.config[..]),
            bytes(&now.config[..]),
        ),
        (
            "MSI-X table",
            bytes(&expected.msix_table),
            bytes(&now.msix_table),
        ),
        ("PBA", expected.msix_pba.clone(), now.msix_pba.clone()),
    ];
    for (what, want, have) in sections {
        if let Some((offset, (&s, &t))) = want
            .iter()
            .zip(have.iter())
            .enumerate()
            .find(|(_, (s, t))| s != t)
        {
            return Err(ReplayError::Diverged {
                what,
                offset,
                saved: s,
                target: t,
            });
        }
    }
    Ok(())
}

/// Checks the target now holds the saved bytes, except pending bits of vectors that
/// fired during the replay (delivering them cleared the bits).
pub(super) fn verify(
    dev: &ConfigSpace,
    saved: &ConfigSpaceState,
    fire: &[FireVector],
) -> Result<(), ReplayError> {
    let mut expected = saved.clone();
    for f in fire {
        clear_pending(&mut expected, f.kind, f.vector);
    }
    first_difference(&expected, &dev.state())
}

/// After a VMM replayed `saved` through a device's config region (and BAR0 for the MSI-X
/// table) and read the result back as `now`: checks `now` equals `saved`, except for
/// pending bits (the MSI pending bit, MSI-X PBA bits) that `saved` makes deliverable and
/// that the replay therefore delivered and cleared. A pending bit of a masked vector must
/// survive. Any other difference is a [`ReplayError`] naming the section and offset.
pub fn verify_replayed(
    saved: &ConfigSpaceState,
    now: &ConfigSpaceState,
) -> Result<(), ReplayError> {
    for (bar, (&s, &t)) in saved.bar_sizes.iter().zip(now.bar_sizes.iter()).enumerate() {
        if s != t {
            return Err(ReplayError::BarSizeMismatch {
                bar: bar as u8,
                saved: s,
                target: t,
            });
        }
    }
    if saved.msix_table.len() != now.msix_table.len() {
        return Err(ReplayError::MsixTableLength {
            saved: saved.msix_table.len(),
            target: now.msix_table.len(),
        });
    }
    if saved.msix_pba.len() != now.msix_pba.len() {
        return Err(ReplayError::PbaLength {
            saved: saved.msix_pba.len(),
            target: now.msix_pba.len(),
        });
    }
    let mut expected = saved.clone();
    let bus_master = saved.bus_master();
    let m = saved.msi();
    if bus_master && m.enabled && !m.masked && m.pending && !now.msi().pending {
        clear_pending(&mut expected, InterruptKind::Msi, 0);
    }
    let ctl = saved.msix_control();
    if bus_master && ctl.enabled && !ctl.function_mask {
        for vector in 0..saved.msix_vectors() {
            let deliverable = saved.msix_entry(vector).is_some_and(|e| !e.masked);
            if deliverable && saved.msix_pending(vector) && !now.msix_pending(vector) {
                clear_pending(&mut expected, InterruptKind::Msix, vector);
            }
        }
    }
    first_difference(&expected, now)
}
