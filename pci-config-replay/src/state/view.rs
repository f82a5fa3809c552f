//! What a saved (or read-back) [`ConfigSpaceState`] means for the host, computed from its
//! bytes alone: the same answers [`ConfigSpace::bar_map`] and
//! [`ConfigSpace::interrupt_routes`] give for a device whose `state()` it is.
//!
//! A VMM that reaches the device's configuration only through region reads builds a
//! `ConfigSpaceState` from what it read and asks it here, without a live [`ConfigSpace`].
//!
//! [`ConfigSpace`]: crate::ConfigSpace
//! [`ConfigSpace::bar_map`]: crate::ConfigSpace::bar_map
//! [`ConfigSpace::interrupt_routes`]: crate::ConfigSpace::interrupt_routes

use crate::caps::msi::{self, MsiConfig};
use crate::caps::msix::{self, MsixControl, MsixEntry};
use crate::caps::{MSIX_BASE, MSI_BASE};
use crate::error::ResourceError;
use crate::host::{BarMapping, HostResources, InterruptKind, InterruptRoute};
use crate::params::MSIX_ENTRY_SIZE;
use crate::regs::{
    BAR0, BAR_COUNT, BAR_IO_SPACE, BAR_MEM_INFO_MASK, BAR_MEM_PREFETCHABLE, BAR_MEM_TYPE_64,
    BAR_MEM_TYPE_MASK, COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE,
};

use super::ConfigSpaceState;

impl ConfigSpaceState {
    fn cfg(&self, offset: usize, len: usize) -> u32 {
        (0..len.min(4)).rev().fold(0u32, |acc, i| {
            (acc << 8) | u32::from(self.config.get(offset + i).copied().unwrap_or(0))
        })
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.cfg(COMMAND, 2) as u16
    }

    /// Whether Memory Space decode is enabled.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Whether Bus Master is enabled.
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// The MSI capability as the state holds it.
    pub fn msi(&self) -> MsiConfig {
        let base = MSI_BASE;
        let lo = u64::from(self.cfg(base + msi::ADDRESS_LO, 4));
        let hi = u64::from(self.cfg(base + msi::ADDRESS_HI, 4));
        MsiConfig {
            enabled: self.cfg(base + msi::CONTROL, 2) as u16 & msi::CTL_ENABLE != 0,
            address: (hi << 32) | lo,
            data: self.cfg(base + msi::DATA, 2),
            masked: self.cfg(base + msi::MASK_BITS, 4) & msi::MASK_VECTOR0 != 0,
            pending: self.cfg(base + msi::PENDING_BITS, 4) & msi::PENDING_VECTOR0 != 0,
        }
    }

    /// The MSI-X enable and function mask.
    pub fn msix_control(&self) -> MsixControl {
        let ctl = self.cfg(MSIX_BASE + msix::CONTROL, 2) as u16;
        MsixControl {
            enabled: ctl & msix::CTL_ENABLE != 0,
            function_mask: ctl & msix::CTL_FUNCTION_MASK != 0,
        }
    }

    /// Number of MSI-X vectors (table entries) the state holds.
    pub fn msix_vectors(&self) -> u16 {
        u16::try_from(self.msix_table.len() / MSIX_ENTRY_SIZE as usize).unwrap_or(u16::MAX)
    }

    fn table_dword(&self, vector: u16, reg: usize) -> Option<u32> {
        let start = usize::from(vector) * MSIX_ENTRY_SIZE as usize + reg;
        let b = self.msix_table.get(start..start + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// MSI-X table entry `vector`, or `None` beyond the table.
    pub fn msix_entry(&self, vector: u16) -> Option<MsixEntry> {
        let lo = u64::from(self.table_dword(vector, msix::ENTRY_ADDRESS_LO)?);
        let hi = u64::from(self.table_dword(vector, msix::ENTRY_ADDRESS_HI)?);
        Some(MsixEntry {
            address: (hi << 32) | lo,
            data: self.table_dword(vector, msix::ENTRY_DATA)?,
            masked: self.table_dword(vector, msix::ENTRY_VECTOR_CONTROL)?
                & msix::VECTOR_CONTROL_MASK
                != 0,
        })
    }

    /// Whether MSI-X `vector` is masked: its Vector Control mask bit or the function mask.
    /// `None` beyond the table.
    pub fn msix_masked(&self, vector: u16) -> Option<bool> {
        let entry = self.msix_entry(vector)?;
        Some(entry.masked || self.msix_control().function_mask)
    }

    /// Whether the PBA bit of MSI-X `vector` is set (false beyond the table).
    pub fn msix_pending(&self, vector: u16) -> bool {
        vector < self.msix_vectors()
            && self
                .msix_pba
                .get(usize::from(vector) / 64)
                .is_some_and(|w| w & (1 << (vector % 64)) != 0)
    }

    /// The address BAR `bar` decodes at: memory decode on, the BAR implemented (non-zero
    /// size), and an address programmed that is neither 0 nor the sizing pattern.
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        let size = *self.bar_sizes.get(usize::from(bar))?;
        if size == 0 || !self.memory_enabled() {
            return None;
        }
        let off = BAR0 + 4 * usize::from(bar);
        let lo = self.cfg(off, 4);
        if lo & BAR_IO_SPACE != 0 {
            return None;
        }
        let is64 = lo & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64;
        let hi = if is64 { self.cfg(off + 4, 4) } else { 0 };
        let addr = (u64::from(hi) << 32) | u64::from(lo & !BAR_MEM_INFO_MASK);
        let mut mask = !(size.wrapping_sub(1)) & !u64::from(BAR_MEM_INFO_MASK);
        if !is64 {
            mask &= u64::from(u32::MAX);
        }
        (addr != 0 && addr != mask).then_some(addr)
    }

    /// The BARs that decode, with the host region behind each: what
    /// [`crate::ConfigSpace::bar_map`] gives for a device holding this state.
    pub fn bar_map(&self, host: &HostResources) -> Result<Vec<BarMapping>, ResourceError> {
        let mut out = Vec::new();
        for bar in 0..BAR_COUNT as u8 {
            let Some(guest_addr) = self.bar_address(bar) else {
                continue;
            };
            let region = host
                .bar_regions
                .get(usize::from(bar))
                .copied()
                .flatten()
                .ok_or(ResourceError::MissingBarRegion { bar })?;
            let lo = self.cfg(BAR0 + 4 * usize::from(bar), 4);
            out.push(BarMapping {
                bar,
                guest_addr,
                size: self.bar_sizes[usize::from(bar)],
                region,
                prefetchable: lo & BAR_MEM_PREFETCHABLE != 0,
            });
        }
        Ok(out)
    }

    /// The enabled message vectors with their host sinks: what
    /// [`crate::ConfigSpace::interrupt_routes`] gives for a device holding this state.
    pub fn interrupt_routes(
        &self,
        host: &HostResources,
    ) -> Result<Vec<InterruptRoute>, ResourceError> {
        let sink = |vector: u16| {
            host.interrupt_sinks
                .get(usize::from(vector))
                .copied()
                .ok_or(ResourceError::MissingInterruptSink { vector })
        };
        let mut out = Vec::new();
        let ctl = self.msix_control();
        if ctl.enabled {
            for vector in 0..self.msix_vectors() {
                let Some(e) = self.msix_entry(vector) else {
                    continue;
                };
                out.push(InterruptRoute {
                    kind: InterruptKind::Msix,
                    vector,
                    address: e.address,
                    data: e.data,
                    masked: e.masked || ctl.function_mask,
                    sink: sink(vector)?,
                });
            }
        } else if self.msi().enabled {
            let m = self.msi();
            out.push(InterruptRoute {
                kind: InterruptKind::Msi,
                vector: 0,
                address: m.address,
                data: m.data,
                masked: m.masked,
                sink: sink(0)?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
