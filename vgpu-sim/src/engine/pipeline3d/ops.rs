//! What each 3D command does (see the table in the module documentation).

use crate::cmd::{
    Vertex3d, DEPTH_TEST, DEPTH_WRITE, DRAW3D_LIT, DRAW3D_TEXTURED, MATRIX_MVP, MATRIX_NORMAL,
    MAX_DRAW_VERTICES, OP_CLEAR_DEPTH, OP_DRAW_INDEXED, OP_LOAD_MATRIX, OP_SET_CULL_MODE,
    OP_SET_DEPTH_BUFFER, OP_SET_DEPTH_STATE, OP_SET_INDEX_BUFFER, OP_SET_LIGHT, OP_SET_VIEWPORT,
    OP_UPLOAD, VERTEX3D_SIZE,
};

use super::super::error::{
    BadSurfaceSnafu, BadViewportSnafu, CullModeSnafu, DepthBufferSizeSnafu, DepthFlagsSnafu,
    DrawIndexedFlagsSnafu, DrawVerticesSnafu, EngineError, IndexCountSnafu, LightRangeSnafu,
    MatrixSlotSnafu, NoTextureSnafu,
};
use super::super::exec::{check_gtt, dma_read, dma_read_to_gmem, Command, Engine};
use super::super::surface::Surface;
use super::super::EngineBus;
use super::geometry::{clip, inside, project, transform, ClipVertex, ScreenVertex};
use super::raster::Raster3d;
use super::state::{Light, Viewport};

/// Triangles whose indices one DMA reads during a `DRAW_INDEXED`.
const INDEX_CHUNK_TRIANGLES: usize = 1024;
/// Bytes of one index.
const INDEX_SIZE: usize = 4;
/// Bytes an `UPLOAD` reads per DMA (whole rows; at least one).
const UPLOAD_CHUNK: u64 = 64 << 10;
/// Bytes of a matrix in guest RAM.
const MATRIX_BYTES: usize = 64;

/// A 64-bit address from two payload dwords.
fn addr64(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// `s`, checked against graphics memory and named `which` on error.
fn checked(
    s: Surface,
    bus: &mut dyn EngineBus,
    which: &'static str,
) -> Result<Surface, EngineError> {
    let size = bus.gmem().len() as u64;
    snafu::ResultExt::context(s.check(size), BadSurfaceSnafu { which })?;
    Ok(s)
}

impl Engine {
    /// Carry out `c` if it is a 3D command; `Ok(false)` if it is not one.
    pub(crate) fn execute_3d(
        &mut self,
        bus: &mut dyn EngineBus,
        c: &Command,
    ) -> Result<bool, EngineError> {
        let p = c.payload;
        let st = &mut self.p3d;
        match c.opcode {
            OP_SET_VIEWPORT => {
                let vp = Viewport {
                    x: p[0] as u16,
                    y: (p[0] >> 16) as u16,
                    width: p[1] as u16,
                    height: (p[1] >> 16) as u16,
                };
                snafu::ensure!(
                    vp.is_valid(),
                    BadViewportSnafu {
                        origin: p[0],
                        size: p[1]
                    }
                );
                st.viewport = vp;
            }
            OP_LOAD_MATRIX => {
                let slot = p[0];
                snafu::ensure!(
                    slot == MATRIX_MVP || slot == MATRIX_NORMAL,
                    MatrixSlotSnafu { slot }
                );
                let mut b = [0u8; MATRIX_BYTES];
                dma_read(bus, addr64(p[1], p[2]), &mut b)?;
                let mut m = [0i32; 16];
                for (m, c) in m.iter_mut().zip(b.chunks_exact(4)) {
                    *m = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                if slot == MATRIX_MVP {
                    self.p3d.mvp = m;
                } else {
                    self.p3d.normal = m;
                }
            }
            OP_SET_DEPTH_BUFFER => {
                let s = Surface::from_dwords(p[0], p[1], p[2]);
                self.p3d.depth_buffer = checked(s, bus, "depth buffer")?;
            }
            OP_SET_DEPTH_STATE => {
                let flags = p[0];
                snafu::ensure!(
                    flags & !(DEPTH_TEST | DEPTH_WRITE) == 0,
                    DepthFlagsSnafu { flags }
                );
                st.depth_flags = flags;
            }
            OP_SET_CULL_MODE => {
                let mode = p[0];
                snafu::ensure!(mode <= 2, CullModeSnafu { mode });
                st.cull = mode;
            }
            OP_SET_LIGHT => {
                let light = Light {
                    dir: [p[0] as i32, p[1] as i32, p[2] as i32],
                    ambient: p[3] as i32,
                    diffuse: p[4] as i32,
                };
                snafu::ensure!(
                    light.is_valid(),
                    LightRangeSnafu {
                        ambient: light.ambient,
                        diffuse: light.diffuse
                    }
                );
                st.light = light;
            }
            OP_CLEAR_DEPTH => self.clear_depth(bus, p[0])?,
            OP_SET_INDEX_BUFFER => {
                let addr = addr64(p[0], p[1]);
                check_gtt(addr, 0)?;
                st.index_buffer = addr;
            }
            OP_DRAW_INDEXED => self.draw_indexed(bus, [p[0], p[1], p[2], p[3], p[4]])?,
            OP_UPLOAD => self.upload(bus, p[0], p[1], Surface::from_dwords(p[2], p[3], p[4]))?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `CLEAR_DEPTH`: fill the depth buffer with `value`.
    fn clear_depth(&mut self, bus: &mut dyn EngineBus, value: u32) -> Result<(), EngineError> {
        let d = checked(self.p3d.depth_buffer, bus, "depth buffer")?;
        let px = value.to_le_bytes();
        let gmem = bus.gmem();
        for y in 0..d.height {
            let row = d.row(y);
            if let Some(dst) = gmem.get_mut(row.clone()) {
                for b in dst.chunks_exact_mut(px.len()) {
                    b.copy_from_slice(&px);
                }
                self.scratch.spans.push_range(&row);
            }
        }
        self.scratch.spans.flush(bus);
        Ok(())
    }

    /// `UPLOAD`: rows of `dst.width * 4` bytes, packed in guest RAM from `lo | hi << 32`,
    /// into the surface `dst`.
    fn upload(
        &mut self,
        bus: &mut dyn EngineBus,
        lo: u32,
        hi: u32,
        dst: Surface,
    ) -> Result<(), EngineError> {
        let dst = checked(dst, bus, "upload destination")?;
        let src = addr64(lo, hi);
        let row_bytes = dst.row_bytes();
        check_gtt(src, row_bytes * u64::from(dst.height))?;
        if row_bytes == 0 {
            return Ok(());
        }
        // Straight into graphics memory: whole rows, about UPLOAD_CHUNK bytes per DMA when
        // the destination rows are packed too, else a row per DMA. The bytes are reported
        // dirty before the DMA, so a fault part-way leaves nothing written unreported.
        let height = u64::from(dst.height);
        let packed = u64::from(dst.stride) == row_bytes;
        let rows_per_read = if packed {
            (UPLOAD_CHUNK / row_bytes).max(1)
        } else {
            1
        };
        let mut result = Ok(());
        let mut y = 0u64;
        while y < height {
            let n = rows_per_read.min(height - y);
            let at = dst.row(y as u16).start;
            let len = (n * row_bytes) as usize;
            self.scratch.spans.push_range(&(at..at + len));
            if let Err(e) = dma_read_to_gmem(bus, src + y * row_bytes, at, len) {
                result = Err(e);
                break;
            }
            y += n;
        }
        self.scratch.spans.flush(bus);
        result
    }

    /// `DRAW_INDEXED`: `[first index, index count, base vertex, vertex count, flags]`.
    fn draw_indexed(&mut self, bus: &mut dyn EngineBus, a: [u32; 5]) -> Result<(), EngineError> {
        let [first, count, base, vcount, flags] = a;
        snafu::ensure!(
            flags & !(DRAW3D_TEXTURED | DRAW3D_LIT) == 0,
            DrawIndexedFlagsSnafu { flags }
        );
        snafu::ensure!(count % 3 == 0, IndexCountSnafu { count });
        snafu::ensure!(
            vcount <= MAX_DRAW_VERTICES,
            DrawVerticesSnafu {
                count: vcount,
                max: MAX_DRAW_VERTICES
            }
        );
        let target = checked(self.state.render_target, bus, "render target")?;
        let texture = if flags & DRAW3D_TEXTURED != 0 {
            snafu::ensure!(!self.state.texture.is_empty(), NoTextureSnafu);
            Some(checked(self.state.texture, bus, "texture")?)
        } else {
            None
        };
        let st = &self.p3d;
        let (test, write) = (
            st.depth_flags & DEPTH_TEST != 0,
            st.depth_flags & DEPTH_WRITE != 0,
        );
        let depth = if test || write {
            let d = checked(st.depth_buffer, bus, "depth buffer")?;
            snafu::ensure!(
                d.width >= target.width && d.height >= target.height,
                DepthBufferSizeSnafu {
                    width: d.width,
                    height: d.height,
                    target_width: target.width,
                    target_height: target.height,
                }
            );
            Some(d)
        } else {
            None
        };

        // Vertices: one DMA, transformed once.
        let stride = VERTEX3D_SIZE as u64;
        let vb = self.state.vertex_buffer;
        let vstart = vb
            .checked_add(u64::from(base) * stride)
            .ok_or(EngineError::Dma { addr: vb })?;
        check_gtt(vstart, u64::from(vcount) * stride)?;
        let ib = st.index_buffer;
        let istart = ib
            .checked_add(u64::from(first) * INDEX_SIZE as u64)
            .ok_or(EngineError::Dma { addr: ib })?;
        check_gtt(istart, u64::from(count) * INDEX_SIZE as u64)?;
        let raw = &mut self.scratch.vertices;
        raw.resize(vcount as usize * VERTEX3D_SIZE, 0);
        dma_read(bus, vstart, raw)?;
        let lit = flags & DRAW3D_LIT != 0;
        let s3 = &mut self.scratch.p3d;
        s3.clip.clear();
        for rec in self.scratch.vertices.chunks_exact(VERTEX3D_SIZE) {
            let mut b = [0u8; VERTEX3D_SIZE];
            b.copy_from_slice(rec);
            s3.clip.push(transform(&Vertex3d::from_bytes(&b), st, lit));
        }

        let vp = st.viewport;
        let scissor = [
            i64::from(vp.x),
            i64::from(vp.y),
            (i64::from(vp.x) + i64::from(vp.width)).min(i64::from(target.width)) - 1,
            (i64::from(vp.y) + i64::from(vp.height)).min(i64::from(target.height)) - 1,
        ];
        let cull = st.cull;
        let total = count as usize * INDEX_SIZE;
        let chunk = INDEX_CHUNK_TRIANGLES * 3 * INDEX_SIZE;
        let mut done = 0;
        while done < total {
            let n = chunk.min(total - done);
            let s3 = &mut self.scratch.p3d;
            s3.indices.resize(n, 0);
            dma_read(bus, istart + done as u64, &mut s3.indices)?;
            let mut r = Raster3d {
                gmem: bus.gmem(),
                target,
                depth,
                test,
                write,
                texture,
                cull,
                scissor,
                spans: &mut self.scratch.spans,
                depth_spans: &mut s3.depth_spans,
            };
            let result = triangles(&mut r, &s3.indices, &s3.clip, vp);
            self.scratch.spans.flush(bus);
            self.scratch.p3d.depth_spans.flush(bus);
            result?;
            done += n;
        }
        Ok(())
    }
}

/// Draw the triangles of `indices` (little-endian u32, three per triangle) over `verts`.
fn triangles(
    r: &mut Raster3d<'_>,
    indices: &[u8],
    verts: &[ClipVertex],
    vp: Viewport,
) -> Result<(), EngineError> {
    let count = verts.len() as u32;
    for tri in indices.chunks_exact(3 * INDEX_SIZE) {
        let mut t = [ClipVertex::default(); 3];
        for (t, b) in t.iter_mut().zip(tri.chunks_exact(INDEX_SIZE)) {
            let index = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            *t = *verts
                .get(index as usize)
                .ok_or(EngineError::IndexRange { index, count })?;
        }
        if inside(&t) {
            r.triangle(&t.map(|v| project(&v, vp)));
        } else if let Some(poly) = clip(t) {
            let s: Vec<ScreenVertex> = poly.v[..poly.len].iter().map(|v| project(v, vp)).collect();
            for k in 1..s.len() - 1 {
                r.triangle(&[s[0], s[k], s[k + 1]]);
            }
        }
    }
    Ok(())
}
