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

impl DmaDirtyLog for ShadowGtt {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<(), DirtyError> {
        let log = self.dirty_log_mut();
        if log.ranges.is_some() {
            return Err(DirtyError::AlreadyStarted);
        }
        check_page_size(page_size, PAGE_SIZE)?;
        if ranges.is_empty() {
            return Err(DirtyError::BadRange { iova: 0, length: 0 });
        }
        let mut bitmaps = Vec::with_capacity(ranges.len());
        for r in ranges {
            check_range(r.iova, r.length, page_size)?;
            bitmaps.push(DirtyBitmap::new(r.iova, r.length, page_size)?);
        }
        log.ranges = Some(bitmaps);
        Ok(())
    }

    fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        let tracked = self.dirty_log().page_size().ok_or(DirtyError::NotStarted)?;
        check_page_size(page_size, tracked)?;
        check_range(iova, length, page_size)?;
        let mut out = DirtyBitmap::new(iova, length, page_size)?;
        let end = iova + length;
        let in_report = |a: u64| a >= iova && a < end;
        match self.tracking() {
            DirtyTracking::Off => {}
            DirtyTracking::Pinned => {
                let ranges = self.dirty_log().ranges.as_deref().unwrap_or(&[]);
                for gpa in self.pinned_pages() {
                    if in_report(gpa) && ranges.iter().any(|b| contains(b, gpa)) {
                        out.mark(gpa);
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
                    let covered = iova <= b.iova() && b.iova() + b.pages() * b.page_size() <= end;
                    let mut keep = (!covered)
                        .then(|| {
                            DirtyBitmap::new(b.iova(), b.pages() * b.page_size(), b.page_size())
                        })
                        .transpose()?;
                    for a in b.iter_dirty() {
                        if in_report(a) {
                            out.mark(a);
                        } else if let Some(k) = &mut keep {
                            k.mark(a);
                        }
                    }
                    match keep {
                        Some(k) => *b = k,
                        None => b.clear(),
                    }
                }
            }
        }
        Ok(out)
    }

    fn stop(&mut self) -> Result<(), DirtyError> {
        self.dirty_log_mut()
            .ranges
            .take()
            .map(|_| ())
            .ok_or(DirtyError::NotStarted)
    }

    fn is_logging(&self) -> bool {
        self.dirty_log().ranges.is_some()
    }
}
