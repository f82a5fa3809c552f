//! The command set: what the ring and batch buffers hold.
//!
//! Commands are sequences of little-endian dwords. The header dword holds the opcode in bits
//! 24..32 and the number of dwords that follow in bits 0..16 (as Intel's MI and 3D commands
//! carry a length field). A header whose length does not match the opcode's, or an unknown
//! opcode, is a command error: the engine latches [`crate::regs::INT_CMD_ERROR`] and halts.
//!
//! | opcode | name              | dwords after header                                          |
//! |--------|-------------------|--------------------------------------------------------------|
//! | 0x00   | NOOP              | 0                                                            |
//! | 0x01   | BATCH_START       | 2: batch graphics address lo, hi (in the GTT range)          |
//! | 0x02   | BATCH_END         | 0 (back to the ring after the BATCH_START)                   |
//! | 0x03   | SET_RENDER_TARGET | 3: gmem offset, stride in bytes, width \| height << 16       |
//! | 0x04   | CLEAR             | 1: ARGB colour, fills the whole render target                |
//! | 0x05   | SET_TEXTURE       | 3: gmem offset, stride in bytes, width \| height << 16       |
//! | 0x06   | SET_VERTEX_BUFFER | 2: graphics address lo, hi of [`Vertex`] records (guest RAM) |
//! | 0x07   | DRAW              | 3: first vertex, vertex count (multiple of 3), flags          |
//! | 0x08   | BLIT              | 5: src gmem offset, src stride, dst gmem offset, dst stride, width \| height << 16 (32-bit pixels) |
//! | 0x09   | STORE_DWORD       | 3: graphics address lo, hi, value (DMA write)                |
//! | 0x0a   | PIPE_CONTROL      | 3: graphics address lo, hi, seqno (post-sync DMA write; sets SEQNO, raises PIPE_NOTIFY) |
//! | 0x0b   | USER_INTERRUPT    | 0 (raises USER)                                              |
//! | 0x0c   | CHECKSUM          | 5: gmem offset, stride, width \| height << 16, dest address lo, hi: SHA-256 of the surface rows, first 8 bytes written by DMA |
//! | 0x0d   | FLIP              | 1: gmem offset of the new front buffer (raises FLIP_DONE)    |
//! | 0x10   | SET_VIEWPORT      | 2: x \| y << 16, width \| height << 16 (pixels, each at most [`MAX_VIEWPORT`]) |
//! | 0x11   | LOAD_MATRIX       | 3: slot ([`MATRIX_MVP`] or [`MATRIX_NORMAL`]), graphics address lo, hi of 16 little-endian i32 (row-major, 16.16), read by DMA |
//! | 0x12   | SET_DEPTH_BUFFER  | 3: gmem offset, stride in bytes, width \| height << 16 (one u32 depth per pixel) |
//! | 0x13   | SET_DEPTH_STATE   | 1: [`DEPTH_TEST`] \| [`DEPTH_WRITE`]                        |
//! | 0x14   | SET_CULL_MODE     | 1: [`CULL_NONE`], [`CULL_BACK`] or [`CULL_FRONT`]           |
//! | 0x15   | SET_LIGHT         | 5: direction to the light x, y, z (world space, 16.16), ambient, diffuse (16.16, each 0..=1.0) |
//! | 0x16   | CLEAR_DEPTH       | 1: depth value, fills the whole depth buffer                  |
//! | 0x17   | SET_INDEX_BUFFER  | 2: graphics address lo, hi of little-endian u32 indices (guest RAM) |
//! | 0x18   | DRAW_INDEXED      | 5: first index, index count (multiple of 3), base vertex, vertex count (at most [`MAX_DRAW_VERTICES`]; every index below it), flags ([`DRAW3D_TEXTURED`] \| [`DRAW3D_LIT`]); [`Vertex3d`] records |
//! | 0x19   | UPLOAD            | 5: source graphics address lo, hi (rows of width * 4 bytes, packed), dest gmem offset, dest stride, width \| height << 16: a DMA read into graphics memory |
//!
//! Opcodes 0x10..=0x19 drive the fixed-function 3D pipeline; the device's documentation
//! (`vgpu_sim::engine::pipeline3d`) specifies each one's effect.
//!
//! Every command is atomic: the engine stops only between commands, so stopping the device
//! takes at most one command, and the resume point is a command boundary.

/// Opcode: no operation.
pub const OP_NOOP: u32 = 0x00;
/// Opcode: jump into a batch buffer.
pub const OP_BATCH_START: u32 = 0x01;
/// Opcode: return from a batch buffer.
pub const OP_BATCH_END: u32 = 0x02;
/// Opcode: select the render target.
pub const OP_SET_RENDER_TARGET: u32 = 0x03;
/// Opcode: fill the render target.
pub const OP_CLEAR: u32 = 0x04;
/// Opcode: select the texture.
pub const OP_SET_TEXTURE: u32 = 0x05;
/// Opcode: select the vertex buffer.
pub const OP_SET_VERTEX_BUFFER: u32 = 0x06;
/// Opcode: draw a triangle list.
pub const OP_DRAW: u32 = 0x07;
/// Opcode: copy a rectangle of 32-bit pixels within graphics memory.
pub const OP_BLIT: u32 = 0x08;
/// Opcode: write a dword to memory.
pub const OP_STORE_DWORD: u32 = 0x09;
/// Opcode: write the seqno after all previous work.
pub const OP_PIPE_CONTROL: u32 = 0x0a;
/// Opcode: raise the user interrupt.
pub const OP_USER_INTERRUPT: u32 = 0x0b;
/// Opcode: checksum a surface into memory.
pub const OP_CHECKSUM: u32 = 0x0c;
/// Opcode: show a surface.
pub const OP_FLIP: u32 = 0x0d;

/// Opcode: set the viewport.
pub const OP_SET_VIEWPORT: u32 = 0x10;
/// Opcode: load a 4x4 matrix from guest RAM.
pub const OP_LOAD_MATRIX: u32 = 0x11;
/// Opcode: select the depth buffer.
pub const OP_SET_DEPTH_BUFFER: u32 = 0x12;
/// Opcode: depth test and write enables.
pub const OP_SET_DEPTH_STATE: u32 = 0x13;
/// Opcode: which faces to discard.
pub const OP_SET_CULL_MODE: u32 = 0x14;
/// Opcode: the directional light.
pub const OP_SET_LIGHT: u32 = 0x15;
/// Opcode: fill the depth buffer.
pub const OP_CLEAR_DEPTH: u32 = 0x16;
/// Opcode: select the index buffer.
pub const OP_SET_INDEX_BUFFER: u32 = 0x17;
/// Opcode: draw an indexed triangle list through the 3D pipeline.
pub const OP_DRAW_INDEXED: u32 = 0x18;
/// Opcode: copy a rectangle of pixels from guest RAM into graphics memory (DMA read).
pub const OP_UPLOAD: u32 = 0x19;

/// DRAW flag: modulate the vertex colour with the texture.
pub const DRAW_TEXTURED: u32 = 1 << 0;

/// `LOAD_MATRIX` slot: the model-view-projection matrix (object space to clip space).
pub const MATRIX_MVP: u32 = 0;
/// `LOAD_MATRIX` slot: the normal matrix (its upper-left 3x3 takes object-space normals to
/// the light's world space).
pub const MATRIX_NORMAL: u32 = 1;
/// `SET_DEPTH_STATE` bit: test each pixel's depth against the depth buffer (pass if less).
pub const DEPTH_TEST: u32 = 1 << 0;
/// `SET_DEPTH_STATE` bit: write the depth of each pixel that passes.
pub const DEPTH_WRITE: u32 = 1 << 1;
/// `SET_CULL_MODE`: draw both faces.
pub const CULL_NONE: u32 = 0;
/// `SET_CULL_MODE`: discard back faces (clockwise on screen; counter-clockwise is front).
pub const CULL_BACK: u32 = 1;
/// `SET_CULL_MODE`: discard front faces.
pub const CULL_FRONT: u32 = 2;
/// `DRAW_INDEXED` flag: modulate the colour with the bound texture at perspective-correct
/// texture coordinates.
pub const DRAW3D_TEXTURED: u32 = 1 << 0;
/// `DRAW_INDEXED` flag: light each vertex with the directional light (Gouraud).
pub const DRAW3D_LIT: u32 = 1 << 1;
/// 1.0 in 16.16 fixed point (matrices, positions, texture coordinates, light).
pub const FIXED_ONE: i32 = 1 << 16;
/// 1.0 in the 2.14 fixed point of [`Vertex3d::normal`].
pub const NORMAL_ONE: i16 = 1 << 14;
/// Depth of the far plane: depths run from 0 (near) to this (far).
pub const DEPTH_ONE: u32 = 1 << 24;
/// Most vertices one `DRAW_INDEXED` may reference.
pub const MAX_DRAW_VERTICES: u32 = 1 << 16;
/// Largest viewport origin or size, in pixels.
pub const MAX_VIEWPORT: u32 = 8192;

/// Number of dwords after the header for `opcode`, or `None` for an unknown opcode.
pub fn payload_dwords(opcode: u32) -> Option<u32> {
    Some(match opcode {
        OP_NOOP | OP_BATCH_END | OP_USER_INTERRUPT => 0,
        OP_FLIP | OP_CLEAR | OP_SET_DEPTH_STATE | OP_SET_CULL_MODE | OP_CLEAR_DEPTH => 1,
        OP_BATCH_START | OP_SET_VERTEX_BUFFER | OP_SET_VIEWPORT | OP_SET_INDEX_BUFFER => 2,
        OP_SET_RENDER_TARGET | OP_SET_TEXTURE | OP_DRAW | OP_STORE_DWORD | OP_PIPE_CONTROL => 3,
        OP_LOAD_MATRIX | OP_SET_DEPTH_BUFFER => 3,
        OP_BLIT | OP_CHECKSUM | OP_SET_LIGHT | OP_DRAW_INDEXED | OP_UPLOAD => 5,
        _ => return None,
    })
}

/// The header dword of a command.
pub fn header(opcode: u32) -> u32 {
    (opcode << 24) | payload_dwords(opcode).unwrap_or(0)
}

/// Split a header into (opcode, payload dwords).
pub fn decode_header(h: u32) -> (u32, u32) {
    (h >> 24, h & 0xffff)
}

/// Size in bytes of one vertex record.
pub const VERTEX_SIZE: usize = 20;

/// A vertex as the engine reads it from a vertex buffer (20 bytes, little-endian):
/// screen x and y in 16.16 fixed point, texture u and v in 16.16 (0..=1.0 spans the
/// texture), ARGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vertex {
    /// Screen x, 16.16 fixed point.
    pub x: i32,
    /// Screen y, 16.16 fixed point.
    pub y: i32,
    /// Texture u, 16.16 fixed point.
    pub u: i32,
    /// Texture v, 16.16 fixed point.
    pub v: i32,
    /// ARGB colour.
    pub color: u32,
}

impl Vertex {
    /// Encode as 20 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; VERTEX_SIZE] {
        let mut b = [0u8; VERTEX_SIZE];
        b[0..4].copy_from_slice(&self.x.to_le_bytes());
        b[4..8].copy_from_slice(&self.y.to_le_bytes());
        b[8..12].copy_from_slice(&self.u.to_le_bytes());
        b[12..16].copy_from_slice(&self.v.to_le_bytes());
        b[16..20].copy_from_slice(&self.color.to_le_bytes());
        b
    }

    /// Decode from 20 little-endian bytes.
    pub fn from_bytes(b: &[u8; VERTEX_SIZE]) -> Self {
        let d = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Self {
            x: i32::from_le_bytes(d(0)),
            y: i32::from_le_bytes(d(4)),
            u: i32::from_le_bytes(d(8)),
            v: i32::from_le_bytes(d(12)),
            color: u32::from_le_bytes(d(16)),
        }
    }
}

/// Size in bytes of one [`Vertex3d`] record.
pub const VERTEX3D_SIZE: usize = 32;

/// A vertex of the 3D pipeline as `DRAW_INDEXED` reads it (32 bytes, little-endian):
/// object-space position x, y, z (16.16), normal x, y, z (2.14, i16) and a reserved i16,
/// texture u, v (16.16; 1.0 spans the texture, and it repeats), ARGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vertex3d {
    /// Object-space position, 16.16 fixed point.
    pub pos: [i32; 3],
    /// Object-space normal, 2.14 fixed point (unit length for correct lighting).
    pub normal: [i16; 3],
    /// Texture coordinates, 16.16 fixed point.
    pub uv: [i32; 2],
    /// ARGB colour.
    pub color: u32,
}

impl Vertex3d {
    /// Encode as 32 little-endian bytes (the reserved i16 is 0).
    pub fn to_bytes(&self) -> [u8; VERTEX3D_SIZE] {
        let mut b = [0u8; VERTEX3D_SIZE];
        for (i, p) in self.pos.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&p.to_le_bytes());
        }
        for (i, n) in self.normal.iter().enumerate() {
            b[12 + 2 * i..14 + 2 * i].copy_from_slice(&n.to_le_bytes());
        }
        b[20..24].copy_from_slice(&self.uv[0].to_le_bytes());
        b[24..28].copy_from_slice(&self.uv[1].to_le_bytes());
        b[28..32].copy_from_slice(&self.color.to_le_bytes());
        b
    }

    /// Decode from 32 little-endian bytes (the reserved i16 is ignored).
    pub fn from_bytes(b: &[u8; VERTEX3D_SIZE]) -> Self {
        let d = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let h = |i: usize| i16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            pos: [
                i32::from_le_bytes(d(0)),
                i32::from_le_bytes(d(4)),
                i32::from_le_bytes(d(8)),
            ],
            normal: [h(12), h(14), h(16)],
            uv: [i32::from_le_bytes(d(20)), i32::from_le_bytes(d(24))],
            color: u32::from_le_bytes(d(28)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex3d_round_trips_and_every_field_moves_the_bytes() {
        let v = Vertex3d {
            pos: [1, -2, 3],
            normal: [-4, 5, -6],
            uv: [7, -8],
            color: 0x1122_3344,
        };
        let b = v.to_bytes();
        assert_eq!(Vertex3d::from_bytes(&b), v);
        assert_eq!(&b[0..4], &1i32.to_le_bytes());
        assert_eq!(&b[12..14], &(-4i16).to_le_bytes());
        assert_eq!(&b[18..20], &[0, 0]);
        assert_eq!(&b[28..32], &0x1122_3344u32.to_le_bytes());
    }

    #[test]
    fn every_3d_opcode_has_a_length() {
        for op in 0x10..=0x19 {
            assert!(payload_dwords(op).is_some(), "opcode {op:#x}");
        }
        assert_eq!(payload_dwords(0x1a), None);
        assert_eq!(payload_dwords(OP_DRAW_INDEXED), Some(5));
    }
}
