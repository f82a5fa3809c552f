//! The 3D workload: a deterministic, seeded guest driver.
//!
//! The driver runs on a vCPU and sees only a [`GuestBus`]: guest-physical reads and writes,
//! which the VMM routes to guest RAM or, inside a BAR or the ECAM window, to the device. It
//! keeps *all* of its state in guest RAM ([`layout::STATE_GPA`]), so a VMM that migrates
//! guest RAM, the vCPU and the device migrates the driver with them; nothing is faked in
//! host variables.
//!
//! At boot the driver builds the scene's meshes (object space) into a vertex and an index
//! buffer and generates a pool of textures, all in guest RAM. Each frame it computes the
//! draws' matrices into guest RAM and writes a batch buffer: texture uploads from the pool
//! (device DMA reads into graphics memory), the render-to-texture passes, the main pass
//! (clear, depth clear, every object, the floor, a screen per pass showing its texture),
//! the checksum of the finished frame into the checksum log, a post-sync seqno write, a
//! flip and a user interrupt; and submits it through the ring. See [`profile`] for what
//! each profile asks of a frame. It renders double-buffered and waits, before reusing a frame slot, for the
//! device to finish the frame that last used it, so output never depends on how the vCPU
//! and the device interleave: the same seed gives the same checksums, always.

pub mod driver;
mod frame;
pub mod layout;
pub mod math3d;
pub mod mesh;
pub mod profile;
pub mod scene;

use alloc::vec;
use alloc::vec::Vec;

pub use driver::{interrupt, step, DriverError, Params, StepOutcome};
pub use profile::{Profile, ProfileSpec, PROFILES};

/// Guest-physical memory as the vCPU sees it.
pub trait GuestBus {
    /// Read `buf.len()` bytes at guest-physical `gpa` (RAM, a BAR, or ECAM config space).
    /// Unbacked addresses read as all ones, as on a real bus.
    fn read(&mut self, gpa: u64, buf: &mut [u8]);
    /// Write `buf` at guest-physical `gpa`. Writes to unbacked addresses are dropped.
    fn write(&mut self, gpa: u64, buf: &[u8]);

    /// Read a little-endian u32.
    fn read_u32(&mut self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b);
        u32::from_le_bytes(b)
    }
    /// Write a little-endian u32.
    fn write_u32(&mut self, gpa: u64, v: u32) {
        self.write(gpa, &v.to_le_bytes());
    }
    /// Read a little-endian u64.
    fn read_u64(&mut self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b);
        u64::from_le_bytes(b)
    }
    /// Write a little-endian u64.
    fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
}

/// The checksum log's first `frames` entries, read from guest RAM.
pub fn checksum_log(bus: &mut dyn GuestBus, frames: u64) -> Vec<u64> {
    let n = frames.min(layout::MAX_FRAMES);
    let mut raw = vec![0u8; (n * 8) as usize];
    bus.read(layout::LOG_GPA, &mut raw);
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Frames the device has completed (the last seqno it wrote).
pub fn completed_frames(bus: &mut dyn GuestBus) -> u64 {
    u64::from(bus.read_u32(layout::SEQNO_GPA))
}
