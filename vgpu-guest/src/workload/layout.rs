//! Where the guest driver keeps everything: guest-physical layout, GTT mapping and the
//! graphics-memory plan. All of it is guest state; nothing lives in host variables.

use crate::regs::{PAGE_SIZE, SYS_BASE};

/// Parameter block written by the host loader at boot (like a kernel command line).
pub const PARAMS_GPA: u64 = 0x1000;
/// The driver's own state block.
pub const STATE_GPA: u64 = 0x2000;
/// Start of the guest RAM range the driver maps into the GTT.
pub const GTT_MAPPED_BASE: u64 = 0x10_0000;
/// Ring buffer (16 KiB).
pub const RING_GPA: u64 = 0x10_0000;
/// Ring size in bytes.
pub const RING_SIZE: u64 = 16 << 10;
/// Two batch buffers, one per frame slot.
pub const BATCH_GPA: u64 = 0x20_0000;
/// Size of one batch buffer.
pub const BATCH_SIZE: u64 = 64 << 10;
/// The seqno page, written by the device's PIPE_CONTROL.
pub const SEQNO_GPA: u64 = 0x30_0000;
/// Two vertex buffers, one per frame slot.
pub const VB_GPA: u64 = 0x40_0000;
/// Size of one vertex buffer.
pub const VB_SIZE: u64 = 4 << 20;
/// The checksum log: one little-endian u64 per frame, written by the device's CHECKSUM.
pub const LOG_GPA: u64 = 0x100_0000;
/// Size of the checksum log.
pub const LOG_SIZE: u64 = 2 << 20;
/// Most frames the log holds.
pub const MAX_FRAMES: u64 = LOG_SIZE / 8;
/// End of the range the driver maps into the GTT.
pub const GTT_MAPPED_END: u64 = LOG_GPA + LOG_SIZE;
/// Number of GTT entries the driver programs.
pub const GTT_MAPPED_PAGES: u64 = (GTT_MAPPED_END - GTT_MAPPED_BASE) / PAGE_SIZE;
/// Smallest guest RAM the workload runs in.
pub const MIN_GUEST_RAM: u64 = GTT_MAPPED_END;

/// ECAM window through which the guest reaches the vGPU's config space (bus 0, dev 0).
pub const ECAM_GPA: u64 = 0xb000_0000;
/// Where the firmware places BAR2 (the aperture).
pub const BAR2_GPA: u64 = 0xc000_0000;
/// Where the firmware places BAR0 (registers and GTT window).
pub const BAR0_GPA: u64 = 0xe000_0000;
/// Lowest MMIO address: guest RAM must end below it.
pub const MMIO_HOLE_START: u64 = 0xb000_0000;

/// Interrupt vector the driver asks for in its MSI data.
pub const MSI_VECTOR: u32 = 0x41;
/// MSI address (the x86 local APIC range, destination 0).
pub const MSI_ADDRESS: u64 = 0xfee0_0000;

/// Number of textures the driver uploads.
pub const TEXTURES: u64 = 4;
/// Texture edge in texels.
pub const TEX_DIM: u32 = 256;

/// The graphics address through which the device reaches guest-physical address `gpa`
/// (valid for `GTT_MAPPED_BASE..GTT_MAPPED_END`).
pub const fn gaddr(gpa: u64) -> u64 {
    SYS_BASE + (gpa - GTT_MAPPED_BASE)
}

/// Graphics-memory plan for a render size: two framebuffers, then textures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GmemPlan {
    /// Framebuffer stride in bytes.
    pub stride: u32,
    /// Offsets of the two framebuffers.
    pub fb: [u64; 2],
    /// Offset of the first texture (each is `TEX_DIM * TEX_DIM * 4` bytes).
    pub textures: u64,
    /// Bytes of graphics memory the plan uses.
    pub end: u64,
}

impl GmemPlan {
    /// The plan for `width` x `height` 32-bit framebuffers.
    pub fn new(width: u32, height: u32) -> Self {
        let stride = width * 4;
        let fb_bytes = (u64::from(stride) * u64::from(height)).next_multiple_of(1 << 20);
        let textures = 2 * fb_bytes;
        let tex_bytes = u64::from(TEX_DIM) * u64::from(TEX_DIM) * 4;
        Self {
            stride,
            fb: [0, fb_bytes],
            textures,
            end: textures + TEXTURES * tex_bytes,
        }
    }

    /// Offset of texture `t`.
    pub fn texture(&self, t: u64) -> u64 {
        self.textures + t * u64::from(TEX_DIM) * u64::from(TEX_DIM) * 4
    }
}
