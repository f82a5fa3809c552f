//! The replay as data: the ordered guest writes that rebuild a saved configuration, for a
//! VMM that reaches the device only through its config region and BAR0.

use crate::caps::{msi, msix, pm, MSIX_BASE, MSI_BASE, PM_BASE};
use crate::config::{ConfigChange, ConfigSpace};
use crate::error::ReplayError;
use crate::regs::{BAR0, BAR_COUNT, COMMAND, CONFIG_SPACE_SIZE};
use crate::state::ConfigSpaceState;

use super::{check_compatible, le};

/// One guest write of a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayWrite {
    /// A configuration-space write of 1, 2 or 4 bytes at `offset`.
    Config {
        /// Offset in configuration space.
        offset: u64,
        /// The bytes written, little-endian.
        data: Vec<u8>,
    },
    /// A DWORD write into the MSI-X table. `offset` is relative to the table's start (in
    /// BAR0 the table sits at [`ConfigSpace::msix_table_range`]`.start`).
    MsixTable {
        /// Offset from the start of the MSI-X table.
        offset: u64,
        /// The DWORD written, little-endian.
        data: [u8; 4],
    },
}

impl ReplayWrite {
    /// Performs the write on `dev` through its guest paths; returns what it changed.
    pub fn apply(&self, dev: &mut ConfigSpace) -> Vec<ConfigChange> {
        match self {
            ReplayWrite::Config { offset, data } => dev.write(*offset, data),
            ReplayWrite::MsixTable { offset, data } => dev.msix_table_write(*offset, data),
        }
    }
}

/// The writes of a replay, and where the device-owned bits belong among them.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) writes: Vec<ReplayWrite>,
    /// Index of the first write after the BARs: the device path restores the device-owned
    /// bits before it (a VMM cannot; the device carries them in its own context).
    pub(super) device_bits_at: usize,
}

/// Applies writes to a simulation of the target and records them.
struct Planner<'a> {
    dev: &'a mut ConfigSpace,
    writes: Vec<ReplayWrite>,
}

impl Planner<'_> {
    fn push(&mut self, w: ReplayWrite) {
        w.apply(self.dev);
        self.writes.push(w);
    }

    fn config(&mut self, offset: usize, data: &[u8]) {
        self.push(ReplayWrite::Config {
            offset: offset as u64,
            data: data.to_vec(),
        });
    }

    /// The saved value of `len` bytes at `offset`, write-1-to-clear bits written as 0 so
    /// they are left alone.
    fn saved(&mut self, saved: &ConfigSpaceState, offset: usize, len: usize) {
        let value = le(&saved.config[..], offset, len) & !self.dev.block().w1c_mask(offset, len);
        let bytes = value.to_le_bytes();
        self.config(offset, bytes.get(..len).unwrap_or(&[]));
    }
}

/// Builds the plan by performing it on `dev` (a copy of the target): the last step, the
/// writable dwords that still differ, depends on the state the earlier writes reached.
pub(super) fn build(dev: &mut ConfigSpace, saved: &ConfigSpaceState) -> Plan {
    let mut p = Planner {
        dev,
        writes: Vec::new(),
    };
    // 1. Quiesce: decode, bus master and both message enables off.
    p.config(COMMAND, &0u16.to_le_bytes());
    p.config(MSI_BASE + msi::CONTROL, &0u16.to_le_bytes());
    p.config(MSIX_BASE + msix::CONTROL, &0u16.to_le_bytes());
    // 2. BARs, memory decode still off.
    for bar in 0..BAR_COUNT {
        p.saved(saved, BAR0 + 4 * bar, 4);
    }
    let device_bits_at = p.writes.len();
    // 3. COMMAND: decode and bus master.
    p.saved(saved, COMMAND, 2);
    // 4. MSI registers, enable last.
    for (reg, len) in [
        (msi::ADDRESS_LO, 4),
        (msi::ADDRESS_HI, 4),
        (msi::DATA, 2),
        (msi::MASK_BITS, 4),
        (msi::CONTROL, 2),
    ] {
        p.saved(saved, MSI_BASE + reg, len);
    }
    // 5. Every MSI-X table dword, then enable and function mask.
    for (i, dword) in saved.msix_table.chunks_exact(4).enumerate() {
        let data = [dword[0], dword[1], dword[2], dword[3]];
        p.push(ReplayWrite::MsixTable {
            offset: 4 * i as u64,
            data,
        });
    }
    p.saved(saved, MSIX_BASE + msix::CONTROL, 2);
    // 6. Power state.
    p.saved(saved, PM_BASE + pm::PMCSR, 2);
    // 7. Every other writable dword that still differs.
    for off in (0..CONFIG_SPACE_SIZE).step_by(4) {
        let w = p.dev.block().writable_mask(off, 4);
        if w != 0 && p.dev.block().u32(off) & w != le(&saved.config[..], off, 4) & w {
            p.saved(saved, off, 4);
        }
    }
    Plan {
        writes: p.writes,
        device_bits_at,
    }
}

/// The guest writes [`crate::replay`] performs to rebuild `saved` on a device like
/// `target`, in order, as data: quiesce (COMMAND, MSI and MSI-X control 0), BARs,
/// COMMAND, MSI registers, MSI-X table DWORDs, MSI-X control, PMCSR, then every remaining
/// writable DWORD that differs. `target` is not modified (the plan is computed on a copy).
///
/// Device-owned bits (MSI-X PBA, MSI pending, status flags) are not guest-writable and so
/// are not in the plan: the device restores them from its own context.
pub fn replay_plan(
    target: &ConfigSpace,
    saved: &ConfigSpaceState,
) -> Result<Vec<ReplayWrite>, ReplayError> {
    check_compatible(target, saved)?;
    let mut sim = target.clone();
    Ok(build(&mut sim, saved).writes)
}
