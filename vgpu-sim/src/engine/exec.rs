//! The engine: the run loop, command fetch from the ring and batches, and the register mirrors.

use std::fmt;

use crate::cmd::{self, OP_BATCH_END};
use crate::regs::{
    ENGINE_BUSY, ENGINE_HALTED, ENGINE_IN_BATCH, GTT_ENTRIES, MAX_BATCH_BYTES, PAGE_SIZE,
    REG_ACTHD_HI, REG_ACTHD_LO, REG_BB_ADDR_HI, REG_BB_ADDR_LO, REG_BB_OFFSET, REG_CMD_COUNT,
    REG_ENGINE_STATUS, REG_ERROR_ADDR_HI, REG_ERROR_ADDR_LO, REG_ERROR_STATUS, REG_RING_CTL,
    REG_RING_HEAD, REG_RING_START_HI, REG_RING_START_LO, REG_RING_TAIL, RING_CTL_ENABLE,
    RING_CTL_SIZE_MASK, RING_CTL_SIZE_SHIFT, SYS_BASE,
};

use super::error::{BadLengthSnafu, EngineError, PastTailSnafu, RingPointerSnafu, RingStartSnafu};
use super::pipeline3d::{Pipeline3dState, Pipeline3dStateError, Scratch3d};
use super::state::{self, EngineState, EngineStateError};
use super::surface::DirtySpans;
use super::EngineBus;

/// First graphics address past the GTT range (`SYS_BASE` + what the GTT can map).
pub const GTT_END: u64 = SYS_BASE + GTT_ENTRIES * PAGE_SIZE;

/// Most payload dwords of any command (`BLIT`, `CHECKSUM`, `SET_LIGHT`, `DRAW_INDEXED`,
/// `UPLOAD`).
pub(crate) const MAX_PAYLOAD: usize = 5;

/// Bytes in a dword.
const DWORD: u32 = 4;

/// Where the command after the current one is.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// In the ring, at this head.
    Ring(u32),
    /// In the current batch, at this offset.
    Batch(u32),
}

/// A fetched, length-checked command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Command {
    /// Its opcode.
    pub(crate) opcode: u32,
    /// Its payload (only the opcode's dwords are meaningful).
    pub(crate) payload: [u32; MAX_PAYLOAD],
    next: Next,
}

/// The ring as its registers describe it.
#[derive(Debug, Clone, Copy)]
struct Ring {
    start: u64,
    size: u32,
    head: u32,
    tail: u32,
}

impl Ring {
    fn read(bus: &dyn EngineBus) -> Self {
        let ctl = bus.reg(REG_RING_CTL);
        let pages = ((ctl >> RING_CTL_SIZE_SHIFT) & RING_CTL_SIZE_MASK) + 1;
        Self {
            start: u64::from(bus.reg(REG_RING_START_LO))
                | (u64::from(bus.reg(REG_RING_START_HI)) << 32),
            size: pages * PAGE_SIZE as u32,
            head: bus.reg(REG_RING_HEAD),
            tail: bus.reg(REG_RING_TAIL),
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        snafu::ensure!(
            self.start % PAGE_SIZE == 0,
            RingStartSnafu { start: self.start }
        );
        for (which, value) in [("head", self.head), ("tail", self.tail)] {
            snafu::ensure!(
                value < self.size && value % DWORD == 0,
                RingPointerSnafu {
                    which,
                    value,
                    size: self.size
                }
            );
        }
        Ok(())
    }

    /// The ring offset `bytes` after `offset`, wrapped.
    fn advance(&self, offset: u32, bytes: u32) -> u32 {
        ((u64::from(offset) + u64::from(bytes)) % u64::from(self.size)) as u32
    }
}

/// Scratch buffers reused across commands (not state: empty after restore, same results).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Vertex records read by DMA.
    pub(crate) vertices: Vec<u8>,
    /// One row of shaded pixels.
    pub(crate) row: Vec<u32>,
    /// Graphics memory written by the current command.
    pub(crate) spans: DirtySpans,
    /// The 3D commands' buffers.
    pub(crate) p3d: Scratch3d,
}

/// The render engine. Behaviour over an [`EngineState`]; everything else it needs is reached
/// through the [`EngineBus`] passed to [`Engine::run`].
pub struct Engine {
    pub(crate) state: EngineState,
    pub(crate) p3d: Pipeline3dState,
    pub(crate) scratch: Scratch,
    last_error: Option<EngineError>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("state", &self.state)
            .field("p3d", &self.p3d)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// An engine as after reset: not in a batch, no render target, texture or vertex buffer.
    pub fn new() -> Self {
        Self {
            state: EngineState::default(),
            p3d: Pipeline3dState::default(),
            scratch: Scratch::default(),
            last_error: None,
        }
    }

    /// Back to [`Engine::new`]'s state. Registers are the device's to reset; call
    /// [`Engine::sync_regs`] after resetting them.
    pub fn reset(&mut self) {
        self.state = EngineState::default();
        self.p3d = Pipeline3dState::default();
        self.last_error = None;
    }

    /// A copy of the state to save.
    pub fn state(&self) -> EngineState {
        self.state.clone()
    }

    /// The 3D pipeline's state to save.
    pub fn pipeline3d_state(&self) -> Pipeline3dState {
        self.p3d.clone()
    }

    /// An engine resuming from `state`, validated against a graphics memory of `gmem_size`
    /// bytes, with the 3D pipeline as after reset. The registers (ring head and tail
    /// included) come back with the MMIO section.
    pub fn from_state(gmem_size: u64, state: &EngineState) -> Result<Self, EngineStateError> {
        state.validate(gmem_size)?;
        Ok(Self {
            state: state.clone(),
            p3d: Pipeline3dState::default(),
            scratch: Scratch::default(),
            last_error: None,
        })
    }

    /// An engine resuming from `state` and the 3D pipeline state `p3d`, both validated
    /// against a graphics memory of `gmem_size` bytes.
    pub fn from_states(
        gmem_size: u64,
        state: &EngineState,
        p3d: &Pipeline3dState,
    ) -> Result<Self, FromStatesError> {
        p3d.validate(gmem_size)
            .map_err(|source| FromStatesError::Pipeline3d { source })?;
        let mut e = Self::from_state(gmem_size, state)
            .map_err(|source| FromStatesError::Engine { source })?;
        e.p3d = p3d.clone();
        Ok(e)
    }

    /// Halted by an error until [`Engine::reset`].
    pub fn is_halted(&self) -> bool {
        self.state.halted
    }

    /// Why the engine last halted (not saved with the state).
    pub fn last_error(&self) -> Option<&EngineError> {
        self.last_error.as_ref()
    }

    /// Nothing to execute: the ring is disabled, or the engine is not in a batch and the ring
    /// head equals the tail.
    pub fn is_idle(&self, bus: &dyn EngineBus) -> bool {
        bus.reg(REG_RING_CTL) & RING_CTL_ENABLE == 0
            || (!self.state.in_batch && bus.reg(REG_RING_HEAD) == bus.reg(REG_RING_TAIL))
    }

    /// `REG_ENGINE_STATUS` as it should read now (the device may call this when the guest
    /// reads the register, since `BUSY` follows the tail the guest writes).
    pub fn status(&self, bus: &dyn EngineBus) -> u32 {
        let mut s = 0;
        if self.state.in_batch || bus.reg(REG_RING_HEAD) != bus.reg(REG_RING_TAIL) {
            s |= ENGINE_BUSY;
        }
        if self.state.in_batch {
            s |= ENGINE_IN_BATCH;
        }
        if self.state.halted {
            s |= ENGINE_HALTED;
        }
        s
    }

    /// Write the registers that mirror the engine's state: `REG_ENGINE_STATUS`,
    /// `REG_BB_ADDR_LO/HI`, `REG_BB_OFFSET` and `REG_ACTHD_LO/HI` (the next command). Call it
    /// after [`Engine::reset`] (once the ring registers are reset) and after restoring.
    pub fn sync_regs(&self, bus: &mut dyn EngineBus) {
        let (start, offset) = (self.state.batch_start, self.state.batch_offset);
        set_reg64(bus, REG_BB_ADDR_LO, REG_BB_ADDR_HI, start);
        bus.set_reg(REG_BB_OFFSET, offset);
        let pos = self.position(bus);
        set_reg64(bus, REG_ACTHD_LO, REG_ACTHD_HI, pos);
        let status = self.status(bus);
        bus.set_reg(REG_ENGINE_STATUS, status);
    }

    /// Execute at most `budget` commands; returns how many completed. Returns early when the
    /// engine is idle or halted (a failing command halts it and does not count).
    pub fn run(&mut self, bus: &mut dyn EngineBus, budget: usize) -> usize {
        let mut done = 0;
        while done < budget && !self.state.halted && !self.is_idle(bus) {
            let at = self.position(bus);
            match self.step(bus) {
                Ok(()) => done += 1,
                Err(e) => self.halt(bus, e, at),
            }
        }
        let status = self.status(bus);
        bus.set_reg(REG_ENGINE_STATUS, status);
        done
    }

    /// Graphics address of the next command (what `REG_ACTHD` shows between commands).
    fn position(&self, bus: &dyn EngineBus) -> u64 {
        if self.state.in_batch {
            self.state
                .batch_start
                .wrapping_add(u64::from(self.state.batch_offset))
        } else {
            let ring = Ring::read(bus);
            ring.start.wrapping_add(u64::from(ring.head))
        }
    }

    /// Fetch, execute and retire one command.
    fn step(&mut self, bus: &mut dyn EngineBus) -> Result<(), EngineError> {
        if self.state.in_batch && self.state.batch_offset >= MAX_BATCH_BYTES {
            return Err(EngineError::Hang {
                start: self.state.batch_start,
                limit: MAX_BATCH_BYTES,
            });
        }
        let cmd = self.fetch(bus)?;
        self.execute(bus, &cmd)?;
        match cmd.next {
            Next::Ring(head) => bus.set_reg(REG_RING_HEAD, head),
            // BATCH_END has left the batch: nothing to advance.
            Next::Batch(offset) if cmd.opcode != OP_BATCH_END => self.state.batch_offset = offset,
            Next::Batch(_) => {}
        }
        let count = bus.reg(REG_CMD_COUNT).wrapping_add(1);
        bus.set_reg(REG_CMD_COUNT, count);
        self.sync_regs(bus);
        Ok(())
    }

    /// Latch `e` (raised by the command at `at`) and halt.
    fn halt(&mut self, bus: &mut dyn EngineBus, e: EngineError, at: u64) {
        let bit = e.interrupt();
        let status = bus.reg(REG_ERROR_STATUS);
        if status == 0 {
            set_reg64(bus, REG_ERROR_ADDR_LO, REG_ERROR_ADDR_HI, e.address(at));
        }
        bus.set_reg(REG_ERROR_STATUS, status | bit);
        set_reg64(bus, REG_ACTHD_LO, REG_ACTHD_HI, at);
        self.state.halted = true;
        self.last_error = Some(e);
        bus.raise(bit);
    }

    /// Read the next command, checking its opcode and length; changes nothing.
    fn fetch(&self, bus: &mut dyn EngineBus) -> Result<Command, EngineError> {
        let mut payload = [0; MAX_PAYLOAD];
        if self.state.in_batch {
            let addr = self.position(bus);
            let (opcode, n) = decode(read_dword(bus, addr)?)?;
            let words = &mut payload[..n];
            read_dwords(bus, addr.wrapping_add(u64::from(DWORD)), words)?;
            let bytes = (n as u32 + 1) * DWORD;
            let next = self.state.batch_offset.checked_add(bytes);
            // An offset past 4 GiB is past the GTT range too.
            let next = next.ok_or(EngineError::Dma { addr: GTT_END })?;
            return Ok(Command {
                opcode,
                payload,
                next: Next::Batch(next),
            });
        }
        let ring = Ring::read(bus);
        ring.check()?;
        let addr = ring.start.wrapping_add(u64::from(ring.head));
        let (opcode, n) = decode(read_dword(bus, addr)?)?;
        let bytes = (n as u32 + 1) * DWORD;
        let queued = ring.advance(ring.tail, ring.size - ring.head);
        snafu::ensure!(
            bytes <= queued,
            PastTailSnafu {
                head: ring.head,
                tail: ring.tail,
                len: bytes
            }
        );
        // The payload may wrap at the end of the ring: read it in at most two pieces.
        let first = ring.advance(ring.head, DWORD);
        let before_end = ((ring.size - first) / DWORD) as usize;
        let (a, b) = payload[..n].split_at_mut(n.min(before_end));
        read_dwords(bus, ring.start.wrapping_add(u64::from(first)), a)?;
        read_dwords(bus, ring.start, b)?;
        Ok(Command {
            opcode,
            payload,
            next: Next::Ring(ring.advance(ring.head, bytes)),
        })
    }
}

/// Why [`Engine::from_states`] refused a state.
#[derive(Debug, Clone, PartialEq, Eq, snafu::Snafu)]
pub enum FromStatesError {
    /// The engine state.
    #[snafu(display("engine state: {source}"))]
    Engine {
        /// What is wrong with it.
        source: EngineStateError,
    },
    /// The 3D pipeline state.
    #[snafu(display("3D pipeline state: {source}"))]
    Pipeline3d {
        /// What is wrong with it.
        source: Pipeline3dStateError,
    },
}

/// Split a header into opcode and payload length, checking both.
fn decode(header: u32) -> Result<(u32, usize), EngineError> {
    let (opcode, len) = cmd::decode_header(header);
    let expected =
        cmd::payload_dwords(opcode).ok_or(EngineError::UnknownOpcode { header, opcode })?;
    snafu::ensure!(
        len == expected,
        BadLengthSnafu {
            opcode,
            len,
            expected
        }
    );
    Ok((opcode, expected as usize))
}

/// Check that `len` bytes from `addr` lie in the GTT range; else the first byte outside.
pub(crate) fn check_gtt(addr: u64, len: u64) -> Result<(), EngineError> {
    if !state::in_gtt_range(addr) {
        return Err(EngineError::Dma { addr });
    }
    match addr.checked_add(len) {
        Some(end) if end <= GTT_END => Ok(()),
        _ => Err(EngineError::Dma { addr: GTT_END }),
    }
}

/// DMA read, with the GTT range checked first.
pub(crate) fn dma_read(
    bus: &mut dyn EngineBus,
    addr: u64,
    buf: &mut [u8],
) -> Result<(), EngineError> {
    if buf.is_empty() {
        return Ok(());
    }
    check_gtt(addr, buf.len() as u64)?;
    Ok(bus.dma_read(addr, buf)?)
}

/// DMA read into graphics memory at `offset`, with the GTT range checked first.
pub(crate) fn dma_read_to_gmem(
    bus: &mut dyn EngineBus,
    addr: u64,
    offset: usize,
    len: usize,
) -> Result<(), EngineError> {
    if len == 0 {
        return Ok(());
    }
    check_gtt(addr, len as u64)?;
    Ok(bus.dma_read_to_gmem(addr, offset, len)?)
}

/// DMA write, with the GTT range checked first.
pub(crate) fn dma_write(bus: &mut dyn EngineBus, addr: u64, buf: &[u8]) -> Result<(), EngineError> {
    check_gtt(addr, buf.len() as u64)?;
    Ok(bus.dma_write(addr, buf)?)
}

fn read_dword(bus: &mut dyn EngineBus, addr: u64) -> Result<u32, EngineError> {
    let mut b = [0; 4];
    dma_read(bus, addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_dwords(bus: &mut dyn EngineBus, addr: u64, out: &mut [u32]) -> Result<(), EngineError> {
    let mut b = [0; MAX_PAYLOAD * DWORD as usize];
    let bytes = &mut b[..out.len() * DWORD as usize];
    dma_read(bus, addr, bytes)?;
    for (w, c) in out.iter_mut().zip(bytes.chunks_exact(DWORD as usize)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

/// Write a 64-bit value to a LO/HI register pair.
fn set_reg64(bus: &mut dyn EngineBus, lo: u32, hi: u32, value: u64) {
    bus.set_reg(lo, value as u32);
    bus.set_reg(hi, (value >> 32) as u32);
}
