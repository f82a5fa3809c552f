//! Discovering a device's [`ConfigParams`] through configuration reads and writes alone,
//! as firmware or a VMM's vfio-pci does: IDs, the capability list, BAR sizing, MSI-X.
//!
//! ```text
//!  IDs (vendor, device, subsystem, revision) ─► Status: capability list present
//!  capability list from 0x34 ─► MSI-X: table size, table/PBA offset and BIR (must be 0)
//!  COMMAND: memory and I/O decode off
//!    BAR0, BAR2: read, write all ones to both dwords, read back, restore both dwords
//!  COMMAND restored
//!  ─► ConfigParams::validate
//! ```
//!
//! The probe restores every register it wrote, also when it fails half-way (as far as the
//! port lets it).

use snafu::{ensure, ResultExt};

use crate::caps::msix;
use crate::config::ConfigSpace;
use crate::error::probe_error::{
    BarNotImplementedSnafu, CapabilityListSnafu, IoBarSnafu, MsixBirSnafu, NoCapabilitiesSnafu,
    NoMsixSnafu, Not64BitSnafu, NotPresentSnafu, ParamsSnafu, PortSnafu, PrefetchableSnafu,
};
use crate::error::{PortError, ProbeError};
use crate::params::ConfigParams;
use crate::regs::{
    BAR0, BAR_IO_SPACE, BAR_MEM_INFO_MASK, BAR_MEM_PREFETCHABLE, BAR_MEM_TYPE_64,
    BAR_MEM_TYPE_MASK, CAPABILITIES_POINTER, CAP_ID_MSIX, CAP_POINTER_MASK, COMMAND,
    COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, DEVICE_ID, REVISION_ID, STATUS,
    STATUS_CAPABILITIES_LIST, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
};

/// Configuration-space access by offset: a VFIO config region, ECAM, or a
/// [`ConfigSpace`] in tests. Accesses are 1, 2 or 4 bytes, naturally aligned.
pub trait ConfigPort {
    /// Reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), PortError>;
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), PortError>;
}

impl ConfigPort for ConfigSpace {
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), PortError> {
        ConfigSpace::read(self, offset, data);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), PortError> {
        ConfigSpace::write(self, offset, data);
        Ok(())
    }
}

/// The BARs the model implements: (BAR number, prefetchable).
const MODEL_BARS: [(u8, bool); 2] = [(0, false), (2, true)];

/// A [`ConfigPort`] with typed little-endian helpers and error context.
struct Port<'a>(&'a mut dyn ConfigPort);

impl Port<'_> {
    fn read<const N: usize>(
        &mut self,
        offset: usize,
        doing: &'static str,
    ) -> Result<[u8; N], ProbeError> {
        let mut b = [0u8; N];
        let offset = offset as u64;
        self.0
            .read(offset, &mut b)
            .context(PortSnafu { doing, offset })?;
        Ok(b)
    }

    fn u8(&mut self, offset: usize, doing: &'static str) -> Result<u8, ProbeError> {
        self.read::<1>(offset, doing).map(|b| b[0])
    }

    fn u16(&mut self, offset: usize, doing: &'static str) -> Result<u16, ProbeError> {
        self.read(offset, doing).map(u16::from_le_bytes)
    }

    fn u32(&mut self, offset: usize, doing: &'static str) -> Result<u32, ProbeError> {
        self.read(offset, doing).map(u32::from_le_bytes)
    }

    fn w16(&mut self, offset: usize, v: u16, doing: &'static str) -> Result<(), ProbeError> {
        let offset = offset as u64;
        self.0
            .write(offset, &v.to_le_bytes())
            .context(PortSnafu { doing, offset })
    }

    fn w32(&mut self, offset: usize, v: u32, doing: &'static str) -> Result<(), ProbeError> {
        let offset = offset as u64;
        self.0
            .write(offset, &v.to_le_bytes())
            .context(PortSnafu { doing, offset })
    }
}

/// Walks the capability list and returns the offset of the MSI-X capability.
fn find_msix(port: &mut Port<'_>) -> Result<usize, ProbeError> {
    let status = port.u16(STATUS, "reading Status")?;
    ensure!(
        status & STATUS_CAPABILITIES_LIST != 0,
        NoCapabilitiesSnafu { status }
    );
    let mut found = Vec::new();
    let mut visited = [false; 256];
    let mut ptr =
        port.u8(CAPABILITIES_POINTER, "reading the capabilities pointer")? & CAP_POINTER_MASK;
    while ptr != 0 {
        ensure!(
            ptr >= 0x40,
            CapabilityListSnafu {
                pointer: ptr,
                reason: "points into the header",
            }
        );
        let seen = &mut visited[usize::from(ptr)];
        ensure!(
            !*seen,
            CapabilityListSnafu {
                pointer: ptr,
                reason: "loops",
            }
        );
        *seen = true;
        let off = usize::from(ptr);
        let id = port.u8(off, "reading a capability ID")?;
        if id == CAP_ID_MSIX {
            return Ok(off);
        }
        found.push(id);
        ptr = port.u8(off + 1, "reading a capability's next pointer")? & CAP_POINTER_MASK;
    }
    NoMsixSnafu { found }.fail()
}

/// Sizes one 64-bit memory BAR: all ones to both dwords, read back, restore both dwords
/// (also when reading back failed).
fn size_bar(port: &mut Port<'_>, bar: u8, prefetchable: bool) -> Result<u64, ProbeError> {
    let off = BAR0 + 4 * usize::from(bar);
    let lo = port.u32(off, "reading a BAR")?;
    ensure!(lo & BAR_IO_SPACE == 0, IoBarSnafu { bar, value: lo });
    ensure!(
        lo & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64,
        Not64BitSnafu { bar, value: lo }
    );
    let found = lo & BAR_MEM_PREFETCHABLE != 0;
    ensure!(
        found == prefetchable,
        PrefetchableSnafu {
            bar,
            found,
            expected: prefetchable
        }
    );
    let hi = port.u32(off + 4, "reading a BAR's upper dword")?;
    let sized = (|| {
        port.w32(off, u32::MAX, "writing the sizing pattern to a BAR")?;
        port.w32(off + 4, u32::MAX, "writing the sizing pattern to a BAR")?;
        let lo = port.u32(off, "reading back a sized BAR")?;
        let hi = port.u32(off + 4, "reading back a sized BAR")?;
        Ok((u64::from(hi) << 32) | u64::from(lo & !BAR_MEM_INFO_MASK))
    })();
    let restored = port.w32(off, lo, "restoring a BAR").and(port.w32(
        off + 4,
        hi,
        "restoring a BAR's upper dword",
    ));
    let mask = sized?;
    restored?;
    ensure!(mask != 0, BarNotImplementedSnafu { bar });
    Ok((!mask).wrapping_add(1))
}

/// Sizes the model's BARs with memory and I/O decode off, then restores COMMAND.
fn size_bars(port: &mut Port<'_>) -> Result<[u64; 2], ProbeError> {
    let cmd = port.u16(COMMAND, "reading COMMAND")?;
    port.w16(
        COMMAND,
        cmd & !(COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE),
        "turning decode off for BAR sizing",
    )?;
    let mut sizes = [0u64; 2];
    let mut sized = Ok(());
    for (size, (bar, prefetchable)) in sizes.iter_mut().zip(MODEL_BARS) {
        match size_bar(port, bar, prefetchable) {
            Ok(s) => *size = s,
            Err(e) => {
                sized = Err(e);
                break;
            }
        }
    }
    let restored = port.w16(COMMAND, cmd, "restoring COMMAND after BAR sizing");
    sized?;
    restored?;
    Ok(sizes)
}

/// Reads a device's identity and resources through `port` and returns the params a
/// [`ConfigSpace`] would need to be that device, validated. Every register written while
/// sizing is restored.
pub fn probe(port: &mut dyn ConfigPort) -> Result<ConfigParams, ProbeError> {
    let mut port = Port(port);
    let vendor_id = port.u16(VENDOR_ID, "reading the vendor ID")?;
    ensure!(vendor_id != u16::MAX, NotPresentSnafu { vendor: vendor_id });
    let device_id = port.u16(DEVICE_ID, "reading the device ID")?;
    let revision = port.u8(REVISION_ID, "reading the revision ID")?;
    let subsystem_vendor_id = port.u16(SUBSYSTEM_VENDOR_ID, "reading the subsystem vendor ID")?;
    let subsystem_id = port.u16(SUBSYSTEM_ID, "reading the subsystem ID")?;

    let cap = find_msix(&mut port)?;
    let ctl = port.u16(cap + msix::CONTROL, "reading MSI-X message control")?;
    let table = port.u32(cap + msix::TABLE_OFFSET, "reading the MSI-X table offset")?;
    let pba = port.u32(cap + msix::PBA_OFFSET, "reading the MSI-X PBA offset")?;
    for (what, reg) in [("table", table), ("PBA", pba)] {
        let bir = (reg & msix::BIR_MASK) as u8;
        ensure!(bir == 0, MsixBirSnafu { what, bir });
    }

    let [bar0_size, bar2_size] = size_bars(&mut port)?;
    let params = ConfigParams {
        vendor_id,
        device_id,
        subsystem_vendor_id,
        subsystem_id,
        revision,
        bar0_size,
        bar2_size,
        msix_table_size: (ctl & msix::CTL_TABLE_SIZE_MASK) + 1,
        msix_table_offset: u64::from(table & !msix::BIR_MASK),
        msix_pba_offset: u64::from(pba & !msix::BIR_MASK),
    };
    params.validate().context(ParamsSnafu)?;
    Ok(params)
}

#[cfg(test)]
mod tests;
