//! Graphics memory: a zeroed buffer with per-page dirty tracking for pre-copy.
//!
//! The buffer is a `ZeroedBuf`: fresh anonymous memory (huge pages where available), so
//! 512 MiB cost nothing until touched. Two page bitmaps
//! (4 KiB pages) ride along:
//!
//! * `dirty`: pages written since the last pre-copy pass took them;
//! * `written`: pages that may be non-zero (ever written since the buffer was zeroed), so a
//!   first pre-copy pass need not scan untouched memory.

use super::zeroed::ZeroedBuf;
use crate::regs::PAGE_SIZE;

/// A bitmap with one bit per page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageBitmap {
    pages: u64,
    words: Vec<u64>,
}

impl PageBitmap {
    /// All clear, for `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self {
            pages,
            words: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Set page `p` (ignored past the end).
    #[inline]
    pub fn set(&mut self, p: u64) {
        if p < self.pages {
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Clear page `p`.
    #[inline]
    pub fn clear(&mut self, p: u64) {
        if p < self.pages {
            self.words[(p / 64) as usize] &= !(1 << (p % 64));
        }
    }

    /// Whether page `p` is set.
    #[inline]
    pub fn test(&self, p: u64) -> bool {
        p < self.pages && self.words[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    /// Set every page that `offset..offset+len` touches.
    pub fn set_range(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / PAGE_SIZE;
        let last = offset.saturating_add(len - 1) / PAGE_SIZE;
        for p in first..=last.min(self.pages.saturating_sub(1)) {
            self.set(p);
        }
    }

    /// Set every page.
    pub fn set_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = u64::MAX);
        let tail = self.pages % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last = (1 << tail) - 1;
            }
        }
    }

    /// Clear every page.
    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// Number of pages set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The first set page at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.pages {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut word = self.words[w] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let p = w as u64 * 64 + u64::from(word.trailing_zeros());
                return (p < self.pages).then_some(p);
            }
            w += 1;
            word = *self.words.get(w)?;
        }
    }

    /// OR `other` (same size) into this bitmap.
    pub fn union_with(&mut self, other: &PageBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }
}

/// The device's graphics memory.
#[derive(Debug)]
pub struct GraphicsMemory {
    data: ZeroedBuf,
    dirty: PageBitmap,
    written: PageBitmap,
}

impl GraphicsMemory {
    /// `size` zeroed bytes (a multiple of the page size).
    pub fn new(size: u64) -> Self {
        let pages = size / PAGE_SIZE;
        Self {
            data: zeroed(size),
            dirty: PageBitmap::new(pages),
            written: PageBitmap::new(pages),
        }
    }

    /// Take `data` as the contents; `written` says which pages may be non-zero.
    pub(crate) fn from_parts(data: ZeroedBuf, written: PageBitmap) -> Self {
        let pages = written.pages();
        Self {
            data,
            dirty: PageBitmap::new(pages),
            written,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.dirty.pages()
    }

    /// The bytes (read-only).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, for a writer that reports what it wrote with [`GraphicsMemory::mark`].
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Page `p`'s bytes.
    pub fn page(&self, p: u64) -> &[u8] {
        let start = (p * PAGE_SIZE) as usize;
        &self.data[start..start + PAGE_SIZE as usize]
    }

    /// Record a write of `len` bytes at `offset`.
    #[inline]
    pub fn mark(&mut self, offset: u64, len: u64) {
        self.dirty.set_range(offset, len);
        self.written.set_range(offset, len);
    }

    /// Write `buf` at `offset` and mark it; `false` (and nothing written) if out of range.
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> bool {
        let Some(dst) = range(offset, buf.len(), self.data.len()) else {
            return false;
        };
        self.data[dst].copy_from_slice(buf);
        self.mark(offset, buf.len() as u64);
        true
    }

    /// Read into `buf` from `offset`; `false` (and `buf` untouched) if out of range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(src) = range(offset, buf.len(), self.data.len()) else {
            return false;
        };
        buf.copy_from_slice(&self.data[src]);
        true
    }

    /// Pages dirtied since the last [`GraphicsMemory::dirty_mut`] clear.
    pub fn dirty(&self) -> &PageBitmap {
        &self.dirty
    }

    /// The dirty bitmap, for a pre-copy pass that takes (clears) pages.
    pub fn dirty_mut(&mut self) -> &mut PageBitmap {
        &mut self.dirty
    }

    /// The pages that are non-zero now: written pages whose bytes are not all zero.
    pub fn nonzero_pages(&self) -> PageBitmap {
        let mut out = PageBitmap::new(self.pages());
        let mut p = 0;
        while let Some(q) = self.written.next_set(p) {
            if self.page(q).iter().any(|&b| b != 0) {
                out.set(q);
            }
            p = q + 1;
        }
        out
    }

    /// Zero everything (a fresh allocation; the old pages go back to the system).
    pub fn reset(&mut self) {
        *self = Self::new(self.size());
    }
}

/// A zeroed buffer of `size` bytes, untouched until written.
pub(crate) fn zeroed(size: u64) -> ZeroedBuf {
    ZeroedBuf::new(size as usize)
}

fn range(offset: u64, len: usize, size: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sets_ranges_and_iterates() {
        let mut b = PageBitmap::new(130);
        b.set_range(4095, 2);
        b.set(129);
        b.set(130); // past the end: ignored
        assert_eq!(b.count(), 3);
        assert_eq!(b.next_set(0), Some(0));
        assert_eq!(b.next_set(2), Some(129));
        assert_eq!(b.next_set(130), None);
        b.clear(129);
        assert_eq!(b.next_set(2), None);
        b.set_all();
        assert_eq!(b.count(), 130);
        b.clear_all();
        assert_eq!(b.count(), 0);
        b.set_range(u64::MAX - 1, 10);
        assert_eq!(b.count(), 0);
        let mut c = PageBitmap::new(130);
        c.set(64);
        b.union_with(&c);
        assert!(b.test(64));
    }

    #[test]
    fn writes_mark_pages_and_nonzero_scan_skips_zero_pages() {
        let mut g = GraphicsMemory::new(16 * PAGE_SIZE);
        assert!(g.write(PAGE_SIZE - 1, &[1, 2]));
        assert!(g.write(5 * PAGE_SIZE, &[0; 8]));
        assert!(!g.write(16 * PAGE_SIZE - 1, &[1, 2]));
        assert!(!g.write(u64::MAX, &[1]));
        assert_eq!(g.dirty().count(), 3);
        let nz = g.nonzero_pages();
        assert_eq!(nz.count(), 2);
        assert!(nz.test(0) && nz.test(1) && !nz.test(5));
        let mut b = [0u8; 2];
        assert!(g.read(PAGE_SIZE - 1, &mut b));
        assert_eq!(b, [1, 2]);
        g.reset();
        assert_eq!(g.dirty().count(), 0);
        assert!(g.bytes().iter().all(|&x| x == 0));
    }
}
