//! A test double of the device: a register file, graphics memory, and guest RAM mapped 1:1
//! at `SYS_BASE`, recording interrupts and dirty reports.

use std::ops::Range;

use crate::cmd::{self, Vertex};
use crate::regs::{
    MMIO_SIZE, PAGE_SIZE, REG_IIR, REG_RING_CTL, REG_RING_HEAD, REG_RING_START_HI,
    REG_RING_START_LO, REG_RING_TAIL, RING_CTL_ENABLE, RING_CTL_SIZE_SHIFT, SYS_BASE,
};

use super::{DmaFault, EngineBus};

/// Guest RAM layout used by the tests (graphics addresses).
pub(crate) const RING: u64 = SYS_BASE;
/// Ring size of [`TestBus::new`]: one page.
pub(crate) const RING_SIZE: u32 = PAGE_SIZE as u32;
/// A first batch buffer.
pub(crate) const BATCH: u64 = SYS_BASE + 0x4000;
/// A second batch buffer.
pub(crate) const BATCH2: u64 = SYS_BASE + 0x6000;
/// Vertex records.
pub(crate) const VERTICES: u64 = SYS_BASE + 0x8000;
/// Where stores, seqnos and checksums go.
pub(crate) const RESULTS: u64 = SYS_BASE + 0xe000;
/// Guest RAM size of [`TestBus::new`].
pub(crate) const RAM_SIZE: usize = 0x10000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestBus {
    pub(crate) regs: Vec<u32>,
    pub(crate) gmem: Vec<u8>,
    pub(crate) ram: Vec<u8>,
    /// Guest RAM bytes the device may not write (a read-only GTT mapping).
    pub(crate) read_only: Range<u64>,
    /// Every `mark_gmem_dirty`.
    pub(crate) dirty: Vec<(u64, u64)>,
    /// Every `raise`.
    pub(crate) raised: Vec<u32>,
}

impl TestBus {
    /// A device with `gmem` bytes of graphics memory and an enabled, empty one-page ring.
    pub(crate) fn new(gmem: usize) -> Self {
        let mut b = Self {
            regs: vec![0; (MMIO_SIZE / 4) as usize],
            gmem: vec![0; gmem],
            ram: vec![0; RAM_SIZE],
            read_only: 0..0,
            dirty: Vec::new(),
            raised: Vec::new(),
        };
        b.set_reg(REG_RING_START_LO, RING as u32);
        b.set_reg(REG_RING_START_HI, (RING >> 32) as u32);
        b.set_reg(REG_RING_CTL, RING_CTL_ENABLE);
        b
    }

    /// Graphics address `gaddr` as an index into `ram`, if `len` bytes from it are there.
    fn ram_range(&self, gaddr: u64, len: usize) -> Result<Range<usize>, DmaFault> {
        let fault = DmaFault { addr: gaddr };
        let start = gaddr.checked_sub(SYS_BASE).ok_or(fault)? as usize;
        let end = start.checked_add(len).ok_or(fault)?;
        if end > self.ram.len() {
            return Err(DmaFault {
                addr: gaddr.max(SYS_BASE + self.ram.len() as u64),
            });
        }
        Ok(start..end)
    }

    /// Write dwords to guest RAM at graphics address `at`.
    pub(crate) fn put(&mut self, at: u64, words: &[u32]) {
        for (i, w) in words.iter().enumerate() {
            let o = (at - SYS_BASE) as usize + 4 * i;
            self.ram[o..o + 4].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Read a dword of guest RAM at graphics address `at`.
    pub(crate) fn get(&self, at: u64) -> u32 {
        let o = (at - SYS_BASE) as usize;
        u32::from_le_bytes([
            self.ram[o],
            self.ram[o + 1],
            self.ram[o + 2],
            self.ram[o + 3],
        ])
    }

    /// Write vertex records to guest RAM at graphics address `at`.
    pub(crate) fn put_vertices(&mut self, at: u64, vs: &[Vertex]) {
        for (i, v) in vs.iter().enumerate() {
            let o = (at - SYS_BASE) as usize + cmd::VERTEX_SIZE * i;
            self.ram[o..o + cmd::VERTEX_SIZE].copy_from_slice(&v.to_bytes());
        }
    }

    /// Submit `words` to the ring at the current tail, wrapping, and advance the tail.
    pub(crate) fn submit(&mut self, words: &[u32]) {
        let ctl = self.reg(REG_RING_CTL);
        let size = ((ctl >> RING_CTL_SIZE_SHIFT) + 1) * RING_SIZE;
        let mut tail = self.reg(REG_RING_TAIL);
        for w in words {
            self.put(RING + u64::from(tail), &[*w]);
            tail = (tail + 4) % size;
        }
        self.set_reg(REG_RING_TAIL, tail);
    }

    /// Start the (empty) ring at byte offset `at`.
    pub(crate) fn ring_at(&mut self, at: u32) {
        self.set_reg(REG_RING_HEAD, at);
        self.set_reg(REG_RING_TAIL, at);
    }

    /// The 32-bit pixel at graphics-memory offset `at`.
    pub(crate) fn pixel(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.gmem[at],
            self.gmem[at + 1],
            self.gmem[at + 2],
            self.gmem[at + 3],
        ])
    }

    /// Interrupt bits raised so far.
    pub(crate) fn iir(&self) -> u32 {
        self.reg(REG_IIR)
    }
}

impl EngineBus for TestBus {
    fn reg(&self, offset: u32) -> u32 {
        self.regs.get(offset as usize / 4).copied().unwrap_or(0)
    }

    fn set_reg(&mut self, offset: u32, value: u32) {
        if let Some(r) = self.regs.get_mut(offset as usize / 4) {
            *r = value;
        }
    }

    fn gmem(&mut self) -> &mut [u8] {
        &mut self.gmem
    }

    fn mark_gmem_dirty(&mut self, offset: u64, len: u64) {
        assert!(
            offset + len <= self.gmem.len() as u64,
            "dirty span past gmem"
        );
        self.dirty.push((offset, len));
    }

    fn dma_read(&mut self, gaddr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let r = self.ram_range(gaddr, buf.len())?;
        buf.copy_from_slice(&self.ram[r]);
        Ok(())
    }

    fn dma_write(&mut self, gaddr: u64, buf: &[u8]) -> Result<(), DmaFault> {
        let r = self.ram_range(gaddr, buf.len())?;
        let end = gaddr + buf.len() as u64;
        if gaddr < self.read_only.end && self.read_only.start < end {
            return Err(DmaFault {
                addr: gaddr.max(self.read_only.start),
            });
        }
        self.ram[r].copy_from_slice(buf);
        Ok(())
    }

    fn raise(&mut self, bits: u32) {
        self.raised.push(bits);
        let iir = self.reg(REG_IIR);
        self.set_reg(REG_IIR, iir | bits);
    }
}

/// Builds command streams.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cmds(pub(crate) Vec<u32>);

impl Cmds {
    pub(crate) fn op(mut self, opcode: u32, payload: &[u32]) -> Self {
        self.0.push(cmd::header(opcode));
        self.0.extend_from_slice(payload);
        self
    }

    pub(crate) fn noop(self) -> Self {
        self.op(cmd::OP_NOOP, &[])
    }

    pub(crate) fn batch_start(self, at: u64) -> Self {
        self.op(cmd::OP_BATCH_START, &[at as u32, (at >> 32) as u32])
    }

    pub(crate) fn batch_end(self) -> Self {
        self.op(cmd::OP_BATCH_END, &[])
    }

    pub(crate) fn render_target(self, offset: u32, stride: u32, w: u32, h: u32) -> Self {
        self.op(cmd::OP_SET_RENDER_TARGET, &[offset, stride, w | (h << 16)])
    }

    pub(crate) fn clear(self, color: u32) -> Self {
        self.op(cmd::OP_CLEAR, &[color])
    }

    pub(crate) fn texture(self, offset: u32, stride: u32, w: u32, h: u32) -> Self {
        self.op(cmd::OP_SET_TEXTURE, &[offset, stride, w | (h << 16)])
    }

    pub(crate) fn vertex_buffer(self, at: u64) -> Self {
        self.op(cmd::OP_SET_VERTEX_BUFFER, &[at as u32, (at >> 32) as u32])
    }

    pub(crate) fn draw(self, first: u32, count: u32, flags: u32) -> Self {
        self.op(cmd::OP_DRAW, &[first, count, flags])
    }

    pub(crate) fn blit(
        self,
        src: u32,
        src_stride: u32,
        dst: u32,
        dst_stride: u32,
        w: u32,
        h: u32,
    ) -> Self {
        self.op(
            cmd::OP_BLIT,
            &[src, src_stride, dst, dst_stride, w | (h << 16)],
        )
    }

    pub(crate) fn store(self, at: u64, value: u32) -> Self {
        self.op(cmd::OP_STORE_DWORD, &[at as u32, (at >> 32) as u32, value])
    }

    pub(crate) fn pipe_control(self, at: u64, seqno: u32) -> Self {
        self.op(cmd::OP_PIPE_CONTROL, &[at as u32, (at >> 32) as u32, seqno])
    }

    pub(crate) fn user_interrupt(self) -> Self {
        self.op(cmd::OP_USER_INTERRUPT, &[])
    }

    pub(crate) fn checksum(self, offset: u32, stride: u32, w: u32, h: u32, at: u64) -> Self {
        self.op(
            cmd::OP_CHECKSUM,
            &[offset, stride, w | (h << 16), at as u32, (at >> 32) as u32],
        )
    }

    pub(crate) fn flip(self, offset: u32) -> Self {
        self.op(cmd::OP_FLIP, &[offset])
    }

    /// A raw dword (malformed commands).
    pub(crate) fn raw(mut self, words: &[u32]) -> Self {
        self.0.extend_from_slice(words);
        self
    }
}
