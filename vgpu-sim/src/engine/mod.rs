//! The render engine: fetches commands from the ring and batch buffers and executes them.
//!
//! The engine knows nothing of BARs, GTT shadowing or migration: it sees the device through
//! [`EngineBus`] (registers, graphics memory, DMA through the GTT, interrupts). Its own
//! state beyond the register file (batch position, render target, texture, vertex buffer)
//! is [`EngineState`], saved in the engine section so a restored engine resumes at the exact
//! command where it stopped, mid-batch included.

/// A DMA access the GTT could not translate (not present, outside guest RAM, or read-only
/// for a write); `addr` is the graphics address that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaFault {
    /// The faulting graphics address.
    pub addr: u64,
}

/// How the engine reaches the rest of the device.
pub trait EngineBus {
    /// Read MMIO register `offset` (a `crate::regs::REG_*`).
    fn reg(&self, offset: u32) -> u32;
    /// Write MMIO register `offset` directly (hardware side: no guest-write semantics).
    fn set_reg(&mut self, offset: u32, value: u32);
    /// The whole graphics memory.
    fn gmem(&mut self) -> &mut [u8];
    /// Report that the engine wrote `len` bytes of graphics memory at `offset`.
    fn mark_gmem_dirty(&mut self, offset: u64, len: u64);
    /// DMA read from a graphics address in the GTT range into `buf` (may cross pages).
    fn dma_read(&mut self, gaddr: u64, buf: &mut [u8]) -> Result<(), DmaFault>;
    /// DMA write of `buf` to a graphics address in the GTT range (may cross pages).
    fn dma_write(&mut self, gaddr: u64, buf: &[u8]) -> Result<(), DmaFault>;
    /// Latch interrupt bits (`crate::regs::INT_*`) as events.
    fn raise(&mut self, bits: u32);
}
