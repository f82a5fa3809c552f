//! Where the guest driver keeps everything: guest-physical layout, GTT mapping and the
//! graphics-memory plan. All of it is guest state; nothing lives in host variables.

use crate::regs::{PAGE_SIZE, SYS_BASE};

use super::profile::ProfileSpec;

/// Parameter block written by the host loader at boot (like a kernel command line).
pub const PARAMS_GPA: u64 = 0x1000;
/// The driver's own state block.
pub const STATE_GPA: u64 = 0x2000;
/// Where in the driver's state block it keeps the interrupt causes its handler has seen
/// (a u32, the IIR bits or-ed together): a host tool can tell from it that interrupts
/// reached the guest.
pub const IRQ_SEEN_GPA: u64 = STATE_GPA + 40;
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
/// Matrices of the draws, one area per frame slot (64 bytes each, MVP then normal).
pub const MATRIX_GPA: u64 = 0x32_0000;
/// Size of one frame slot's matrix area.
pub const MATRIX_SIZE: u64 = 0x6_0000;
/// The scene's vertex buffer ([`crate::cmd::Vertex3d`] records), built once at boot.
pub const VB_GPA: u64 = 0x40_0000;
/// Size of the vertex buffer.
pub const VB_SIZE: u64 = 6 << 20;
/// The scene's index buffer (u32), built once at boot.
pub const IB_GPA: u64 = 0xa0_0000;
/// Size of the index buffer.
pub const IB_SIZE: u64 = 6 << 20;
/// The checksum log: one little-endian u64 per frame, written by the device's CHECKSUM.
pub const LOG_GPA: u64 = 0x100_0000;
/// Size of the checksum log.
pub const LOG_SIZE: u64 = 2 << 20;
/// Most frames the log holds.
pub const MAX_FRAMES: u64 = LOG_SIZE / 8;
/// The texture pool: textures generated at boot, uploaded by the device every frame.
pub const POOL_GPA: u64 = 0x120_0000;
/// Size of the texture pool.
pub const POOL_SIZE: u64 = 14 << 20;
/// End of the range the driver maps into the GTT.
pub const GTT_MAPPED_END: u64 = POOL_GPA + POOL_SIZE;
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

/// Texture edge in texels (pool textures and texture slots).
pub const TEX_DIM: u32 = 256;
/// Bytes of one texture.
pub const TEX_BYTES: u64 = (TEX_DIM as u64) * (TEX_DIM as u64) * 4;

/// The graphics address through which the device reaches guest-physical address `gpa`
/// (valid for `GTT_MAPPED_BASE..GTT_MAPPED_END`).
pub const fn gaddr(gpa: u64) -> u64 {
    SYS_BASE + (gpa - GTT_MAPPED_BASE)
}

/// Graphics-memory plan: two colour buffers, the depth buffer, the render-to-texture
/// targets and their depth buffer, then the texture slots. Every surface starts on a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GmemPlan {
    /// Framebuffer (and depth buffer) stride in bytes.
    pub stride: u32,
    /// Offsets of the two framebuffers.
    pub fb: [u64; 2],
    /// Offset of the depth buffer.
    pub depth: u64,
    /// Offset of the first render-to-texture target (each `rtt_bytes`).
    pub rtt: u64,
    /// Bytes of one render-to-texture target.
    pub rtt_bytes: u64,
    /// Offset of the render-to-texture depth buffer.
    pub rtt_depth: u64,
    /// Offset of the first texture slot (each [`TEX_BYTES`]).
    pub textures: u64,
    /// Bytes of graphics memory the plan uses.
    pub end: u64,
}

impl GmemPlan {
    /// The plan for `width` x `height` frames under `spec`.
    pub fn new(width: u32, height: u32, spec: &ProfileSpec) -> Self {
        let page = |b: u64| b.next_multiple_of(PAGE_SIZE);
        let stride = width * 4;
        let fb_bytes = page(u64::from(stride) * u64::from(height));
        let rtt_bytes = page(u64::from(spec.rtt_size) * u64::from(spec.rtt_size) * 4);
        let rtt = 3 * fb_bytes;
        let rtt_depth = rtt + u64::from(spec.passes) * rtt_bytes;
        let textures = rtt_depth + rtt_bytes;
        Self {
            stride,
            fb: [0, fb_bytes],
            depth: 2 * fb_bytes,
            rtt,
            rtt_bytes,
            rtt_depth,
            textures,
            end: textures + u64::from(spec.slots) * TEX_BYTES,
        }
    }

    /// Offset of texture slot `t`.
    pub fn texture(&self, t: u64) -> u64 {
        self.textures + t * TEX_BYTES
    }

    /// Offset of render-to-texture target `p`.
    pub fn target(&self, p: u64) -> u64 {
        self.rtt + p * self.rtt_bytes
    }

    /// Bytes of graphics memory one frame rewrites (page granular): its colour buffer, the
    /// depth buffer, every render-to-texture target and their depth buffer, and the
    /// uploaded slots.
    pub fn dirty_per_frame(&self, spec: &ProfileSpec) -> u64 {
        let uploads = u64::from(spec.uploads.min(spec.slots)) * TEX_BYTES;
        let rtt = if spec.passes > 0 {
            (u64::from(spec.passes) + 1) * self.rtt_bytes
        } else {
            0
        };
        2 * self.fb[1] + rtt + uploads
    }
}
