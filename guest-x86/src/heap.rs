//! The global allocator: a bump allocator over `HEAP_START..HEAP_END`.
//!
//! The driver allocates only inside a step (vertex and batch buffers, the scene's meshes, a
//! texture row) and every allocation is a local that is dropped before the step returns;
//! the interrupt handler allocates nothing, and it runs only between steps. So the live
//! allocation count returns to zero after every step, and the allocator then starts again
//! at `HEAP_START`: the heap needs to hold one step's allocations (at most about 8 MiB: the
//! vertex buffer's records and bytes at the largest triangle count `Params::validate`
//! accepts), not the whole run's. Past `HEAP_END` an allocation fails (null), which the
//! `alloc` crate turns into a panic (`STATUS_PANIC`).
//!
//! The image is single-threaded and the allocator is never entered from an interrupt, so
//! relaxed atomics are only a safe way to hold the two counters.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use vgpu_guest::x86::{HEAP_END, HEAP_START};

use crate::mem::copy_forward;

/// The bump allocator's state.
#[derive(Debug)]
pub struct Bump {
    next: AtomicUsize,
    live: AtomicUsize,
}

#[global_allocator]
static HEAP: Bump = Bump {
    next: AtomicUsize::new(HEAP_START as usize),
    live: AtomicUsize::new(0),
};

// SAFETY: blocks are carved from the dedicated heap range, never overlap while live (the
// bump pointer only moves back to the start when no block is live), are aligned as asked,
// and a failure returns null.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let next = self.next.load(Relaxed);
        let Some(start) = next.checked_next_multiple_of(layout.align()) else {
            return core::ptr::null_mut();
        };
        match start.checked_add(layout.size()) {
            Some(end) if end <= HEAP_END as usize => {
                self.next.store(end, Relaxed);
                self.live.fetch_add(1, Relaxed);
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {
        if self.live.fetch_sub(1, Relaxed) == 1 {
            self.next.store(HEAP_START as usize, Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_end = ptr as usize + layout.size();
        if old_end == self.next.load(Relaxed) {
            // The newest block grows or shrinks in place.
            match (ptr as usize).checked_add(new_size) {
                Some(end) if end <= HEAP_END as usize => {
                    self.next.store(end, Relaxed);
                    return ptr;
                }
                _ => return core::ptr::null_mut(),
            }
        }
        // SAFETY: `layout.align()` is a valid alignment and `new_size` was checked by the
        // caller (`GlobalAlloc::realloc`'s contract) not to overflow it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarded contract.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: the new block is fresh (above the old one), both hold `n` bytes.
            unsafe { copy_forward(new, ptr, layout.size().min(new_size)) };
            // SAFETY: `ptr` is a live block of `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}
