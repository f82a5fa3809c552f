//! Replaying a saved configuration space onto a target device.
//!
//! ```text
//!  saved state ──► compatibility check (BAR sizes, read-only bits, MSI-X geometry)
//!                        │ refuse with the field and both values
//!                        ▼
//!  scratch copy of target:
//!   1. quiesce      COMMAND, MSI and MSI-X enables off          (guest write path)
//!   2. BARs         BAR0..BAR5 dwords, memory decode still off  (guest write path)
//!   3. device bits  status/error bits, MSI pending, PBA         (device path)
//!   4. COMMAND      decode and bus master on                    (guest write path)
//!   5. MSI          address, upper address, data, mask, enable  (guest write path)
//!   6. MSI-X        every table entry, then enable/function mask (guest write path)
//!   7. PM           PMCSR power state                           (guest write path)
//!   8. the rest     every other writable register               (guest write path)
//!   9. verify       bytes, table and PBA equal the saved ones
//!                        │
//!                        ▼
//!  commit scratch into target; resolve BAR map and routes against the target host
//! ```
//!
//! The target is modified only when every step succeeds.
//!
//! A VMM that reaches the device only through its config region (and BAR0 for the MSI-X
//! table) performs the same guest writes itself: [`replay_plan`] lists them as data
//! (steps 1, 2 and 4-8; step 3 is the device's own, restored from its context), and
//! [`verify_replayed`] checks what it reads back afterwards. [`replay`] is that plan
//! applied to a copy of the target with step 3 in its place.

use crate::bar::bar_sizes;
use crate::caps::field_at;
use crate::caps::msix::ENTRY_WRITABLE;
use crate::config::{ConfigChange, ConfigSpace};
use crate::error::{ReplayError, ResourceError};
use crate::host::{BarMapping, HostResources, InterruptKind, InterruptRoute};
use crate::params::{ConfigParams, MSIX_ENTRY_SIZE};
use crate::regs::CONFIG_SPACE_SIZE;
use crate::state::ConfigSpaceState;

/// A vector that must be injected when the guest resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FireVector {
    /// MSI or MSI-X.
    pub kind: InterruptKind,
    /// Vector number.
    pub vector: u16,
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// A vector that stays pending (masked) after the replay; it fires through the normal
/// write path when the guest unmasks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingVector {
    /// MSI or MSI-X.
    pub kind: InterruptKind,
    /// Vector number.
    pub vector: u16,
}

/// What the VMM must set up on the target after a successful replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayResult {
    /// BARs that decode, with the target host regions behind them.
    pub bar_map: Vec<BarMapping>,
    /// Enabled message vectors, with the target host sinks.
    pub interrupt_routes: Vec<InterruptRoute>,
    /// Vectors that were pending and deliverable: inject them on resume.
    pub fire: Vec<FireVector>,
    /// Vectors still pending behind a mask.
    pub pending: Vec<PendingVector>,
    /// Whether INTA# must be asserted on resume.
    pub intx_asserted: bool,
    /// Every change the replay's guest writes produced, in order (for logs and tests).
    pub changes: Vec<ConfigChange>,
}

pub(super) fn le(bytes: &[u8], offset: usize, len: usize) -> u32 {
    (0..len.min(4)).rev().fold(0u32, |acc, i| {
        (acc << 8) | u32::from(bytes.get(offset + i).copied().unwrap_or(0))
    })
}

/// Refuses a saved state that a device built like `target` could not have produced.
pub fn check_compatible(target: &ConfigSpace, saved: &ConfigSpaceState) -> Result<(), ReplayError> {
    let sizes = bar_sizes(target.params());
    for (bar, (&s, &t)) in saved.bar_sizes.iter().zip(sizes.iter()).enumerate() {
        if s != t {
            return Err(ReplayError::BarSizeMismatch {
                bar: bar as u8,
                saved: s,
                target: t,
            });
        }
    }
    let block = target.block();
    for off in 0..CONFIG_SPACE_SIZE {
        let ro = block.read_only_mask(off, 1);
        if le(&saved.config[..], off, 1) & ro != u32::from(block.u8(off)) & ro {
            let f = field_at(off);
            let ro = block.read_only_mask(f.offset, f.len);
            return Err(ReplayError::ReadOnlyMismatch {
                field: f.name,
                offset: f.offset as u16,
                saved: le(&saved.config[..], f.offset, f.len) & ro,
                target: block.read(f.offset, f.len) & ro,
            });
        }
    }
    let table = target.msix_table();
    if saved.msix_table.len() != table.entry_bytes().len() {
        return Err(ReplayError::MsixTableLength {
            saved: saved.msix_table.len(),
            target: table.entry_bytes().len(),
        });
    }
    if saved.msix_pba.len() != table.pba_words().len() {
        return Err(ReplayError::PbaLength {
            saved: saved.msix_pba.len(),
            target: table.pba_words().len(),
        });
    }
    for (vector, entry) in saved
        .msix_table
        .chunks_exact(MSIX_ENTRY_SIZE as usize)
        .enumerate()
    {
        for (dword, mask) in ENTRY_WRITABLE.iter().enumerate() {
            let bits = le(entry, dword * 4, 4) & !mask;
            if bits != 0 {
                return Err(ReplayError::MsixEntryReadOnly {
                    vector: vector as u16,
                    dword: dword as u8,
                    bits,
                });
            }
        }
    }
    let vectors = u32::from(table.vectors());
    for (i, word) in saved.msix_pba.iter().enumerate() {
        for bit in 0..64u32 {
            let vector = i as u32 * 64 + bit;
            if word & (1 << bit) != 0 && vector >= vectors {
                return Err(ReplayError::PbaBitOutOfRange { vector });
            }
        }
    }
    Ok(())
}

/// Copies every device-owned bit (status flags, error bits, pending bits) from the
/// saved state: the guest cannot set them, so the device path restores them.
fn restore_device_bits(dev: &mut ConfigSpace, saved: &ConfigSpaceState) {
    for off in 0..CONFIG_SPACE_SIZE {
        if dev.block().device_mask(off, 1) != 0 {
            let value = le(&saved.config[..], off, 1);
            dev.block_mut().set_device_bits(off, 1, 0xff, value);
        }
    }
    dev.msix_table_mut().restore_pba(&saved.msix_pba);
}

/// Replays `saved` onto `target` (a device built from the target's params) through the
/// guest's own masked write path, in the order in the module docs, and resolves the
/// result against the target's `host` resources. On error `target` is unchanged.
pub fn replay(
    target: &mut ConfigSpace,
    saved: &ConfigSpaceState,
    host: &HostResources,
) -> Result<ReplayResult, ReplayError> {
    check_compatible(target, saved)?;
    let plan = plan::build(&mut target.clone(), saved);
    let mut dev = target.clone();
    let mut changes = Vec::new();
    for (i, w) in plan.writes.iter().enumerate() {
        if i == plan.device_bits_at {
            restore_device_bits(&mut dev, saved);
        }
        changes.extend(w.apply(&mut dev));
    }

    let fire = fired(&changes);
    verify(&dev, saved, &fire)?;
    let bar_map = dev.bar_map(host).map_err(resources)?;
    let interrupt_routes = dev.interrupt_routes(host).map_err(resources)?;
    let mut pending = Vec::new();
    if dev.msi().pending {
        pending.push(PendingVector {
            kind: InterruptKind::Msi,
            vector: 0,
        });
    }
    for vector in 0..dev.params().msix_table_size {
        if dev.msix_pending(vector) {
            pending.push(PendingVector {
                kind: InterruptKind::Msix,
                vector,
            });
        }
    }
    let intx_asserted = dev.intx_asserted();
    *target = dev;
    Ok(ReplayResult {
        bar_map,
        interrupt_routes,
        fire,
        pending,
        intx_asserted,
        changes,
    })
}

fn resources(source: ResourceError) -> ReplayError {
    ReplayError::Resources { source }
}

fn fired(changes: &[ConfigChange]) -> Vec<FireVector> {
    changes
        .iter()
        .filter_map(|c| match *c {
            ConfigChange::MsiFire { address, data } => Some(FireVector {
                kind: InterruptKind::Msi,
                vector: 0,
                address,
                data,
            }),
            ConfigChange::MsixFire {
                vector,
                address,
                data,
            } => Some(FireVector {
                kind: InterruptKind::Msix,
                vector,
                address,
                data,
            }),
            _ => None,
        })
        .collect()
}

impl ConfigSpace {
    /// The `from_state` of this component: builds a fresh device from the target's
    /// `params` and [`replay`]s `saved` onto it.
    pub fn from_state(
        params: ConfigParams,
        saved: &ConfigSpaceState,
        host: &HostResources,
    ) -> Result<(ConfigSpace, ReplayResult), ReplayError> {
        let mut target =
            ConfigSpace::new(params).map_err(|source| ReplayError::Params { source })?;
        let result = replay(&mut target, saved, host)?;
        Ok((target, result))
    }
}

mod plan;
mod verify;

pub use plan::{replay_plan, ReplayWrite};
use verify::verify;
pub use verify::verify_replayed;

#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod tests;
