//! The render engine: fetches commands from the ring and batch buffers and executes them.
//!
//! The engine knows nothing of BARs, GTT shadowing or migration: it sees the device through
//! [`EngineBus`] (registers, graphics memory, DMA through the GTT, interrupts). Its own
//! state beyond the register file (batch position, render target, texture, vertex buffer)
//! is [`EngineState`], saved in the engine section so a restored engine resumes at the exact
//! command where it stopped, mid-batch included.
//!
//! # Fetch
//!
//! ```text
//!                 BATCH_START addr (ring only; REG_RING_HEAD already past it)
//!   +--------+ ----------------------------------------------> +---------------------+
//!   |  ring  |                                                 | batch at addr + off |
//!   +--------+ <---------------------------------------------- +---------------------+
//!    start + head, wraps at the ring size      BATCH_END        off grows by whole commands
//!
//!   idle  = ring disabled, or (not in a batch and head == tail)
//!   any error --> halted (ENGINE_HALTED) --reset()--> not halted, not in a batch
//! ```
//!
//! Every command is atomic: [`Engine::run`] stops only between commands, and the position of
//! the next command is always in `REG_RING_HEAD` (ring) or in [`EngineState`] (batch).
//!
//! # Registers the engine writes
//!
//! After every command: `REG_RING_HEAD` (ring commands), `REG_ACTHD_LO/HI` (address of the next
//! command), `REG_BB_ADDR_LO/HI` and `REG_BB_OFFSET` (0 outside a batch), `REG_CMD_COUNT`
//! (+1, wrapping) and `REG_ENGINE_STATUS`. `PIPE_CONTROL` writes `REG_SEQNO`; `FLIP` writes
//! `REG_DSP_SURF` and `REG_FLIP_COUNT`. On an error: `REG_ERROR_STATUS` (the error's bit is
//! ORed in), `REG_ERROR_ADDR_LO/HI` (only if `REG_ERROR_STATUS` was clear: the first error's
//! address), and `REG_ACTHD_LO/HI` (the failing command).
//!
//! # Errors
//!
//! | cause                                                       | interrupt       | error address          |
//! |-------------------------------------------------------------|-----------------|------------------------|
//! | unknown opcode, wrong length, command past the ring tail    | `INT_CMD_ERROR` | the command            |
//! | ring start not page aligned, head or tail outside the ring  | `INT_CMD_ERROR` | ring start + head      |
//! | nested `BATCH_START`, `BATCH_END` in the ring, batch address not dword aligned | `INT_CMD_ERROR` | the command |
//! | surface outside graphics memory or stride < 4 * width       | `INT_CMD_ERROR` | the command            |
//! | vertex count not a multiple of 3, unknown `DRAW` flags, textured `DRAW` without a texture, `FLIP` beyond graphics memory | `INT_CMD_ERROR` | the command |
//! | a DMA address outside the GTT range, or a [`DmaFault`]      | `INT_GTT_ERROR` | the faulting address   |
//!
//! An error raises its interrupt, halts the engine until [`Engine::reset`], and leaves the
//! failing command unretired (the ring head still points at it). A command that faults in the
//! middle (a `DRAW` whose vertex buffer runs into an unmapped page) may have drawn part of
//! its triangles.

mod error;
mod exec;
mod ops;
pub mod pipeline3d;
mod raster;
mod state;
mod surface;
#[cfg(test)]
mod testbus;
#[cfg(test)]
mod tests;

pub use error::EngineError;
pub use exec::{Engine, FromStatesError, GTT_END};
pub use state::{EngineState, EngineStateError};
pub use surface::{Surface, SurfaceError, BYTES_PER_PIXEL};

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
    /// DMA read of `len` bytes from a graphics address in the GTT range straight into
    /// graphics memory at `offset` (which the caller checked lies inside it). On a fault
    /// part of the range may have been written. The default reads through a buffer; a
    /// device whose graphics memory and GTT are apart does it in one copy.
    fn dma_read_to_gmem(&mut self, gaddr: u64, offset: usize, len: usize) -> Result<(), DmaFault> {
        let mut buf = vec![0; len];
        self.dma_read(gaddr, &mut buf)?;
        if let Some(dst) = self.gmem().get_mut(offset..offset + len) {
            dst.copy_from_slice(&buf);
        }
        Ok(())
    }
    /// DMA write of `buf` to a graphics address in the GTT range (may cross pages).
    fn dma_write(&mut self, gaddr: u64, buf: &[u8]) -> Result<(), DmaFault>;
    /// Latch interrupt bits (`crate::regs::INT_*`) as events.
    fn raise(&mut self, bits: u32);
}
