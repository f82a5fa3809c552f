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

/// DRAW flag: modulate the vertex colour with the texture.
pub const DRAW_TEXTURED: u32 = 1 << 0;

/// Number of dwords after the header for `opcode`, or `None` for an unknown opcode.
pub fn payload_dwords(opcode: u32) -> Option<u32> {
    Some(match opcode {
        OP_NOOP | OP_BATCH_END | OP_USER_INTERRUPT => 0,
        OP_FLIP | OP_CLEAR => 1,
        OP_BATCH_START | OP_SET_VERTEX_BUFFER => 2,
        OP_SET_RENDER_TARGET | OP_SET_TEXTURE | OP_DRAW | OP_STORE_DWORD | OP_PIPE_CONTROL => 3,
        OP_BLIT | OP_CHECKSUM => 5,
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
