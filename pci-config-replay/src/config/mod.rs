//! The live configuration space of one simulated GPU function.
//!
//! Guest accesses go through [`ConfigSpace::read`] and [`ConfigSpace::write`]; BAR0
//! accesses that fall in the MSI-X table or PBA go through
//! [`ConfigSpace::msix_table_read`], [`ConfigSpace::msix_table_write`] and
//! [`ConfigSpace::pba_read`]. Writes return [`ConfigChange`]s; nothing here calls out.

mod change;
mod interrupt;
mod msix_window;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use slog::{o, Discard, Logger};
use snafu::ensure;

pub use change::ConfigChange;
pub(crate) use change::Snapshot;
pub use interrupt::{Delivery, DropReason};

use crate::bar::{bar_slots, BarSlot};
use crate::block::RegisterBlock;
use crate::caps::msi::{self, MsiConfig};
use crate::caps::msix::{self, MsixControl, MsixEntry, MsixTable};
use crate::caps::pm::{self, PowerState};
use crate::caps::{self, MSIX_BASE, MSI_BASE, PM_BASE};
use crate::error::access_error::{AlignmentSnafu, OutOfRangeSnafu, SizeSnafu};
use crate::error::{AccessError, ParamsError};
use crate::params::ConfigParams;
use crate::regs::*;

/// Counts ignored guest accesses and says when one should be logged: the 1st, 2nd, 4th,
/// 8th... so a misbehaving guest cannot flood the log.
#[derive(Debug, Default)]
struct RateLimit(AtomicU64);

impl RateLimit {
    fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        n.is_power_of_two().then_some(n)
    }
}

impl Clone for RateLimit {
    fn clone(&self) -> Self {
        Self(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

/// The configuration space of a simulated GPU function: a type-0 VGA header, two 64-bit
/// memory BARs, PM, MSI, MSI-X and PCI Express capabilities, and an extended capability
/// chain in a 4 KiB space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    params: ConfigParams,
    bars: [BarSlot; 2],
    block: RegisterBlock,
    msix: MsixTable,
    log: Logger,
    ignored: RateLimit,
}

impl ConfigSpace {
    /// A device fresh out of reset for `params`.
    pub fn new(params: ConfigParams) -> Result<Self, ParamsError> {
        params.validate()?;
        let mut block = RegisterBlock::new();
        block.init(VENDOR_ID, 2, u32::from(params.vendor_id), 0, 0);
        block.init(DEVICE_ID, 2, u32::from(params.device_id), 0, 0);
        block.init(COMMAND, 2, 0, u32::from(COMMAND_WRITABLE), 0);
        block.init(
            STATUS,
            2,
            u32::from(STATUS_CAPABILITIES_LIST),
            0,
            u32::from(STATUS_W1C),
        );
        block.mark_device_owned(STATUS, 2, u32::from(STATUS_INTERRUPT));
        block.init(REVISION_ID, 1, u32::from(params.revision), 0, 0);
        block.init(CLASS_PROG_IF, 3, CLASS_CODE_VGA, 0, 0);
        block.init(CACHE_LINE_SIZE, 1, 0, 0xff, 0);
        block.init(HEADER_TYPE, 1, u32::from(HEADER_TYPE_ENDPOINT), 0, 0);
        let bars = bar_slots(&params);
        for slot in &bars {
            slot.install(&mut block);
        }
        block.init(
            SUBSYSTEM_VENDOR_ID,
            2,
            u32::from(params.subsystem_vendor_id),
            0,
            0,
        );
        block.init(SUBSYSTEM_ID, 2, u32::from(params.subsystem_id), 0, 0);
        block.init(CAPABILITIES_POINTER, 1, PM_BASE as u32, 0, 0);
        block.init(INTERRUPT_LINE, 1, 0, 0xff, 0);
        block.init(INTERRUPT_PIN, 1, u32::from(INTERRUPT_PIN_INTA), 0, 0);
        caps::install(&mut block, &params);
        Ok(Self {
            params,
            bars,
            msix: MsixTable::new(&params),
            block,
            log: Logger::root(Discard, o!()),
            ignored: RateLimit::default(),
        })
    }

    /// Logs ignored guest accesses to `log` (rate-limited) instead of discarding them.
    pub fn with_logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// The parameters the device was built from.
    pub fn params(&self) -> &ConfigParams {
        &self.params
    }

    /// The implemented BARs (BAR0 and BAR2) with their sizes.
    pub fn bars(&self) -> &[BarSlot; 2] {
        &self.bars
    }

    /// The raw 4 KiB of configuration bytes.
    pub fn bytes(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        self.block.bytes()
    }

    /// Checks a configuration access: 1, 2 or 4 bytes, naturally aligned, inside 4 KiB.
    /// Returns the offset as an index.
    pub fn check_access(offset: u64, len: usize) -> Result<usize, AccessError> {
        ensure!(matches!(len, 1 | 2 | 4), SizeSnafu { offset, len });
        ensure!(offset % len as u64 == 0, AlignmentSnafu { offset, len });
        let end = offset.checked_add(len as u64);
        ensure!(
            end.is_some_and(|e| e <= CONFIG_SPACE_SIZE as u64),
            OutOfRangeSnafu { offset, len }
        );
        // In range, so it fits usize.
        Ok(offset as usize)
    }

    fn note_ignored(&self, what: &str, err: &AccessError) {
        if let Some(count) = self.ignored.hit() {
            slog::warn!(self.log, "ignored guest config access";
                "access" => what, "reason" => %err, "ignored_so_far" => count);
        }
    }

    /// Guest read. Undefined registers read 0. Unsupported accesses (see
    /// [`ConfigSpace::check_access`]), including anything beyond 4 KiB, read all ones, as a
    /// PCI read that no function claims does.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        match Self::check_access(offset, data.len()) {
            Ok(off) => {
                let value = self.block.read(off, data.len());
                for (i, b) in data.iter_mut().enumerate() {
                    *b = (value >> (8 * i)) as u8;
                }
            }
            Err(err) => {
                if offset < CONFIG_SPACE_SIZE as u64 {
                    self.note_ignored("read", &err);
                }
                data.fill(0xff);
            }
        }
    }

    /// Guest read of one byte.
    pub fn read_u8(&self, offset: u64) -> u8 {
        let mut d = [0u8; 1];
        self.read(offset, &mut d);
        d[0]
    }

    /// Guest read of a 16-bit register.
    pub fn read_u16(&self, offset: u64) -> u16 {
        let mut d = [0u8; 2];
        self.read(offset, &mut d);
        u16::from_le_bytes(d)
    }

    /// Guest read of a 32-bit register.
    pub fn read_u32(&self, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        self.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    /// Guest write through the register masks. Returns what changed; unsupported accesses
    /// (see [`ConfigSpace::check_access`]) are ignored, logged rate-limited, and return
    /// nothing.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Vec<ConfigChange> {
        let off = match Self::check_access(offset, data.len()) {
            Ok(off) => off,
            Err(err) => {
                self.note_ignored("write", &err);
                return Vec::new();
            }
        };
        let before = self.snapshot();
        self.block.guest_write(off, data);
        pm::discard_unsupported(&mut self.block, PM_BASE, before.power);
        let mut changes = before.diff(&self.snapshot());
        changes.extend(self.fire_ready());
        changes
    }

    /// Guest write of one byte.
    pub fn write_u8(&mut self, offset: u64, value: u8) -> Vec<ConfigChange> {
        self.write(offset, &[value])
    }

    /// Guest write of a 16-bit register.
    pub fn write_u16(&mut self, offset: u64, value: u16) -> Vec<ConfigChange> {
        self.write(offset, &value.to_le_bytes())
    }

    /// Guest write of a 32-bit register.
    pub fn write_u32(&mut self, offset: u64, value: u32) -> Vec<ConfigChange> {
        self.write(offset, &value.to_le_bytes())
    }

    pub(crate) fn block(&self) -> &RegisterBlock {
        &self.block
    }

    pub(crate) fn block_mut(&mut self) -> &mut RegisterBlock {
        &mut self.block
    }

    pub(crate) fn msix_table(&self) -> &MsixTable {
        &self.msix
    }

    pub(crate) fn msix_table_mut(&mut self) -> &mut MsixTable {
        &mut self.msix
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let cmd = self.command();
        let memory = cmd & COMMAND_MEMORY_SPACE != 0;
        let [b0, b2] = self.bars;
        Snapshot {
            io: cmd & COMMAND_IO_SPACE != 0,
            memory,
            bus_master: cmd & COMMAND_BUS_MASTER != 0,
            bars: [
                (b0.index, b0.decode(&self.block, memory)),
                (b2.index, b2.decode(&self.block, memory)),
            ],
            intx: self.intx_asserted(),
            msi: self.msi(),
            msix: self.msix_control(),
            power: self.power_state(),
        }
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.block.u16(COMMAND)
    }

    /// The STATUS register.
    pub fn status(&self) -> u16 {
        self.block.u16(STATUS)
    }

    /// Whether Memory Space decode is enabled.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Whether Bus Master is enabled (the device may DMA and send MSI/MSI-X).
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// The address BAR `bar` decodes at, if it decodes (see [`ConfigChange::BarMoved`]).
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        let memory = self.memory_enabled();
        self.bars
            .iter()
            .find(|s| s.index == bar)
            .and_then(|s| s.decode(&self.block, memory))
    }

    /// The MSI capability.
    pub fn msi(&self) -> MsiConfig {
        msi::config(&self.block, MSI_BASE)
    }

    /// The MSI-X enable and function mask.
    pub fn msix_control(&self) -> MsixControl {
        msix::control(&self.block, MSIX_BASE)
    }

    /// MSI-X table entry `vector`, or `None` beyond the table.
    pub fn msix_entry(&self, vector: u16) -> Option<MsixEntry> {
        self.msix.entry(vector)
    }

    /// Whether the PBA bit of MSI-X `vector` is set.
    pub fn msix_pending(&self, vector: u16) -> bool {
        self.msix.pending(vector)
    }

    /// The PMCSR power state.
    pub fn power_state(&self) -> PowerState {
        pm::power_state(&self.block, PM_BASE)
    }

    /// Where the MSI-X table sits in BAR0.
    pub fn msix_table_range(&self) -> Range<u64> {
        self.params.msix_table_offset..self.params.msix_table_offset + self.params.msix_table_len()
    }

    /// Where the MSI-X pending bit array sits in BAR0.
    pub fn msix_pba_range(&self) -> Range<u64> {
        self.params.msix_pba_offset..self.params.msix_pba_offset + self.params.msix_pba_len()
    }

    /// The standard capability list walked from the Capabilities Pointer:
    /// `(capability ID, offset)` in list order. Stops on a loop or a bad pointer.
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut ptr = self.block.u8(CAPABILITIES_POINTER) & CAP_POINTER_MASK;
        // At most 48 capabilities fit between 0x40 and 0x100.
        while ptr >= 0x40 && out.len() < 48 {
            let off = usize::from(ptr);
            out.push((self.block.u8(off), ptr));
            ptr = self.block.u8(off + 1) & CAP_POINTER_MASK;
        }
        out
    }

    /// The extended capability chain from 0x100: `(ID, version, offset)` in chain order.
    /// Stops on a zero header, a loop or a bad pointer.
    pub fn extended_capabilities(&self) -> Vec<(u16, u8, u16)> {
        let mut out = Vec::new();
        let mut off = EXT_CAP_START;
        // At most 960 dword-aligned headers fit in the extended space.
        while off >= EXT_CAP_START && out.len() < 960 {
            let header = self.block.u32(off);
            if header == 0 {
                break;
            }
            let id = (header & EXT_CAP_ID_MASK) as u16;
            let version = ((header >> EXT_CAP_VERSION_SHIFT) & 0xf) as u8;
            out.push((id, version, off as u16));
            off = ((header >> EXT_CAP_NEXT_SHIFT) & 0xffc) as usize;
        }
        out
    }
}

#[cfg(test)]
mod tests;
