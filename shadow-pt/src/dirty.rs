//! The DMA dirty log: which guest pages the device wrote.
//!
//! Three ways, chosen by [`DirtyTracking`]:
//!
//! | mode       | what a report holds                                               |
//! |------------|-------------------------------------------------------------------|
//! | `ShadowPt` | exactly the pages DMA wrote since the last report (precise)        |
//! | `Pinned`   | every page a present entry maps, at every report (GVT-g's query)   |
//! | `Off`      | nothing (a negative control: migration then loses DMA writes)     |

use mdev_core::{DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange};

use crate::entry::PAGE_SIZE;
use crate::gtt::ShadowGtt;

/// How the device's DMA writes are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirtyTracking {
    /// Precise: each DMA write marks its guest page.
    #[default]
    ShadowPt,
    /// Conservative: every page mapped by a present entry is reported at every query.
    Pinned,
    /// Nothing is reported.
    Off,
}

impl DirtyTracking {
    /// Parse `shadow-pt`, `pinned` or `off`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shadow-pt" => Some(Self::ShadowPt),
            "pinned" => Some(Self::Pinned),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::ShadowPt => "shadow-pt",
            Self::Pinned => "pinned",
            Self::Off => "off",
        }
    }
}

/// Logging state: the started ranges, one bitmap each at the tracking page size.
#[derive(Debug)]
pub(crate) struct DmaLog {
    tracking: DirtyTracking,
    /// `Some` while logging is started.
    ranges: Option<Vec<DirtyBitmap>>,
}

impl DmaLog {
    pub(crate) fn new(tracking: DirtyTracking) -> Self {
        Self {
            tracking,
            ranges: None,
        }
    }

    pub(crate) fn tracking(&self) -> DirtyTracking {
        self.tracking
    }

    pub(crate) fn set_tracking(&mut self, tracking: DirtyTracking) {
        self.tracking = tracking;
    }

    /// The device wrote (part of) the guest page at `gpa`.
    #[inline]
    pub(crate) fn dma_wrote(&mut self, gpa: u64) {
        if self.tracking != DirtyTracking::ShadowPt {
            return;
        }
        if let Some(ranges) = &mut self.ranges {
            for b in ranges.iter_mut() {
                b.mark(gpa);
            }
        }
    }

    fn page_size(&self) -> Option<u64> {
        self.ranges
            .as_ref()
            .and_then(|r| r.first())
            .map(|b| b.page_size())
    }
}

/// A range `iova..iova+length` that is non-empty, aligned to `page_size` and not overflowing.
fn check_range(iova: u64, length: u64, page_size: u64) -> Result<(), DirtyError> {
    let ok = length > 0
        && iova % page_size == 0
        && length % page_size == 0
        && iova.checked_add(length).is_some();
    if ok {
        Ok(())
    } else {
        Err(DirtyError::BadRange { iova, length })
    }
}

fn check_page_size(page_size: u64, min: u64) -> Result<(), DirtyError> {
    if page_size.is_power_of_two() && page_size >= min {
        Ok(())
    } else {
        Err(DirtyError::BadPageSize { page_size })
    }
}

fn contains(b: &DirtyBitmap, addr: u64) -> bool {
    addr >= b.iova() && addr - b.iova() < b.pages() * b.page_size()
}

/// Most pages the device's DMA log tracks at once (1 TiB of iova space at 4 KiB: 32 MiB
/// of bitmap).
pub const MAX_TRACKED_PAGES: u64 = 1 << 28;

/// The granularity the device tracks for a `page_size` hint: the hint if it is a power of
/// two from 4 KiB (the GTT page) to 1 GiB, else the nearest of those.
pub fn tracking_page_size(hint: u64) -> u64 {
    const MAX: u64 = 1 << 30;
    if hint <= PAGE_SIZE {
        PAGE_SIZE
    } else if hint >= MAX {
        MAX
    } else if hint.is_power_of_two() {
        hint
    } else {
        // Not a power of two: the next one down, so no write is tracked more coarsely than
        // asked.
        1 << (63 - hint.leading_zeros())
    }
}

impl DmaDirtyLog for ShadowGtt {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<u64, DirtyError> {
        let log = self.dirty_log_mut();
        if log.ranges.is_some() {
            return Err(DirtyError::AlreadyStarted);
        }
        mdev_core::check_logging_ranges(ranges)?;
        // vfio.h: page_size is a hint; the device picks what it tracks and returns it.
        let tracked = tracking_page_size(page_size);
        // The bitmaps are the device's memory: at most MAX_TRACKED_PAGES bits in all (a
        // request over more iova space than that is refused, as a device with a bounded
        // tracker refuses it).
        let pages: u64 = ranges
            .iter()
            .map(|r| r.length.div_ceil(tracked) + 1)
            .fold(0u64, u64::saturating_add);
        if pages > MAX_TRACKED_PAGES {
            let r = ranges[0];
            return Err(DirtyError::BadRange {
                iova: r.iova,
                length: r.length,
            });
        }
        let mut bitmaps = Vec::with_capacity(ranges.len());
        for r in ranges {
            // Widen each range to whole tracked pages.
            let start = r.iova - r.iova % tracked;
            let end = r.iova.saturating_add(r.length).div_ceil(tracked) * tracked;
            bitmaps.push(DirtyBitmap::new(start, end - start, tracked)?);
        }
        log.ranges = Some(bitmaps);
        Ok(tracked)
    }

    fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        if self.dirty_log().page_size().is_none() {
            return Err(DirtyError::NotStarted);
        }
        // vfio_main.c: any power of two of at least 4 KiB; the device converts.
        check_page_size(page_size, mdev_core::MIN_REPORT_PAGE_SIZE)?;
        check_range(iova, length, page_size)?;
        let mut out = DirtyBitmap::new(iova, length, page_size)?;
        let end = iova + length;
        match self.tracking() {
            DirtyTracking::Off => {}
            DirtyTracking::Pinned => {
                let ranges = self.dirty_log().ranges.as_deref().unwrap_or(&[]);
                for gpa in self.pinned_pages() {
                    if gpa < end
                        && gpa + PAGE_SIZE > iova
                        && ranges.iter().any(|b| contains(b, gpa))
                    {
                        out.mark_range(gpa.max(iova), (gpa + PAGE_SIZE).min(end) - gpa.max(iova));
                    }
                }
            }
            DirtyTracking::ShadowPt => {
                let ranges = self
                    .dirty_log_mut()
                    .ranges
                    .as_mut()
                    .ok_or(DirtyError::NotStarted)?;
                for b in ranges.iter_mut() {
                    let t = b.page_size();
                    let mut keep = DirtyBitmap::new(b.iova(), b.pages() * t, t)?;
                    for a in b.iter_dirty() {
                        let (lo, hi) = (a.max(iova), (a + t).min(end));
                        if lo < hi {
                            // The part of the tracked page inside the report, at the report's
                            // page size.
                            out.mark_range(lo, hi - lo);
                        }
                        // A tracked page is cleared only when the report covered all of it.
                        if !(iova <= a && a + t <= end) {
                            keep.mark(a);
                        }
                    }
                    *b = keep;
                }
            }
        }
        Ok(out)
    }

    fn stop(&mut self) -> Result<(), DirtyError> {
        // Stopping a log that is not started succeeds, as the kernel's drivers do.
        self.dirty_log_mut().ranges = None;
        Ok(())
    }

    fn is_logging(&self) -> bool {
        self.dirty_log().ranges.is_some()
    }
}
