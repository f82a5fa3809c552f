//! The simulation clock region: how a simulated platform advances a device that lives in
//! another process.
//!
//! Real hardware runs on its own; a simulated device's engine is advanced by the platform
//! between vCPU steps (`vmm::SimHardware`), which is what makes a run, a stop point and a
//! switchover point exactly reproducible. Out of process the same clock goes through one
//! extra region that the server adds after the device's own regions, with a
//! vendor-specific type capability ([`CLOCK_REGION_TYPE`], [`CLOCK_REGION_SUBTYPE`]).
//! A client that does not know it (QEMU) never touches it. Every field is 8 bytes, read or
//! written whole:
//!
//! | offset | access | meaning |
//! |---|---|---|
//! | `ADVANCE` 0x00 | write | advance the engine by up to this many units |
//! | `RAN` 0x08 | read | units the last advance did |
//! | `WORK_DONE` 0x10 | read | units done since reset |
//! | `THROTTLE` 0x18 | write | slow the engine to (100 - value) percent |
//! | `POSITION` 0x20 | read | bit 32: mid-work; bits 0-31: offset inside the unit |
//! | `IRQ_STATUS` 0x28 | read | causes latched and not yet acknowledged |
//! | `DESCRIBE` 0x40.. | read | a one-line description, NUL-padded ([`DESCRIBE_LEN`] bytes) |

use std::fmt::Debug;

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
};

/// Type of the clock region: vendor-specific, vendor 0xffff (no PCI vendor; a project
/// extension, not a uAPI region type).
pub const CLOCK_REGION_TYPE: u32 = VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0xffff;
/// Subtype of the clock region.
pub const CLOCK_REGION_SUBTYPE: u32 = 1;
/// Size of the clock region.
pub const CLOCK_REGION_SIZE: u64 = 0x1000;
/// Region flags of the clock region.
pub const CLOCK_REGION_FLAGS: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

/// Write: advance by up to this many units.
pub const ADVANCE: u64 = 0x00;
/// Read: units the last advance did.
pub const RAN: u64 = 0x08;
/// Read: units done since reset.
pub const WORK_DONE: u64 = 0x10;
/// Write: throttle percent.
pub const THROTTLE: u64 = 0x18;
/// Read: position inside the current unit of work.
pub const POSITION: u64 = 0x20;
/// Bit of [`POSITION`]: inside a unit of work that spans several steps.
pub const POSITION_MID_WORK: u64 = 1 << 32;
/// Read: latched interrupt causes.
pub const IRQ_STATUS: u64 = 0x28;
/// Read: the description string.
pub const DESCRIBE: u64 = 0x40;
/// Length of the description field.
pub const DESCRIBE_LEN: usize = 256;

/// A device's engine, as the server advances it for the clock region.
pub trait Hardware: Send + Debug {
    /// Do up to `budget` units of work; the units done.
    fn advance(&mut self, budget: usize) -> usize;
    /// Units done since reset.
    fn work_done(&mut self) -> u64;
    /// Slow down by `percent`.
    fn set_throttle(&mut self, percent: u8);
    /// One line about the engine's state.
    fn describe(&mut self) -> String;
    /// (inside a multi-step unit, offset inside it, latched interrupt causes).
    fn position(&mut self) -> (bool, u32, u32);
}

/// The clock's register file on the server side.
#[derive(Debug, Default)]
pub(crate) struct ClockRegs {
    ran: u64,
}

impl ClockRegs {
    /// A read of the clock region.
    pub(crate) fn read(&mut self, hw: &mut dyn Hardware, offset: u64, out: &mut [u8]) -> bool {
        if offset >= DESCRIBE && offset + out.len() as u64 <= DESCRIBE + DESCRIBE_LEN as u64 {
            let mut s = hw.describe().into_bytes();
            s.resize(DESCRIBE_LEN, 0);
            let at = (offset - DESCRIBE) as usize;
            out.copy_from_slice(&s[at..at + out.len()]);
            return true;
        }
        if out.len() != 8 {
            return false;
        }
        let v = match offset {
            RAN => self.ran,
            WORK_DONE => hw.work_done(),
            POSITION => {
                let (mid, off, _) = hw.position();
                u64::from(off) | if mid { POSITION_MID_WORK } else { 0 }
            }
            IRQ_STATUS => u64::from(hw.position().2),
            _ => return false,
        };
        out.copy_from_slice(&v.to_le_bytes());
        true
    }

    /// A write of the clock region.
    pub(crate) fn write(&mut self, hw: &mut dyn Hardware, offset: u64, data: &[u8]) -> bool {
        let Ok(b) = <[u8; 8]>::try_from(data) else {
            return false;
        };
        let v = u64::from_le_bytes(b);
        match offset {
            ADVANCE => {
                // A budget is a small count; clamp what a hostile client asks for.
                let budget = v.min(1 << 20) as usize;
                self.ran = hw.advance(budget) as u64;
            }
            THROTTLE => hw.set_throttle(v.min(99) as u8),
            _ => return false,
        }
        true
    }
}
