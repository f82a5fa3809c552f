//! Guest accesses to BAR0 (registers, MSI-X table and PBA, GTT window) and BAR2 (aperture).
//!
//! BAR0 accepts naturally aligned 4-byte accesses to registers and 8-byte accesses to the
//! GTT window; the MSI-X structures take what pci-config-replay takes. Anything else is
//! ignored (reads return zeros) with a rate-limited warning. BAR2 is plain memory: any
//! width, any alignment.

use pci_config_replay::ConfigChange;
use slog::debug;

use super::regfile::{self, index_of, Kind, ERROR_BITS, REGS};
use super::warn::{guest_warn, Misbehaviour};
use super::Vgpu;
use crate::regs::*;

/// Layout version reported in `REG_VERSION` (major << 16 | minor).
pub const REG_VERSION_VALUE: u32 = 1 << 16;

/// What a BAR0 offset addresses.
enum Bar0 {
    Reg(u32),
    MsixTable(u64),
    Pba(u64),
    Gtt(u64),
    Nothing,
}

impl Vgpu {
    fn decode_bar0(&self, offset: u64) -> Bar0 {
        let table = self.config.msix_table_range();
        let pba = self.config.msix_pba_range();
        let gtt_end = GTT_WINDOW_OFFSET + GTT_ENTRIES * GTT_ENTRY_SIZE;
        if table.contains(&offset) {
            Bar0::MsixTable(offset - table.start)
        } else if pba.contains(&offset) {
            Bar0::Pba(offset - pba.start)
        } else if offset < MMIO_SIZE {
            Bar0::Reg(offset as u32)
        } else if (GTT_WINDOW_OFFSET..gtt_end).contains(&offset) {
            Bar0::Gtt(offset - GTT_WINDOW_OFFSET)
        } else {
            Bar0::Nothing
        }
    }

    /// Guest read of BAR0. `data` is filled with zeros for anything not readable.
    pub(crate) fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        match self.decode_bar0(offset) {
            Bar0::MsixTable(o) => self.config.msix_table_read(o, data),
            Bar0::Pba(o) => self.config.pba_read(o, data),
            Bar0::Reg(r) if len == 4 && r % 4 == 0 => {
                let v = match self.guest_reg_value(r) {
                    // BUSY follows the tail the guest just wrote, before the engine ran.
                    Some(_) if r == REG_ENGINE_STATUS => self.engine.status(&*self),
                    Some(v) => v,
                    None => {
                        guest_warn!(self, Misbehaviour::UnknownOffset,
                            "guest read of an unknown register", "offset" => r);
                        0
                    }
                };
                data.copy_from_slice(&v.to_le_bytes());
            }
            Bar0::Gtt(o) if len == 8 && o % 8 == 0 => {
                let v = self.gtt.read_entry(o / GTT_ENTRY_SIZE).unwrap_or(0);
                data.copy_from_slice(&v.to_le_bytes());
            }
            Bar0::Nothing => {
                guest_warn!(self, Misbehaviour::UnknownOffset,
                    "guest read of BAR0 outside registers and GTT", "offset" => offset);
                data.fill(0);
            }
            _ => {
                guest_warn!(self, Misbehaviour::BadAccess,
                    "guest BAR0 read of unsupported width or alignment",
                    "offset" => offset, "len" => len);
                data.fill(0);
            }
        }
    }

    /// Guest write of BAR0; returns the configuration changes an MSI-X table write made.
    pub(crate) fn bar0_write(&mut self, offset: u64, data: &[u8]) -> Vec<ConfigChange> {
        let len = data.len();
        match self.decode_bar0(offset) {
            Bar0::MsixTable(o) => {
                let changes = self.config.msix_table_write(o, data);
                self.apply_config_changes(&changes);
                return changes;
            }
            Bar0::Pba(_) => {
                guest_warn!(self, Misbehaviour::RefusedWrite,
                    "guest write to the read-only MSI-X PBA", "offset" => offset);
            }
            Bar0::Reg(r) if len == 4 && r % 4 == 0 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.guest_reg_write(r, v);
            }
            Bar0::Gtt(o) if len == 8 && o % 8 == 0 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.gtt_write(o / GTT_ENTRY_SIZE, u64::from_le_bytes(b));
            }
            Bar0::Nothing => {
                guest_warn!(self, Misbehaviour::UnknownOffset,
                    "guest write to BAR0 outside registers and GTT", "offset" => offset);
            }
            _ => {
                guest_warn!(self, Misbehaviour::BadAccess,
                    "guest BAR0 write of unsupported width or alignment",
                    "offset" => offset, "len" => len);
            }
        }
        Vec::new()
    }

    /// Guest read of the aperture (bounds checked by the caller).
    pub(crate) fn bar2_read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.gmem.read(offset, data) {
            data.fill(0);
        }
    }

    /// Guest write of the aperture (bounds checked by the caller); marks the pages dirty.
    pub(crate) fn bar2_write(&mut self, offset: u64, data: &[u8]) {
        self.gmem.write(offset, data);
    }

    /// Value of register `offset` as the guest and engine read it: identification
    /// constants, then the register file; `None` for an offset with no register.
    pub(crate) fn guest_reg_value(&self, offset: u32) -> Option<u32> {
        Some(match offset {
            REG_ID => ID_VALUE,
            REG_VERSION => REG_VERSION_VALUE,
            REG_GMEM_SIZE_LO => self.ty.gmem_size as u32,
            REG_GMEM_SIZE_HI => (self.ty.gmem_size >> 32) as u32,
            REG_GTT_ENTRIES => GTT_ENTRIES as u32,
            _ => return index_of(offset).map(|i| self.regs.at(i)),
        })
    }

    /// A guest write of `value` to register `offset`, with the register's semantics.
    pub(crate) fn guest_reg_write(&mut self, offset: u32, value: u32) {
        let Some(spec) = index_of(offset).map(|i| REGS[i]) else {
            if self.guest_reg_value(offset).is_some() {
                guest_warn!(self, Misbehaviour::RefusedWrite,
                    "guest write to an identification register", "offset" => offset);
            } else {
                guest_warn!(self, Misbehaviour::UnknownOffset,
                    "guest write to an unknown register", "offset" => offset);
            }
            return;
        };
        let old = self.regs.get(offset);
        match spec.kind {
            Kind::Ro => {
                guest_warn!(self, Misbehaviour::RefusedWrite,
                    "guest write to a read-only register", "register" => spec.name);
            }
            Kind::Rw => {
                self.regs.set(offset, value);
                if offset == REG_RING_TAIL {
                    debug!(self.log, "ring tail written"; "tail" => value & spec.valid);
                }
            }
            Kind::W1c => self.regs.set(offset, old & !value),
            Kind::Special => self.special_write(spec.name, offset, old, value),
        }
    }

    fn special_write(&mut self, name: &'static str, offset: u32, old: u32, value: u32) {
        let ring_on = self.regs.ring_enabled();
        match offset {
            REG_IIR => {
                let was = self.irq_level();
                self.regs.set(REG_IIR, old & !value);
                let isr = self.regs.get(REG_ISR);
                self.regs.set(REG_ISR, isr & !(value & !ERROR_BITS));
                self.irq_update(was, value & INT_ALL != 0);
            }
            REG_IER => {
                let was = self.irq_level();
                self.regs.set(REG_IER, value);
                self.irq_update(was, false);
            }
            REG_ERROR_STATUS => {
                self.regs.set(REG_ERROR_STATUS, old & !value);
                let isr = self.regs.get(REG_ISR);
                self.regs.set(REG_ISR, isr & !(value & ERROR_BITS));
            }
            REG_RING_START_LO | REG_RING_START_HI | REG_RING_HEAD if ring_on => {
                guest_warn!(self, Misbehaviour::RefusedWrite,
                    "guest write to a ring register while the ring is enabled", "register" => name);
            }
            REG_RING_START_LO | REG_RING_START_HI | REG_RING_HEAD => self.regs.set(offset, value),
            REG_RING_CTL => {
                let new = value & regfile::RING_CTL_MASK;
                let start = self.regs.ring_start();
                let size = regfile::ring_size(new);
                if new & RING_CTL_ENABLE != 0 && !regfile::ring_in_gtt(start, size) {
                    guest_warn!(self, Misbehaviour::RefusedWrite,
                        "ring enable refused: the ring is not inside the GTT range",
                        "start" => start, "size" => size);
                    self.regs.set(REG_RING_CTL, new & !RING_CTL_ENABLE);
                    self.latch_error(INT_CMD_ERROR, start);
                } else {
                    self.regs.set(REG_RING_CTL, new);
                }
            }
            REG_DSP_SURF if u64::from(value) >= self.ty.gmem_size => {
                guest_warn!(self, Misbehaviour::RefusedWrite,
                    "display surface outside graphics memory refused", "surface" => value);
            }
            REG_DSP_SURF => self.regs.set(offset, value),
            _ => self.regs.set(offset, value),
        }
    }

    /// Latch an error as the engine does: the cause in `REG_ERROR_STATUS`, the address if it
    /// is the first error, and the interrupt.
    pub(crate) fn latch_error(&mut self, bit: u32, addr: u64) {
        let status = self.regs.get(REG_ERROR_STATUS);
        if status == 0 {
            self.regs.set(REG_ERROR_ADDR_LO, addr as u32);
            self.regs.set(REG_ERROR_ADDR_HI, (addr >> 32) as u32);
        }
        self.regs.set(REG_ERROR_STATUS, status | bit);
        self.latch(bit);
    }

    /// A guest write of GTT entry `index`: shadow it; an invalid entry maps the scratch
    /// page and raises `INT_GTT_ERROR`.
    fn gtt_write(&mut self, index: u64, value: u64) {
        match self.gtt.write_entry(index, value) {
            Ok(status) if status.is_error() => {
                guest_warn!(self, Misbehaviour::BadGttEntry,
                    "GTT entry mapped to the scratch page",
                    "index" => index, "value" => format!("{value:#x}"), "why" => ?status);
                self.latch_error(INT_GTT_ERROR, value & GTT_ADDR_MASK);
            }
            Ok(_) => {}
            // The window's range is the table's, so the index always exists.
            Err(e) => debug!(self.log, "GTT write refused"; "error" => %e),
        }
    }
}
