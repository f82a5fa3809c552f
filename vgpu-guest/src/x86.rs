//! The contract between a VMM and the freestanding x86-64 guest image (`guest-x86`, built
//! and loaded by `guest-image`) that runs the workload driver on a real (KVM) vCPU.
//!
//! # Machine state at entry (the VMM's job)
//!
//! 64-bit long mode: a flat GDT with a 64-bit code segment at selector [`CODE_SELECTOR`]
//! and data at [`DATA_SELECTOR`]; identity paging of the low 4 GiB (the driver reaches guest
//! RAM, the ECAM window and the BARs by their physical addresses); CR0.PE|MP|NE|PG,
//! CR4.PAE|OSFXSR|OSXMMEXCPT, EFER.LME|LMA; RSP = [`STACK_TOP`]; RIP = the ELF entry; an
//! in-kernel local APIC in xAPIC mode at [`LAPIC_BASE`]. The VMM builds its page tables and
//! GDT in the pages `BOOT_AREA_START..BOOT_AREA_END` (a suggested placement is given by the
//! `BOOT_*_GPA` constants), and the image must be loaded in `IMAGE_BASE..IMAGE_END`.
//!
//! The image executes no SSE instructions (it is built with `-sse,-sse2`; only its
//! interrupt stub saves the FPU/SSE state with `fxsave64`), so a KVM that emulates the guest
//! instruction by instruction can run it.
//!
//! # Guest-physical memory map (the smallest guest RAM is [`MIN_RAM`] = 64 MiB)
//!
//! ```text
//! 0x0000_1000 .. 0x0000_3000   workload parameters and driver state (workload::layout)
//! 0x0000_8000 .. 0x0001_0000   boot structures built by the VMM (GDT, page tables)
//! 0x0010_0000 .. 0x0120_0000   workload ring, batches, seqno, vertex buffers, checksum log
//! 0x0200_0000 .. 0x0280_0000   the image (.text, .rodata, .data, .bss incl. its IDT)
//! 0x0280_0000 .. 0x0380_0000   the image's heap (bump allocator)
//! 0x0380_0000 .. 0x03f0_0000   the stack (grows down from STACK_TOP)
//! ```
//!
//! # Status port
//!
//! The guest reports through 32-bit `out` writes to I/O port [`STATUS_PORT`]:
//! [`STATUS_DONE`] (idle: every frame up to the limit is done; the VMM may raise the frame
//! limit in guest RAM and resume, the guest steps again), [`STATUS_FAILED`] (the driver gave
//! up; the vCPU then halts with interrupts off forever), [`STATUS_PANIC`] (the image
//! panicked; halts forever), and [`STATUS_EXCEPTION_BASE`] `+ vector` (a CPU exception or an
//! unexpected interrupt vector; halts forever).
//!
//! # Interrupts
//!
//! The driver's MSI-X entry asks for vector [`crate::workload::layout::MSI_VECTOR`] at
//! [`crate::workload::layout::MSI_ADDRESS`]. The image software-enables the local APIC
//! (spurious vector [`SPURIOUS_VECTOR`]) and writes EOI after each handled interrupt. As on
//! the simulated vCPU, interrupts are taken only between driver steps: the image runs every
//! step with interrupts disabled and opens a window (`sti; nop; cli`) after each step, or
//! halts (`sti; hlt; cli`) when the driver waits for the device.

/// The 64-bit code segment selector of the VMM's flat GDT.
pub const CODE_SELECTOR: u16 = 0x08;
/// The data segment selector of the VMM's flat GDT.
pub const DATA_SELECTOR: u16 = 0x10;

/// First guest-physical byte the VMM may use for boot structures (GDT, page tables).
pub const BOOT_AREA_START: u64 = 0x8000;
/// End (exclusive) of the VMM's boot-structure area.
pub const BOOT_AREA_END: u64 = 0x1_0000;
/// Suggested placement of the GDT (one page).
pub const BOOT_GDT_GPA: u64 = 0x8000;
/// Suggested placement of the PML4 (one page).
pub const BOOT_PML4_GPA: u64 = 0x9000;
/// Suggested placement of the PDPT (one page).
pub const BOOT_PDPT_GPA: u64 = 0xa000;
/// Suggested placement of the four page directories of 2 MiB pages mapping 0..4 GiB
/// (`0xb000..0xf000`).
pub const BOOT_PD_GPA: u64 = 0xb000;

/// Where the image is linked; every loadable segment lies in `IMAGE_BASE..IMAGE_END`.
pub const IMAGE_BASE: u64 = 0x0200_0000;
/// End (exclusive) of the image range.
pub const IMAGE_END: u64 = 0x0280_0000;
/// Start of the image's heap.
pub const HEAP_START: u64 = 0x0280_0000;
/// End (exclusive) of the image's heap.
pub const HEAP_END: u64 = 0x0380_0000;
/// Lowest address of the stack.
pub const STACK_BOTTOM: u64 = 0x0380_0000;
/// Initial RSP (the stack grows down to [`STACK_BOTTOM`]).
pub const STACK_TOP: u64 = 0x03f0_0000;
/// The smallest guest RAM the image runs in.
pub const MIN_RAM: u64 = 64 << 20;

/// I/O port of the guest's status reports (32-bit `out`).
pub const STATUS_PORT: u16 = 0x500;
/// Status: idle, every frame up to the limit is done (the guest keeps stepping after it).
pub const STATUS_DONE: u32 = 1;
/// Status: the driver failed; the guest halts with interrupts off.
pub const STATUS_FAILED: u32 = 2;
/// Status: the image panicked; the guest halts with interrupts off.
pub const STATUS_PANIC: u32 = 3;
/// Status: `STATUS_EXCEPTION_BASE + vector` for a CPU exception (vectors 0..32) or an
/// unexpected interrupt vector; the guest halts with interrupts off.
pub const STATUS_EXCEPTION_BASE: u32 = 0x100;

/// Physical base of the xAPIC local APIC registers.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// Offset of the local APIC's spurious-interrupt vector register.
pub const LAPIC_SVR: u64 = 0xf0;
/// The SVR's APIC software-enable bit.
pub const LAPIC_SVR_ENABLE: u32 = 0x100;
/// Offset of the local APIC's end-of-interrupt register.
pub const LAPIC_EOI: u64 = 0xb0;
/// The spurious-interrupt vector the image programs.
pub const SPURIOUS_VECTOR: u8 = 0xff;

// The map fits the smallest RAM, below the MMIO hole, and the stack top is ABI-aligned.
const _: () = assert!(STACK_TOP <= MIN_RAM && MIN_RAM <= crate::workload::layout::MMIO_HOLE_START);
const _: () = assert!(MIN_RAM >= crate::workload::layout::MIN_GUEST_RAM);
const _: () = assert!(STACK_TOP % 16 == 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::layout;

    #[test]
    fn the_map_avoids_the_workload_and_fits_the_smallest_ram() {
        let regions = [
            (layout::PARAMS_GPA, layout::STATE_GPA + 0x1000),
            (BOOT_AREA_START, BOOT_AREA_END),
            (layout::GTT_MAPPED_BASE, layout::GTT_MAPPED_END),
            (IMAGE_BASE, IMAGE_END),
            (HEAP_START, HEAP_END),
            (STACK_BOTTOM, STACK_TOP),
        ];
        for w in regions.windows(2) {
            assert!(w[0].0 < w[0].1 && w[0].1 <= w[1].0, "{w:?}");
        }
        for gpa in [
            BOOT_GDT_GPA,
            BOOT_PML4_GPA,
            BOOT_PDPT_GPA,
            BOOT_PD_GPA + 3 * 0x1000,
        ] {
            assert!((BOOT_AREA_START..BOOT_AREA_END).contains(&gpa) && gpa % 0x1000 == 0);
        }
    }
}
