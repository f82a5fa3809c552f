//! Zeroed buffers for graphics memory: anonymous memory that costs nothing until touched,
//! backed by transparent huge pages where the kernel offers them.
//!
//! Graphics memory is large (512 MiB for `vgpu-512`) and filled by streaming writes (a
//! restore, the engine clearing a surface). With 4 KiB pages each first touch is a page
//! fault; on restore those faults cost more than hashing the data. A mapping advised with
//! `MADV_HUGEPAGE` takes one fault per 2 MiB instead. If the mapping cannot be made, the
//! buffer falls back to an ordinary zeroed heap allocation.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment that lets the kernel back the buffer with 2 MiB pages.
const HUGE: usize = 2 << 20;

/// A zeroed byte buffer.
pub struct ZeroedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// The whole mapping (`None` for the heap fallback).
    map: Option<(NonNull<u8>, usize)>,
    /// The heap fallback's storage.
    heap: Vec<u8>,
}

// SAFETY: the buffer exclusively owns its memory (a private anonymous mapping or a Vec);
// nothing else holds its pointer, so moving it to another thread is sound.
unsafe impl Send for ZeroedBuf {}
// SAFETY: shared access only hands out `&[u8]`, so concurrent readers are sound.
unsafe impl Sync for ZeroedBuf {}

impl std::fmt::Debug for ZeroedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroedBuf")
            .field("len", &self.len)
            .field("mapped", &self.map.is_some())
            .finish()
    }
}

impl ZeroedBuf {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        Self::mapped(len).unwrap_or_else(|| {
            let mut heap = vec![0u8; len];
            Self {
                ptr: NonNull::new(heap.as_mut_ptr()).unwrap_or(NonNull::dangling()),
                len,
                map: None,
                heap,
            }
        })
    }

    fn mapped(len: usize) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let map_len = len.checked_add(HUGE)?;
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing;
        // it aliases nothing, and the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = NonNull::new(base.cast::<u8>())?;
        let skip = base.as_ptr().align_offset(HUGE);
        // SAFETY: `skip < HUGE`, so `base + skip .. + len` lies inside the `len + HUGE`
        // bytes just mapped.
        let ptr = unsafe { base.add(skip) };
        // SAFETY: advice on a range inside our own mapping; a failure (no THP) is harmless.
        let _ = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        Some(Self {
            ptr,
            len,
            map: Some((base, map_len)),
            heap: Vec::new(),
        })
    }
}

impl ZeroedBuf {
    /// Fault every page in now, on as many threads as the machine has cores (at most 4),
    /// with `MADV_POPULATE_WRITE` where the kernel has it and by writing a zero to each
    /// page where it does not, so that later writes (a restore) take no page fault.
    pub fn populate(&mut self) {
        const POPULATE_WRITE: libc::c_int = 23; // MADV_POPULATE_WRITE, Linux 5.14
        const PAGE: usize = 4096;
        if self.map.is_none() || self.len == 0 {
            return;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let per = self.len.div_ceil(threads).next_multiple_of(HUGE);
        let base = self.ptr.as_ptr() as usize;
        let len = self.len;
        std::thread::scope(|s| {
            for start in (0..len).step_by(per) {
                let n = per.min(len - start);
                s.spawn(move || {
                    let at = (base + start) as *mut u8;
                    // SAFETY: advice on `at .. at + n`, a part of our own live mapping
                    // (`start + n <= len`); the threads' parts do not overlap.
                    let rc = unsafe { libc::madvise(at.cast(), n, POPULATE_WRITE) };
                    if rc != 0 {
                        for off in (0..n).step_by(PAGE) {
                            // SAFETY: `off < n`, so the byte is inside this thread's part
                            // of the mapping, which nothing else touches meanwhile
                            // (`&mut self` is held); zero is what the page holds already.
                            unsafe { std::ptr::write_volatile(at.add(off), 0) };
                        }
                    }
                });
            }
        });
    }
}

impl Drop for ZeroedBuf {
    fn drop(&mut self) {
        if let Some((base, map_len)) = self.map {
            // SAFETY: unmapping exactly the mapping `mapped` created, which no borrow
            // outlives (borrows are tied to `&self`).
            unsafe { libc::munmap(base.as_ptr().cast(), map_len) };
        }
    }
}

impl Deref for ZeroedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.map.is_none() {
            return &self.heap;
        }
        // SAFETY: `ptr .. ptr + len` is inside our live mapping, readable, initialised (the
        // kernel zero-fills anonymous memory), and only mutable through `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for ZeroedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.map.is_none() {
            return &mut self.heap;
        }
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_populated_buffer_is_still_zero_and_writable() {
        let mut b = ZeroedBuf::new((5 << 20) + 4096);
        b.populate();
        assert!(b.iter().all(|&x| x == 0));
        let n = b.len();
        b[n - 1] = 9;
        assert_eq!(b[n - 1], 9);
    }

    #[test]
    fn zeroed_writable_and_sized() {
        for len in [0, 1, 4096, 3 << 20] {
            let mut b = ZeroedBuf::new(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
    }
}
