//! A DMA dirty log for a device that does no DMA.

use mdev_core::{DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange};

/// The DMA dirty log of a device that does no DMA: logging starts and stops as the uAPI
/// says, and every report is clean.
#[derive(Debug, Default)]
pub struct NullDmaLog {
    page_size: Option<u64>,
}

impl DmaDirtyLog for NullDmaLog {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<u64, DirtyError> {
        if self.page_size.is_some() {
            return Err(DirtyError::AlreadyStarted);
        }
        mdev_core::check_logging_ranges(ranges)?;
        // page_size is a hint (vfio.h): this device "tracks" at 4 KiB or the hint above it.
        let tracked = if page_size.is_power_of_two() {
            page_size.max(mdev_core::MIN_REPORT_PAGE_SIZE)
        } else {
            mdev_core::MIN_REPORT_PAGE_SIZE
        };
        self.page_size = Some(tracked);
        Ok(tracked)
    }
    fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        if self.page_size.is_none() {
            return Err(DirtyError::NotStarted);
        }
        if page_size < mdev_core::MIN_REPORT_PAGE_SIZE || !page_size.is_power_of_two() {
            return Err(DirtyError::BadPageSize { page_size });
        }
        if iova % page_size != 0 || length % page_size != 0 || length == 0 {
            return Err(DirtyError::BadRange { iova, length });
        }
        DirtyBitmap::new(iova, length, page_size)
    }
    fn stop(&mut self) -> Result<(), DirtyError> {
        self.page_size = None;
        Ok(())
    }
    fn is_logging(&self) -> bool {
        self.page_size.is_some()
    }
}
