//! Why the engine halted.

use snafu::Snafu;

use crate::regs::{INT_CMD_ERROR, INT_ENGINE_HANG, INT_GTT_ERROR};

use super::surface::SurfaceError;
use super::DmaFault;

/// Why the engine halted: a malformed command (`INT_CMD_ERROR`) or a DMA the GTT could not
/// carry (`INT_GTT_ERROR`). Kept by [`super::Engine::last_error`] for the device's log; the
/// guest sees only the interrupt bit and the address.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum EngineError {
    /// The opcode is not in the command set.
    #[snafu(display("unknown opcode {opcode:#04x} in header {header:#010x}"))]
    UnknownOpcode {
        /// The header dword.
        header: u32,
        /// Its opcode field.
        opcode: u32,
    },
    /// The header's length field does not match the opcode.
    #[snafu(display("opcode {opcode:#04x} with {len} payload dwords, expected {expected}"))]
    BadLength {
        /// The opcode.
        opcode: u32,
        /// The length field.
        len: u32,
        /// The opcode's payload length.
        expected: u32,
    },
    /// A ring command extends past the tail: the driver submitted part of a command.
    #[snafu(display("command of {len} bytes at ring offset {head:#x} runs past tail {tail:#x}"))]
    PastTail {
        /// Ring offset of the command.
        head: u32,
        /// The ring tail.
        tail: u32,
        /// Bytes of the command.
        len: u32,
    },
    /// `REG_RING_START` is not page aligned.
    #[snafu(display("ring start {start:#x} is not page aligned"))]
    RingStart {
        /// The ring start address.
        start: u64,
    },
    /// `REG_RING_HEAD` or `REG_RING_TAIL` is not a dword offset inside the ring.
    #[snafu(display("ring {which} {value:#x} is not a dword offset inside the {size}-byte ring"))]
    RingPointer {
        /// "head" or "tail".
        which: &'static str,
        /// The register's value.
        value: u32,
        /// The ring size in bytes.
        size: u32,
    },
    /// `BATCH_START` inside a batch (batches do not nest).
    #[snafu(display("BATCH_START inside a batch"))]
    NestedBatch,
    /// `BATCH_END` in the ring.
    #[snafu(display("BATCH_END outside a batch"))]
    BatchEndOutsideBatch,
    /// The batch address is not dword aligned.
    #[snafu(display("batch address {addr:#x} is not dword aligned"))]
    BatchAlign {
        /// The batch address.
        addr: u64,
    },
    /// A surface operand does not fit graphics memory.
    #[snafu(display("the {which} does not fit graphics memory"))]
    BadSurface {
        /// Which operand: "render target", "texture", "blit source", ...
        which: &'static str,
        /// What is wrong with it.
        source: SurfaceError,
    },
    /// A `DRAW` vertex count that is not a whole number of triangles.
    #[snafu(display("vertex count {count} is not a multiple of 3"))]
    VertexCount {
        /// The vertex count.
        count: u32,
    },
    /// `DRAW` flags outside [`crate::cmd::DRAW_TEXTURED`].
    #[snafu(display("unknown DRAW flags {flags:#x}"))]
    DrawFlags {
        /// The flags dword.
        flags: u32,
    },
    /// A textured `DRAW` while the texture is empty.
    #[snafu(display("textured DRAW without a texture"))]
    NoTexture,
    /// `FLIP` to an offset beyond graphics memory.
    #[snafu(display("flip to {offset:#x}, beyond graphics memory of {gmem_size:#x} bytes"))]
    FlipOffset {
        /// The offset asked for.
        offset: u32,
        /// The graphics memory size.
        gmem_size: u64,
    },
    /// `SET_VIEWPORT` with an origin or size beyond [`crate::cmd::MAX_VIEWPORT`].
    #[snafu(display("viewport {origin:#x} / {size:#x} exceeds the largest viewport"))]
    BadViewport {
        /// The `x | y << 16` dword.
        origin: u32,
        /// The `width | height << 16` dword.
        size: u32,
    },
    /// `LOAD_MATRIX` to a slot that does not exist.
    #[snafu(display("matrix slot {slot} does not exist"))]
    MatrixSlot {
        /// The slot asked for.
        slot: u32,
    },
    /// `SET_DEPTH_STATE` with undefined bits.
    #[snafu(display("unknown depth state bits {flags:#x}"))]
    DepthFlags {
        /// The flags dword.
        flags: u32,
    },
    /// `SET_CULL_MODE` with an undefined mode.
    #[snafu(display("unknown cull mode {mode}"))]
    CullMode {
        /// The mode asked for.
        mode: u32,
    },
    /// `SET_LIGHT` with an ambient or diffuse intensity outside 0..=1.0.
    #[snafu(display("light intensities {ambient:#x}, {diffuse:#x} are outside 0..=1.0"))]
    LightRange {
        /// Ambient, 16.16.
        ambient: i32,
        /// Diffuse, 16.16.
        diffuse: i32,
    },
    /// A `DRAW_INDEXED` index count that is not a whole number of triangles.
    #[snafu(display("index count {count} is not a multiple of 3"))]
    IndexCount {
        /// The index count.
        count: u32,
    },
    /// A `DRAW_INDEXED` that references more vertices than one draw may.
    #[snafu(display("vertex count {count} exceeds {max}"))]
    DrawVertices {
        /// The vertex count.
        count: u32,
        /// The most allowed.
        max: u32,
    },
    /// `DRAW_INDEXED` flags outside `DRAW3D_TEXTURED | DRAW3D_LIT`.
    #[snafu(display("unknown DRAW_INDEXED flags {flags:#x}"))]
    DrawIndexedFlags {
        /// The flags dword.
        flags: u32,
    },
    /// A depth-tested or depth-writing draw whose depth buffer does not cover the target.
    #[snafu(display(
        "depth buffer of {width}x{height} does not cover the {target_width}x{target_height} render target"
    ))]
    DepthBufferSize {
        /// Depth buffer width.
        width: u16,
        /// Depth buffer height.
        height: u16,
        /// Render target width.
        target_width: u16,
        /// Render target height.
        target_height: u16,
    },
    /// An index at or beyond the draw's vertex count.
    #[snafu(display("index {index} is not below the draw's vertex count {count}"))]
    IndexRange {
        /// The index.
        index: u32,
        /// The draw's vertex count.
        count: u32,
    },
    /// The hang check: a batch ran past `MAX_BATCH_BYTES` without its `BATCH_END` (as
    /// i915's hangcheck stops an engine that makes no progress).
    #[snafu(display(
        "engine hang: the batch at {start:#x} ran past {limit} bytes without BATCH_END"
    ))]
    Hang {
        /// The batch's start address.
        start: u64,
        /// The limit, bytes.
        limit: u32,
    },
    /// A DMA to an address outside the GTT range, or one the GTT could not translate.
    #[snafu(display("DMA to unmapped graphics address {addr:#x}"))]
    Dma {
        /// The first faulting graphics address.
        addr: u64,
    },
}

impl EngineError {
    /// The `INT_*` bit this error latches.
    pub fn interrupt(&self) -> u32 {
        match self {
            Self::Dma { .. } => INT_GTT_ERROR,
            Self::Hang { .. } => INT_ENGINE_HANG,
            _ => INT_CMD_ERROR,
        }
    }

    /// The address to report: the faulting address for a DMA error, else `command`.
    pub(crate) fn address(&self, command: u64) -> u64 {
        match self {
            Self::Dma { addr } => *addr,
            _ => command,
        }
    }
}

impl From<DmaFault> for EngineError {
    fn from(f: DmaFault) -> Self {
        Self::Dma { addr: f.addr }
    }
}
