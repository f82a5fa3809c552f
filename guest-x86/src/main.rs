//! The freestanding x86-64 guest image: runs the workload driver (`vgpu-guest`) on a real
//! vCPU, against the contract in `vgpu_guest::x86`.
//!
//! The VMM enters [`entry`]'s `_start` in 64-bit long mode with identity paging of the low
//! 4 GiB. `_start` zeroes `.bss` and calls [`guest_main`], which loads the image's own IDT,
//! software-enables the local APIC and runs the driver:
//!
//! * every driver step runs with interrupts disabled; after each step the image opens an
//!   interrupt window (`sti; nop; cli`), so, as on the simulated vCPU, interrupt handlers
//!   run only between steps;
//! * `Waiting` halts with interrupts enabled (`sti; hlt; cli`) until the device's MSI;
//! * `Done` reports `STATUS_DONE` on the status port and steps again (the VMM may raise the
//!   frame limit in guest RAM before it resumes the vCPU);
//! * `Failed`, a panic, or a CPU exception report on the status port and halt forever.

#![no_std]
#![no_main]

extern crate alloc;

mod bus;
mod entry;
mod heap;
mod idt;
mod mem;

use core::panic::PanicInfo;

use vgpu_guest::workload::{self, StepOutcome};
use vgpu_guest::x86::{
    LAPIC_BASE, LAPIC_EOI, LAPIC_SVR, LAPIC_SVR_ENABLE, SPURIOUS_VECTOR, STATUS_DONE,
    STATUS_FAILED, STATUS_PANIC,
};

use bus::PhysBus;

/// The Rust entry, called by `_start` with a zeroed `.bss` and a 16-byte aligned stack.
#[no_mangle]
pub extern "C" fn guest_main() -> ! {
    idt::load();
    lapic_enable();
    let mut bus = PhysBus;
    loop {
        match workload::step(&mut bus) {
            StepOutcome::Progress => {}
            StepOutcome::Waiting => entry::wait_for_interrupt(),
            StepOutcome::Done => entry::report(STATUS_DONE),
            StepOutcome::Failed => {
                entry::report(STATUS_FAILED);
                entry::halt_forever()
            }
        }
        entry::interrupt_window();
    }
}

/// The MSI handler's Rust half, called by the vector's stub with interrupts disabled and
/// the interrupted context saved: runs the driver's handler, then ends the interrupt.
#[no_mangle]
pub extern "C" fn guest_irq(vector: u32) {
    workload::interrupt(&mut PhysBus, vector);
    lapic_write(LAPIC_EOI, 0);
}

fn lapic_enable() {
    let svr = lapic_read(LAPIC_SVR);
    lapic_write(
        LAPIC_SVR,
        (svr & !0xff) | LAPIC_SVR_ENABLE | u32::from(SPURIOUS_VECTOR),
    );
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the local APIC's register page is identity-mapped (the VMM's paging of the
    // low 4 GiB) and its registers are 32-bit, 16-byte aligned.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: as in `lapic_read`.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, v) }
}

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    entry::report(STATUS_PANIC);
    entry::halt_forever()
}
