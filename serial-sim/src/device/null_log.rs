//! A DMA dirty log for a device that does no DMA.

use mdev_core::{DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange};

/// The DMA dirty log of a device that does no DMA: logging starts and stops as the uAPI
/// says, and every report is clean.
#[derive(Debug, Default)]
pub struct NullDmaLog {
    page_size: Option<u64>,
}

impl DmaDirtyLog for NullDmaLog {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<(), DirtyError> {
        if self.page_size.is_some() {
            return Err(DirtyError::AlreadyStarted);
        }
        if page_size < 4096 || !page_size.is_power_of_two() {
            return Err(DirtyError::BadPageSize { page_size });
        }
        for r in ranges {
            let aligned = r.iova % page_size == 0 && r.length % page_size == 0;
            if r.length == 0 || !aligned || r.iova.checked_add(r.length).is_none() {
                return Err(DirtyError::BadRange {
                    iova: r.iova,
                    length: r.length,
                });
            }
        }
        self.page_size = Some(page_size);
        Ok(())
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
        DirtyBitmap::new(iova, length, page_size)
    }
    fn stop(&mut self) -> Result<(), DirtyError> {
        self.page_size
            .take()
            .map(|_| ())
            .ok_or(DirtyError::NotStarted)
    }
    fn is_logging(&self) -> bool {
        self.page_size.is_some()
    }
}
