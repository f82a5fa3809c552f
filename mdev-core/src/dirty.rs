//! Dirty tracking of device DMA into guest RAM.
//!
//! The CPU's dirty log (KVM's, or vm-memory's bitmap) does not see writes that a device makes
//! by DMA. A device that can tell which pages it wrote offers a [`DmaDirtyLog`], modelled on
//! the v2 DMA logging features (`VFIO_DEVICE_FEATURE_DMA_LOGGING_START` with ranges and a
//! page size, `..._REPORT` which reads and clears, `..._STOP`). The IOMMU-style interface
//! (`VFIO_IOMMU_DIRTY_PAGES` START / STOP / GET_BITMAP over an iova range) is built on the
//! same trait by the VMM.

use snafu::Snafu;

/// An iova range (`struct vfio_device_feature_dma_logging_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRange {
    /// First byte.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Errors of the DMA dirty log.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub))]
pub enum DirtyError {
    /// The page size is zero, not a power of two, or smaller than the device's page.
    #[snafu(display("page size {page_size:#x} is not supported"))]
    BadPageSize {
        /// The page size asked for.
        page_size: u64,
    },
    /// Logging is not started (REPORT or STOP without START).
    #[snafu(display("DMA dirty logging is not started"))]
    NotStarted,
    /// Logging is already started.
    #[snafu(display("DMA dirty logging is already started"))]
    AlreadyStarted,
    /// Two ranges overlap (vfio_main.c refuses them: `-EINVAL`).
    #[snafu(display("ranges {a_iova:#x}+{a_length:#x} and {b_iova:#x}+{b_length:#x} overlap"))]
    Overlapping {
        /// First range start.
        a_iova: u64,
        /// First range length.
        a_length: u64,
        /// Second range start.
        b_iova: u64,
        /// Second range length.
        b_length: u64,
    },
    /// More ranges than the kernel takes (vfio_main.c's `LOG_MAX_RANGES`: `-E2BIG`).
    #[snafu(display("{count} ranges are more than the {max} allowed"))]
    TooManyRanges {
        /// Ranges asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A range is empty, unaligned or overflows.
    #[snafu(display(
        "range {iova:#x}+{length:#x} is empty, unaligned to the page size, or overflows"
    ))]
    BadRange {
        /// Range start.
        iova: u64,
        /// Range length.
        length: u64,
    },
}

/// A dirty bitmap: one bit per page of `page_size` from `iova`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    iova: u64,
    page_size: u64,
    pages: u64,
    words: Vec<u64>,
}

impl DirtyBitmap {
    /// An all-clean bitmap for `length` bytes from `iova` (`length` rounded up to pages).
    ///
    /// `page_size` must be a non-zero power of two.
    pub fn new(iova: u64, length: u64, page_size: u64) -> Result<Self, DirtyError> {
        if page_size == 0 || !page_size.is_power_of_two() {
            return Err(DirtyError::BadPageSize { page_size });
        }
        let pages = length.div_ceil(page_size);
        let words = usize::try_from(pages.div_ceil(64))
            .map_err(|_| DirtyError::BadRange { iova, length })?;
        Ok(Self {
            iova,
            page_size,
            pages,
            words: vec![0; words],
        })
    }

    /// First byte covered.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Bytes per bit.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Number of pages (bits).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The bitmap words, bit `i` of word `w` standing for page `64 * w + i`, as the uAPI
    /// lays out its `__u64` bitmaps.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Mark the page holding `addr` dirty; addresses outside the bitmap are ignored.
    pub fn mark(&mut self, addr: u64) {
        if let Some(page) = self.page_of(addr) {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Mark every page that `addr..addr+len` touches.
    pub fn mark_range(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = addr & !(self.page_size - 1);
        let last = addr.saturating_add(len - 1);
        let mut a = first;
        while a <= last {
            self.mark(a);
            match a.checked_add(self.page_size) {
                Some(n) => a = n,
                None => break,
            }
        }
    }

    /// Whether the page holding `addr` is dirty.
    pub fn is_dirty(&self, addr: u64) -> bool {
        self.page_of(addr)
            .is_some_and(|p| self.words[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Addresses of the dirty pages, ascending.
    pub fn iter_dirty(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(move |(w, &word)| {
            let base = w as u64 * 64;
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| self.iova + (base + b) * self.page_size)
        })
    }

    /// OR another bitmap of the same geometry into this one; `false` if they differ.
    pub fn merge(&mut self, other: &DirtyBitmap) -> bool {
        if other.iova != self.iova || other.page_size != self.page_size || other.pages != self.pages
        {
            return false;
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        true
    }

    /// Clear every bit.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    fn page_of(&self, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(self.iova)?;
        let page = off / self.page_size;
        (page < self.pages).then_some(page)
    }
}

/// Most ranges one `DMA_LOGGING_START` takes (drivers/vfio/vfio_main.c, `LOG_MAX_RANGES`).
pub const LOG_MAX_RANGES: usize = 256;

/// Smallest page size of a `DMA_LOGGING_REPORT` (vfio_main.c refuses less than 4 KiB).
pub const MIN_REPORT_PAGE_SIZE: u64 = 4096;

/// The checks vfio_main.c makes on `DMA_LOGGING_START` before a driver sees it: at least
/// one range, at most [`LOG_MAX_RANGES`], none empty or overflowing, none overlapping.
pub fn check_logging_ranges(ranges: &[DmaRange]) -> Result<(), DirtyError> {
    if ranges.len() > LOG_MAX_RANGES {
        return Err(DirtyError::TooManyRanges {
            count: ranges.len(),
            max: LOG_MAX_RANGES,
        });
    }
    if ranges.is_empty() {
        return Err(DirtyError::BadRange { iova: 0, length: 0 });
    }
    let mut sorted: Vec<DmaRange> = ranges.to_vec();
    for r in &sorted {
        if r.length == 0 || r.iova.checked_add(r.length).is_none() {
            return Err(DirtyError::BadRange {
                iova: r.iova,
                length: r.length,
            });
        }
    }
    sorted.sort_by_key(|r| r.iova);
    for w in sorted.windows(2) {
        if w[0].iova + w[0].length > w[1].iova {
            return Err(DirtyError::Overlapping {
                a_iova: w[0].iova,
                a_length: w[0].length,
                b_iova: w[1].iova,
                b_length: w[1].length,
            });
        }
    }
    Ok(())
}

/// A device's log of the guest pages its DMA wrote, with the semantics of the v2
/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_*` features (include/uapi/linux/vfio.h).
pub trait DmaDirtyLog {
    /// `DMA_LOGGING_START`: begin logging writes to `ranges`. `page_size` is a hint: the
    /// device picks the granularity it tracks and returns it. Ranges that overlap, or more
    /// than [`LOG_MAX_RANGES`], are refused ([`check_logging_ranges`]).
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<u64, DirtyError>;
    /// `DMA_LOGGING_REPORT`: the pages written in `iova..iova+length` since the last report,
    /// and clear them. `page_size` is any power of two of at least
    /// [`MIN_REPORT_PAGE_SIZE`], whatever the device tracks at: the device converts (a
    /// report page is dirty if any byte of it may have been written).
    fn report(&mut self, iova: u64, length: u64, page_size: u64)
        -> Result<DirtyBitmap, DirtyError>;
    /// `DMA_LOGGING_STOP`. Stopping a log that is not started succeeds (vfio_main.c
    /// passes it to the driver, which has nothing to stop).
    fn stop(&mut self) -> Result<(), DirtyError>;
    /// Whether logging is started.
    fn is_logging(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_ranges_and_iterates() {
        let mut b = DirtyBitmap::new(0x10000, 0x100000, 0x1000).unwrap();
        assert_eq!(b.pages(), 256);
        b.mark_range(0x10ff0, 0x20);
        b.mark(0x10000 + 200 * 0x1000 + 5);
        b.mark(0x0); // below: ignored
        b.mark(0x10000 + 256 * 0x1000); // past the end: ignored
        assert_eq!(
            b.iter_dirty().collect::<Vec<_>>(),
            vec![0x10000, 0x11000, 0x10000 + 200 * 0x1000]
        );
        assert_eq!(b.count(), 3);
        let mut c = DirtyBitmap::new(0x10000, 0x100000, 0x1000).unwrap();
        c.mark(0x20000);
        assert!(c.merge(&b));
        assert_eq!(c.count(), 4);
        assert!(!c.merge(&DirtyBitmap::new(0, 0x1000, 0x1000).unwrap()));
        c.clear();
        assert_eq!(c.count(), 0);
    }

    #[test]
    fn logging_ranges_are_checked_as_vfio_main_checks_them() {
        let r = |iova, length| DmaRange { iova, length };
        assert_eq!(check_logging_ranges(&[r(0, 4096), r(4096, 4096)]), Ok(()));
        assert!(matches!(
            check_logging_ranges(&[r(8192, 4096), r(0, 8193)]),
            Err(DirtyError::Overlapping { .. })
        ));
        let many: Vec<_> = (0..=LOG_MAX_RANGES as u64)
            .map(|i| r(i * 4096, 4096))
            .collect();
        assert_eq!(
            check_logging_ranges(&many),
            Err(DirtyError::TooManyRanges {
                count: LOG_MAX_RANGES + 1,
                max: LOG_MAX_RANGES
            })
        );
        assert_eq!(check_logging_ranges(&many[..LOG_MAX_RANGES]), Ok(()));
        assert!(check_logging_ranges(&[]).is_err());
        assert!(check_logging_ranges(&[r(u64::MAX - 10, 4096)]).is_err());
    }

    #[test]
    fn rejects_bad_page_size() {
        assert_eq!(
            DirtyBitmap::new(0, 0x1000, 0x1001),
            Err(DirtyError::BadPageSize { page_size: 0x1001 })
        );
        assert!(DirtyBitmap::new(0, 0x1000, 0).is_err());
    }
}
