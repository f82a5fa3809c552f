//! What each command does (see the table in [`crate::cmd`]).

use sha2::{Digest, Sha256};

use crate::cmd::{
    Vertex, DRAW_TEXTURED, OP_BATCH_END, OP_BATCH_START, OP_BLIT, OP_CHECKSUM, OP_CLEAR, OP_DRAW,
    OP_FLIP, OP_NOOP, OP_PIPE_CONTROL, OP_SET_RENDER_TARGET, OP_SET_TEXTURE, OP_SET_VERTEX_BUFFER,
    OP_STORE_DWORD, OP_USER_INTERRUPT, VERTEX_SIZE,
};
use crate::regs::{
    INT_FLIP_DONE, INT_PIPE_NOTIFY, INT_USER, REG_DSP_SURF, REG_FLIP_COUNT, REG_SEQNO,
};

use super::error::{
    BadSurfaceSnafu, BatchAlignSnafu, BatchEndOutsideBatchSnafu, DrawFlagsSnafu, EngineError,
    FlipOffsetSnafu, NestedBatchSnafu, NoTextureSnafu, VertexCountSnafu,
};
use super::exec::{check_gtt, dma_read, dma_write, Command, Engine};
use super::raster::Rasterizer;
use super::surface::{DirtySpans, Surface};
use super::EngineBus;

/// Triangles read by one DMA during a `DRAW` (bounds the scratch buffer).
const DRAW_CHUNK_TRIANGLES: u64 = 1024;
/// Bytes of the checksum written to memory.
const CHECKSUM_BYTES: usize = 8;

/// A 64-bit address from two payload dwords.
fn addr64(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// `s`, checked against a graphics memory of `gmem_size` bytes and named `which` on error.
fn checked(s: Surface, gmem_size: u64, which: &'static str) -> Result<Surface, EngineError> {
    snafu::ResultExt::context(s.check(gmem_size), BadSurfaceSnafu { which })?;
    Ok(s)
}

fn gmem_size(bus: &mut dyn EngineBus) -> u64 {
    bus.gmem().len() as u64
}

impl Engine {
    /// Carry out one fetched command. On error nothing is retired.
    pub(crate) fn execute(
        &mut self,
        bus: &mut dyn EngineBus,
        c: &Command,
    ) -> Result<(), EngineError> {
        let p = c.payload;
        match c.opcode {
            OP_NOOP => {}
            OP_BATCH_START => {
                snafu::ensure!(!self.state.in_batch, NestedBatchSnafu);
                let addr = addr64(p[0], p[1]);
                snafu::ensure!(addr % 4 == 0, BatchAlignSnafu { addr });
                check_gtt(addr, 4)?;
                self.state.in_batch = true;
                self.state.batch_start = addr;
                self.state.batch_offset = 0;
            }
            OP_BATCH_END => {
                snafu::ensure!(self.state.in_batch, BatchEndOutsideBatchSnafu);
                self.state.in_batch = false;
                self.state.batch_start = 0;
                self.state.batch_offset = 0;
            }
            OP_SET_RENDER_TARGET => {
                let s = Surface::from_dwords(p[0], p[1], p[2]);
                self.state.render_target = checked(s, gmem_size(bus), "render target")?;
            }
            OP_CLEAR => self.clear(bus, p[0])?,
            OP_SET_TEXTURE => {
                let s = Surface::from_dwords(p[0], p[1], p[2]);
                self.state.texture = checked(s, gmem_size(bus), "texture")?;
            }
            OP_SET_VERTEX_BUFFER => {
                let addr = addr64(p[0], p[1]);
                check_gtt(addr, 0)?;
                self.state.vertex_buffer = addr;
            }
            OP_DRAW => self.draw(bus, p[0], p[1], p[2])?,
            OP_BLIT => blit(bus, p, &mut self.scratch.spans)?,
            OP_STORE_DWORD => dma_write(bus, addr64(p[0], p[1]), &p[2].to_le_bytes())?,
            OP_PIPE_CONTROL => {
                dma_write(bus, addr64(p[0], p[1]), &p[2].to_le_bytes())?;
                bus.set_reg(REG_SEQNO, p[2]);
                bus.raise(INT_PIPE_NOTIFY);
            }
            OP_USER_INTERRUPT => bus.raise(INT_USER),
            OP_CHECKSUM => checksum(bus, p)?,
            OP_FLIP => {
                let (offset, gmem_size) = (p[0], gmem_size(bus));
                snafu::ensure!(
                    u64::from(offset) < gmem_size,
                    FlipOffsetSnafu { offset, gmem_size }
                );
                bus.set_reg(REG_DSP_SURF, offset);
                let flips = bus.reg(REG_FLIP_COUNT).wrapping_add(1);
                bus.set_reg(REG_FLIP_COUNT, flips);
                bus.raise(INT_FLIP_DONE);
            }
            _ if self.execute_3d(bus, c)? => {}
            opcode => {
                // `fetch` lets only known opcodes through; refuse rather than panic anyway.
                return Err(EngineError::UnknownOpcode {
                    header: opcode << 24,
                    opcode,
                });
            }
        }
        Ok(())
    }

    /// `CLEAR`: fill the render target with `color`.
    fn clear(&mut self, bus: &mut dyn EngineBus, color: u32) -> Result<(), EngineError> {
        let rt = checked(self.state.render_target, gmem_size(bus), "render target")?;
        let px = color.to_le_bytes();
        let gmem = bus.gmem();
        for y in 0..rt.height {
            let row = rt.row(y);
            if let Some(dst) = gmem.get_mut(row.clone()) {
                for d in dst.chunks_exact_mut(px.len()) {
                    d.copy_from_slice(&px);
                }
                self.scratch.spans.push_range(&row);
            }
        }
        self.scratch.spans.flush(bus);
        Ok(())
    }

    /// `DRAW`: `count` vertices from vertex `first` of the vertex buffer, as a triangle list.
    fn draw(
        &mut self,
        bus: &mut dyn EngineBus,
        first: u32,
        count: u32,
        flags: u32,
    ) -> Result<(), EngineError> {
        snafu::ensure!(flags & !DRAW_TEXTURED == 0, DrawFlagsSnafu { flags });
        snafu::ensure!(count % 3 == 0, VertexCountSnafu { count });
        let size = gmem_size(bus);
        let target = checked(self.state.render_target, size, "render target")?;
        let texture = if flags & DRAW_TEXTURED != 0 {
            snafu::ensure!(!self.state.texture.is_empty(), NoTextureSnafu);
            Some(checked(self.state.texture, size, "texture")?)
        } else {
            None
        };
        let vb = self.state.vertex_buffer;
        let stride = VERTEX_SIZE as u64;
        // first * 20 < 2^37: only the addition can overflow.
        let start = vb
            .checked_add(u64::from(first) * stride)
            .ok_or(EngineError::Dma { addr: vb })?;
        let total = u64::from(count) * stride;
        check_gtt(start, total)?;
        let chunk = DRAW_CHUNK_TRIANGLES * 3 * stride;
        let mut done = 0;
        while done < total {
            let n = chunk.min(total - done);
            let buf = &mut self.scratch.vertices;
            buf.resize(n as usize, 0);
            dma_read(bus, start + done, buf)?;
            let mut r = Rasterizer {
                gmem: bus.gmem(),
                target,
                texture,
                row: &mut self.scratch.row,
                spans: &mut self.scratch.spans,
            };
            for tri in self.scratch.vertices.chunks_exact(3 * VERTEX_SIZE) {
                let mut v = [Vertex::default(); 3];
                for (v, b) in v.iter_mut().zip(tri.chunks_exact(VERTEX_SIZE)) {
                    let mut rec = [0; VERTEX_SIZE];
                    rec.copy_from_slice(b);
                    *v = Vertex::from_bytes(&rec);
                }
                r.triangle(&v);
            }
            self.scratch.spans.flush(bus);
            done += n;
        }
        Ok(())
    }
}

/// `BLIT`: copy a rectangle of pixels; overlapping rectangles copy as if through a buffer.
fn blit(bus: &mut dyn EngineBus, p: [u32; 5], spans: &mut DirtySpans) -> Result<(), EngineError> {
    let size = gmem_size(bus);
    let src = checked(Surface::from_dwords(p[0], p[1], p[4]), size, "blit source")?;
    let dst = checked(
        Surface::from_dwords(p[2], p[3], p[4]),
        size,
        "blit destination",
    )?;
    let gmem = bus.gmem();
    let (s, d) = (src.extent(), dst.extent());
    if s.start < d.end && d.start < s.end {
        let mut tmp = Vec::with_capacity(src.row_bytes() as usize * usize::from(src.height));
        for y in 0..src.height {
            tmp.extend_from_slice(gmem.get(src.row(y)).unwrap_or_default());
        }
        for (y, row) in (0..dst.height).zip(tmp.chunks_exact(src.row_bytes().max(1) as usize)) {
            if let Some(out) = gmem.get_mut(dst.row(y)) {
                out.copy_from_slice(row);
            }
        }
    } else {
        for y in 0..src.height {
            let (from, to) = (src.row(y), dst.row(y));
            if from.end <= gmem.len() && to.end <= gmem.len() {
                gmem.copy_within(from, to.start);
            }
        }
    }
    for y in 0..dst.height {
        spans.push_range(&dst.row(y));
    }
    spans.flush(bus);
    Ok(())
}

/// `CHECKSUM`: SHA-256 over the surface's rows, first 8 bytes written by DMA.
fn checksum(bus: &mut dyn EngineBus, p: [u32; 5]) -> Result<(), EngineError> {
    let size = gmem_size(bus);
    let s = checked(
        Surface::from_dwords(p[0], p[1], p[2]),
        size,
        "checksum surface",
    )?;
    let dest = addr64(p[3], p[4]);
    check_gtt(dest, CHECKSUM_BYTES as u64)?;
    let gmem = bus.gmem();
    let mut h = Sha256::new();
    for y in 0..s.height {
        h.update(gmem.get(s.row(y)).unwrap_or_default());
    }
    let digest = h.finalize();
    dma_write(bus, dest, &digest[..CHECKSUM_BYTES])
}
