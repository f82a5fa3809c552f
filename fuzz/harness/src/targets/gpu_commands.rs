//! The GPU command and batch parser, driven as a guest drives it: through guest RAM (the
//! ring and batch buffers behind the GTT) and the ring registers in BAR0, never through the
//! engine's own Rust API (which is being rewritten; this interface stays).
//!
//! Input: the ring's bytes (up to its 16 KiB), the batch pages' bytes (up to 240 KiB from
//! GTT entry 4), the tail, then steps: run the engine for a budget, move the tail, write a
//! ring or engine register.
//!
//! Invariants: no panic whatever the commands; the engine executes no more commands than
//! its budget; the device's writes land only in guest RAM through the GTT (memory safety,
//! checked by the sanitizer build); at the end (for one input in eight, by length: the
//! check is slow) the device is migratable, its state (engine position, halted or hung
//! engine included) saved and loaded unchanged.

use mdev_core::uapi::VFIO_PCI_BAR0_REGION_INDEX;
use mdev_core::VfioDevice;
use vgpu_sim::regs::*;

use crate::device::{
    assert_migratable, booted, check_migratable, guest_mem, put, MAPPED, RING_PAGES,
};
use crate::input::Output;
use crate::Input;

/// Bytes of the ring.
pub const RING_BYTES: usize = (RING_PAGES * PAGE_SIZE) as usize;
/// Bytes of batch pages (GTT entries after the ring).
pub const BATCH_BYTES: usize = ((MAPPED - RING_PAGES) * PAGE_SIZE) as usize;
/// Registers a step may write.
pub const REGS: [u32; 10] = [
    REG_RING_HEAD,
    REG_RING_TAIL,
    REG_RING_CTL,
    REG_RING_START_LO,
    REG_IMR,
    REG_IER,
    REG_IIR,
    REG_DSP_CTL,
    REG_DSP_SURF,
    REG_ERROR_STATUS,
];

/// A seed: `ring` and `batch` bytes, the tail at the end of the ring bytes, and `runs`
/// engine runs of 255 commands.
pub fn seed(ring: &[u8], batch: &[u8], runs: usize) -> Vec<u8> {
    let mut o = Output::default();
    o.u16(ring.len() as u16).raw(ring);
    o.u32(batch.len() as u32).raw(batch);
    o.u32(ring.len() as u32);
    for _ in 0..runs {
        o.u8(0).u8(255);
    }
    o.bytes
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let mem = guest_mem();
    let (mut d, _sink) = booted(mem.clone());
    let ring_len = usize::from(i.u16()) % (RING_BYTES + 1);
    put(&mem, 0, i.bytes(ring_len));
    let batch_len = (i.u32() as usize) % (BATCH_BYTES + 1);
    put(&mem, RING_PAGES, i.bytes(batch_len));
    let bar0 = VFIO_PCI_BAR0_REGION_INDEX;
    let tail = i.u32();
    let _ = d.region_write(bar0, u64::from(REG_RING_TAIL), &tail.to_le_bytes());
    let mut steps = 0;
    loop {
        steps += 1;
        if steps > 64 {
            break;
        }
        match i.u8() % 3 {
            0 => {
                let budget = usize::from(i.u8());
                let n = d.run(budget);
                assert!(
                    n <= budget,
                    "the engine ran {n} commands on a budget of {budget}"
                );
            }
            1 => {
                let tail = i.u32();
                let _ = d.region_write(bar0, u64::from(REG_RING_TAIL), &tail.to_le_bytes());
            }
            _ => {
                let reg = i.pick(&REGS);
                let v = i.u32();
                let _ = d.region_write(bar0, u64::from(reg), &v.to_le_bytes());
            }
        }
        if i.is_empty() {
            break;
        }
    }
    if check_migratable(data.len()) {
        assert_migratable(&mut d);
    }
}
