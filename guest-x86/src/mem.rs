//! The C memory functions the compiler calls, in inline assembly: written as plain Rust
//! loops, LLVM could recognise them as copies and turn them back into calls to themselves.

use core::arch::asm;

/// Copy `n` bytes from `src` to `dst`, lowest address first (`rep movsb`).
///
/// # Safety
///
/// `src` must be readable and `dst` writable for `n` bytes; if they overlap, `dst` must not
/// lie above `src`.
pub unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller guarantees both ranges; DF is clear (the ABI's state on every
    // function entry, and the interrupt stub clears it too).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

/// C `memcpy`.
///
/// # Safety
///
/// As C's: `src` readable and `dest` writable for `n` bytes, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract is `copy_forward`'s.
    unsafe { copy_forward(dest, src, n) };
    dest
}

/// C `memmove`: copies backwards when `dest` overlaps the end of `src`.
///
/// # Safety
///
/// As C's: `src` readable and `dest` writable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let (d, s) = (dest as usize, src as usize);
    if d <= s || d >= s.wrapping_add(n) {
        // SAFETY: forward is safe when dest is below src or the ranges are disjoint.
        unsafe { copy_forward(dest, src, n) };
    } else if n > 0 {
        // SAFETY: dest lies above src inside it: copy from the last byte down with DF set,
        // then clear DF again as the ABI requires; interrupts are off while the driver runs.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack),
            );
        }
    }
    dest
}

/// C `memset`.
///
/// # Safety
///
/// As C's: `s` writable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(s: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; DF is clear.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") s => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    s
}

/// C `memcmp` (`repe cmpsb`).
///
/// # Safety
///
/// As C's: `a` and `b` readable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let left: usize;
    // SAFETY: the caller guarantees both ranges; `repe cmpsb` only reads them, and stops
    // after the first differing byte or after `n` bytes.
    unsafe {
        asm!(
            "repe cmpsb",
            inout("rcx") n => left,
            inout("rsi") a => _,
            inout("rdi") b => _,
            options(nostack, readonly),
        );
    }
    // The last byte compared is the first difference, or the last byte if all are equal.
    let i = n - left - 1;
    // SAFETY: `i < n`.
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    i32::from(x) - i32::from(y)
}

/// C `bcmp`: zero if and only if the ranges are equal.
///
/// # Safety
///
/// As `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
