//! The image's interrupt descriptor table (in `.bss`, loaded with `lidt`).

use core::cell::UnsafeCell;

use vgpu_guest::workload::layout::MSI_VECTOR;
use vgpu_guest::x86::{CODE_SELECTOR, SPURIOUS_VECTOR};

use crate::entry::{guest_msi_stub, guest_spurious_stub, guest_vector_stubs, VECTOR_STUB_SIZE};

/// Present, DPL 0, 64-bit interrupt gate (IF is cleared on entry).
const INTERRUPT_GATE: u64 = 0x8e;

/// 256 gate descriptors of 16 bytes.
#[repr(C, align(16))]
struct Idt(UnsafeCell<[[u64; 2]; 256]>);

// SAFETY: the image is single-threaded; the table is written once, before `lidt`.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; 256]));

/// The `lidt` operand.
#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

fn gate(handler: u64) -> [u64; 2] {
    let lo = (handler & 0xffff)
        | (u64::from(CODE_SELECTOR) << 16)
        | (INTERRUPT_GATE << 40)
        | ((handler >> 16) & 0xffff) << 48;
    [lo, handler >> 32]
}

/// Fill the IDT (every vector reports and halts, except the MSI vector and the spurious
/// vector) and load it.
pub fn load() {
    let stubs = (&raw const guest_vector_stubs) as u64;
    let table = IDT.0.get();
    for v in 0..256usize {
        let handler = match v {
            v if v == MSI_VECTOR as usize => (&raw const guest_msi_stub) as u64,
            v if v == usize::from(SPURIOUS_VECTOR) => (&raw const guest_spurious_stub) as u64,
            v => stubs + (v * VECTOR_STUB_SIZE) as u64,
        };
        // SAFETY: `v < 256`; nothing else reads or writes the table yet.
        unsafe { (*table)[v] = gate(handler) };
    }
    let ptr = Pointer {
        limit: (core::mem::size_of::<[[u64; 2]; 256]>() - 1) as u16,
        base: table as u64,
    };
    // SAFETY: the table is static and complete; its gates point at the stubs above, in
    // the code segment the VMM set up.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags));
    }
}
