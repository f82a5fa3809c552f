//! Everything written in assembly: `_start`, the interrupt and exception stubs, and the
//! small routines that enable interrupts.
//!
//! # The red zone
//!
//! The image is built for the host target, whose ABI lets leaf functions use 128 bytes
//! below RSP (the red zone), and an interrupt in long mode pushes its frame onto the
//! current stack without skipping it. Red-zone use cannot be switched off on a stable
//! compiler for this target (`-C target-feature=-red-zone` is no target feature; the
//! switch is the target spec's `disable-redzone`), so the image makes interrupts harmless
//! instead: they are enabled only inside [`wait_for_interrupt`] and [`interrupt_window`],
//! assembly routines that keep nothing below RSP and are reached by a `call` from Rust (a
//! caller is not a leaf, and at the call everything below RSP is the callee's). CPU
//! exceptions may hit anywhere, but their handlers report and halt without returning.
//!
//! The MSI stub also saves the x87/SSE state (`fxsave64`) besides the caller-saved general
//! registers, so that it would be correct at any interrupted instruction.

use core::arch::global_asm;

use vgpu_guest::workload::layout::MSI_VECTOR;
use vgpu_guest::x86::{STATUS_EXCEPTION_BASE, STATUS_PORT};

global_asm!(
    r#"
    .section .text.guest_entry, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    cli
    cld
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    and $-16, %rsp
    call guest_main
1:  cli
    hlt
    jmp 1b

    .section .text.guest_vectors, "ax", @progbits
    .p2align 4
    .global guest_vector_stubs
guest_vector_stubs:
    .set guest_vector, 0
    .rept 256
    .p2align 4
    movl $guest_vector, %edi
    jmp guest_unexpected_vector
    .set guest_vector, guest_vector + 1
    .endr

    .text
guest_unexpected_vector:
    lea {exception_base}(%rdi), %eax
    mov ${port}, %dx
    out %eax, %dx
1:  cli
    hlt
    jmp 1b

    .global guest_msi_stub
    .p2align 4
guest_msi_stub:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    sub $512, %rsp
    fxsave64 (%rsp)
    cld
    mov ${msi_vector}, %edi
    call guest_irq
    fxrstor64 (%rsp)
    add $512, %rsp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    .global guest_spurious_stub
    .p2align 4
guest_spurious_stub:
    iretq

    .global guest_wait_for_interrupt
    .p2align 4
guest_wait_for_interrupt:
    sti
    hlt
    cli
    ret

    .global guest_interrupt_window
    .p2align 4
guest_interrupt_window:
    sti
    nop
    cli
    ret
"#,
    port = const STATUS_PORT,
    exception_base = const STATUS_EXCEPTION_BASE,
    msi_vector = const MSI_VECTOR,
    options(att_syntax)
);

// Stack alignment in `guest_msi_stub`: the CPU aligns RSP to 16 before it pushes the
// 5-qword frame (no error code above vector 31), the stub pushes 9 registers and 512
// bytes, so RSP is 16-byte aligned for `fxsave64` and at the `call`, as the ABI wants.

/// Bytes between two entries of `guest_vector_stubs` (each stub is `.p2align 4`-ed and
/// at most 10 bytes long).
pub const VECTOR_STUB_SIZE: usize = 16;

extern "C" {
    /// 256 stubs, [`VECTOR_STUB_SIZE`] bytes apart: stub `v` reports
    /// `STATUS_EXCEPTION_BASE + v` and halts.
    pub static guest_vector_stubs: [u8; 0];
    /// The MSI vector's handler (saves state, calls `guest_irq`, `iretq`).
    pub static guest_msi_stub: [u8; 0];
    /// The spurious vector's handler (`iretq`, no EOI).
    pub static guest_spurious_stub: [u8; 0];
    fn guest_wait_for_interrupt();
    fn guest_interrupt_window();
}

/// `sti; hlt; cli`: sleep until an interrupt, which runs before this returns.
pub fn wait_for_interrupt() {
    // SAFETY: the routine only toggles IF and halts; the IDT and the APIC are set up.
    unsafe { guest_wait_for_interrupt() }
}

/// `sti; nop; cli`: let a pending interrupt in between two driver steps.
pub fn interrupt_window() {
    // SAFETY: as in `wait_for_interrupt`.
    unsafe { guest_interrupt_window() }
}

/// Write `value` to the status port (32-bit `out`).
pub fn report(value: u32) {
    // SAFETY: port output to the VMM's status port has no effect on the guest's memory.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") STATUS_PORT,
            in("eax") value,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// `cli; hlt` forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting touch no memory.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
