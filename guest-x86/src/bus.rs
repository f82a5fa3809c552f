//! The driver's [`GuestBus`] on a real vCPU: identity-mapped physical memory.

use vgpu_guest::workload::GuestBus;

use crate::mem::copy_forward;

/// Guest-physical memory through the VMM's identity map of the low 4 GiB.
///
/// An access of 1, 2, 4 or 8 bytes at a naturally aligned address is one volatile access
/// of that width (device registers and config space need exact widths, and a KVM VMM sees
/// them as single MMIO exits); anything else is copied with `rep movsb`.
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
                n => copy_forward(buf.as_mut_ptr(), p as *const u8, n),
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
                _ => copy_forward(p as *mut u8, buf.as_ptr(), buf.len()),
            }
        }
    }
}
