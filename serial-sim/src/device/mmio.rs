//! Guest accesses to BAR0 (registers, MSI-X table and PBA) and BAR2 (scratch memory).
//! Registers take aligned 4-byte accesses only; anything else is logged (rate-limited) and
//! ignored, and reads as zero. A guest access never fails and never panics.

use slog::warn;

use super::Serial;
use crate::regs::*;

impl Serial {
    fn lsr(&self) -> u32 {
        let mut v = 0;
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        if self.overrun {
            v |= LSR_OE;
        }
        if self.tx.len() < TX_DEPTH {
            v |= LSR_THRE;
        }
        if self.tx.is_empty() {
            v |= LSR_TEMT;
        }
        v
    }

    fn guest_warn(&mut self, what: &'static str, offset: u64, len: usize) {
        if self.warn.allow() {
            warn!(self.log, "{}", what; "offset" => format!("{offset:#x}"), "len" => len);
        }
    }

    fn msix_window(&self, offset: u64) -> Option<(bool, u64)> {
        let table = self.config.msix_table_range();
        let pba = self.config.msix_pba_range();
        if table.contains(&offset) {
            Some((true, offset - table.start))
        } else if pba.contains(&offset) {
            Some((false, offset - pba.start))
        } else {
            None
        }
    }

    /// Guest read of BAR0.
    pub(crate) fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        match self.msix_window(offset) {
            Some((true, o)) => return self.config.msix_table_read(o, data),
            Some((false, o)) => return self.config.pba_read(o, data),
            None => {}
        }
        if data.len() != 4 || offset % 4 != 0 || offset >= REGS_END {
            self.guest_warn(
                "guest BAR0 read of an unknown offset or width",
                offset,
                data.len(),
            );
            data.fill(0);
            return;
        }
        let v = match offset {
            REG_ID => ID_VALUE,
            REG_RX => match self.rx.pop_front() {
                Some(b) => u32::from(b),
                None => 0,
            },
            REG_LSR => {
                let v = self.lsr();
                self.overrun = false;
                v
            }
            REG_IER => self.ier,
            REG_ISR => self.isr,
            REG_KEY => u32::from(self.key),
            REG_TX_COUNT => self.tx_count as u32,
            REG_RX_COUNT => self.rx_count as u32,
            REG_RX_LEVEL => self.rx.len() as u32,
            REG_TX_LEVEL => self.tx.len() as u32,
            _ => {
                // REG_TX is write-only.
                self.guest_warn("guest read of a write-only register", offset, 4);
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Guest write of BAR0.
    pub(crate) fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        match self.msix_window(offset) {
            Some((true, o)) => {
                let changes = self.config.msix_table_write(o, data);
                self.apply_config_changes(&changes);
                return;
            }
            Some((false, _)) => {
                return self.guest_warn(
                    "guest write to the read-only MSI-X PBA",
                    offset,
                    data.len(),
                )
            }
            None => {}
        }
        if data.len() != 4 || offset % 4 != 0 || offset >= REGS_END {
            return self.guest_warn(
                "guest BAR0 write of an unknown offset or width",
                offset,
                data.len(),
            );
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset {
            REG_TX => {
                if self.tx.len() < TX_DEPTH {
                    self.tx.push_back(v as u8);
                    self.tx_count += 1;
                } else {
                    self.overrun = true;
                }
            }
            REG_IER => {
                let was = self.irq_level();
                self.ier = v & INT_ALL;
                self.irq_update(was, false);
            }
            REG_ISR => {
                let was = self.irq_level();
                self.isr &= !(v & INT_ALL);
                // The guest cleared what it handled; data still waiting raises it again.
                if !self.rx.is_empty() {
                    self.isr |= INT_RX;
                }
                self.irq_update(was, was);
            }
            REG_KEY => self.key = v as u8,
            _ => self.guest_warn("guest write to a read-only register", offset, 4),
        }
    }

    /// Guest read of BAR2 (any width inside the region; the caller checked the range).
    pub(crate) fn bar2_read(&mut self, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        match self.scratch.get(o..o + data.len()) {
            Some(s) => data.copy_from_slice(s),
            None => data.fill(0),
        }
    }

    /// Guest write of BAR2.
    pub(crate) fn bar2_write(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        if let Some(s) = self.scratch.get_mut(o..o + data.len()) {
            s.copy_from_slice(data);
        }
    }
}
