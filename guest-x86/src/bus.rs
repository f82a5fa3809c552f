//! The driver's [`GuestBus`] on a real vCPU: identity-mapped physical memory.

use vgpu_guest::workload::GuestBus;

use crate::mem::copy_forward;

/// Guest-physical memory through the VMM's identity map of the low 4 GiB.
///
/// An access of 1, 2, 4 or 8 bytes at a naturally aligned address is one volatile access
/// of that width (device registers and config space need exact widths, and a KVM VMM sees
/// them as single MMIO exits). Longer buffers move in aligned 8-byte volatile accesses
/// with byte accesses at the unaligned ends: in a BAR (the aperture) each access is one
/// MMIO exit, so 8-byte accesses take an eighth of the exits `rep movsb` would.
#[derive(Debug, Clone, Copy)]
pub struct PhysBus;

impl GuestBus for PhysBus {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        let p = gpa as usize;
        // SAFETY: every guest-physical address the driver uses (RAM, ECAM, BARs) lies in
        // the identity-mapped low 4 GiB; widths and alignment are checked per arm.
        unsafe {
            match buf.len() {
                1 => buf[0] = core::ptr::read_volatile(p as *const u8),
                2 if p % 2 == 0 => {
                    buf.copy_from_slice(&core::ptr::read_volatile(p as *const u16).to_le_bytes())
                }
                4 if p % 4 == 0 => {
                    buf.copy_from_slice(&core::ptr::read_volatile(p as *const u32).to_le_bytes())
                }
                8 if p % 8 == 0 => {
                    buf.copy_from_slice(&core::ptr::read_volatile(p as *const u64).to_le_bytes())
                }
                _ => read_words(buf.as_mut_ptr(), p as *const u8, buf.len()),
            }
        }
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) {
        let p = gpa as usize;
        // SAFETY: as in `read`.
        unsafe {
            match *buf {
                [b] => core::ptr::write_volatile(p as *mut u8, b),
                [a, b] if p % 2 == 0 => {
                    core::ptr::write_volatile(p as *mut u16, u16::from_le_bytes([a, b]))
                }
                [a, b, c, d] if p % 4 == 0 => {
                    core::ptr::write_volatile(p as *mut u32, u32::from_le_bytes([a, b, c, d]))
                }
                [a, b, c, d, e, f, g, h] if p % 8 == 0 => core::ptr::write_volatile(
                    p as *mut u64,
                    u64::from_le_bytes([a, b, c, d, e, f, g, h]),
                ),
                _ => copy_words(p as *mut u8, buf.as_ptr(), buf.len()),
            }
        }
    }
}

/// Copy `n` bytes to `dst` (guest-physical, perhaps a BAR) with 8-byte volatile writes
/// where `dst` is 8-byte aligned and byte accesses for the unaligned head and the tail.
///
/// # Safety
/// `dst` and `src` are valid for `n` bytes and do not overlap.
unsafe fn copy_words(dst: *mut u8, src: *const u8, n: usize) {
    let head = (8 - (dst as usize) % 8) % 8;
    let head = head.min(n);
    // SAFETY: the caller's ranges; every offset below is inside them.
    unsafe {
        copy_forward(dst, src, head);
        let mut i = head;
        while i + 8 <= n {
            let v = core::ptr::read_unaligned(src.add(i) as *const u64);
            core::ptr::write_volatile(dst.add(i) as *mut u64, v);
            i += 8;
        }
        copy_forward(dst.add(i), src.add(i), n - i);
    }
}

/// Copy `n` bytes from `src` (guest-physical, perhaps a BAR) with 8-byte volatile reads
/// where `src` is 8-byte aligned and byte accesses for the unaligned head and the tail.
///
/// # Safety
/// `dst` and `src` are valid for `n` bytes and do not overlap.
unsafe fn read_words(dst: *mut u8, src: *const u8, n: usize) {
    let head = ((8 - (src as usize) % 8) % 8).min(n);
    // SAFETY: the caller's ranges; every offset below is inside them.
    unsafe {
        copy_forward(dst, src, head);
        let mut i = head;
        while i + 8 <= n {
            let v = core::ptr::read_volatile(src.add(i) as *const u64);
            core::ptr::write_unaligned(dst.add(i) as *mut u64, v);
            i += 8;
        }
        copy_forward(dst.add(i), src.add(i), n - i);
    }
}
