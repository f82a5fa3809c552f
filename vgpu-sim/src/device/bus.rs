//! The device as the engine's bus: registers, graphics memory, DMA through the shadow GTT,
//! interrupts.

use slog::debug;

use super::Vgpu;
use crate::engine::{DmaFault, EngineBus};
use crate::regs::{REG_DSP_SURF, SYS_BASE};

impl Vgpu {
    /// The GTT-space offset of graphics address `gaddr`, or the fault.
    fn gtt_offset(gaddr: u64) -> Result<u64, DmaFault> {
        gaddr.checked_sub(SYS_BASE).ok_or(DmaFault { addr: gaddr })
    }
}

impl EngineBus for Vgpu {
    fn reg(&self, offset: u32) -> u32 {
        self.guest_reg_value(offset).unwrap_or(0)
    }

    fn set_reg(&mut self, offset: u32, value: u32) {
        // Hardware writes keep the invariants a restore checks: each register holds only its
        // valid bits, and the display surface stays inside graphics memory.
        if offset == REG_DSP_SURF && u64::from(value) >= self.ty.gmem_size {
            debug!(self.log, "engine display surface outside graphics memory ignored";
                "surface" => value);
            return;
        }
        self.regs.set(offset, value);
    }

    fn gmem(&mut self) -> &mut [u8] {
        self.gmem.bytes_mut()
    }

    fn mark_gmem_dirty(&mut self, offset: u64, len: u64) {
        self.gmem.mark(offset, len);
    }

    fn dma_read(&mut self, gaddr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let off = Self::gtt_offset(gaddr)?;
        self.gtt.dma_read(off, buf).map_err(|e| DmaFault {
            addr: SYS_BASE + e.offset(),
        })
    }

    fn dma_read_to_gmem(&mut self, gaddr: u64, offset: usize, len: usize) -> Result<(), DmaFault> {
        let off = Self::gtt_offset(gaddr)?;
        let end = offset.checked_add(len).ok_or(DmaFault { addr: gaddr })?;
        // The engine checked the range; refuse rather than panic anyway.
        let dst = self
            .gmem
            .bytes_mut()
            .get_mut(offset..end)
            .ok_or(DmaFault { addr: gaddr })?;
        self.gtt.dma_read(off, dst).map_err(|e| DmaFault {
            addr: SYS_BASE + e.offset(),
        })
    }

    fn dma_write(&mut self, gaddr: u64, buf: &[u8]) -> Result<(), DmaFault> {
        let off = Self::gtt_offset(gaddr)?;
        self.gtt.dma_write(off, buf).map_err(|e| DmaFault {
            addr: SYS_BASE + e.offset(),
        })
    }

    fn raise(&mut self, bits: u32) {
        self.latch(bits);
    }
}
