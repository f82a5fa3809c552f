//! The device as a VMM holds it: one [`Serial`] behind a lock, shared between the VMM
//! (region accesses, irq wiring, migration) and whatever advances its line. Every request
//! takes the lock for its duration.

use std::sync::{Arc, Mutex, MutexGuard};

use mdev_core::uapi::{vfio_device_info, vfio_irq_info, vfio_precopy_info};
use mdev_core::{
    DeviceError, DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange, IrqSink, MigState,
    MigrationDevice, MigrationError, RegionInfo, VfioDevice,
};

use super::Serial;

/// Lock a shared device; a poisoned lock still yields the device.
pub fn lock(dev: &Mutex<Serial>) -> MutexGuard<'_, Serial> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// The migration interface of a shared device.
#[derive(Debug)]
pub struct SharedMigration(Arc<Mutex<Serial>>);

/// The DMA dirty log of a device that does no DMA: logging starts and stops as the uAPI
/// says, and every report is clean.
#[derive(Debug, Default)]
pub struct NullDmaLog {
    page_size: Option<u64>,
}

/// A [`Serial`] behind a lock, implementing the VFIO contract by locking for each request.
#[derive(Debug)]
pub struct SharedSerial {
    dev: Arc<Mutex<Serial>>,
    mig: SharedMigration,
    dma: Option<NullDmaLog>,
}

impl SharedSerial {
    /// Share `dev`.
    pub fn new(dev: Serial) -> Self {
        let dma = dev.offers_dma_log().then(NullDmaLog::default);
        let dev = Arc::new(Mutex::new(dev));
        Self {
            mig: SharedMigration(dev.clone()),
            dma,
            dev,
        }
    }

    /// Another handle on the same device (for its line and test hooks).
    pub fn handle(&self) -> Arc<Mutex<Serial>> {
        self.dev.clone()
    }
}

impl VfioDevice for SharedSerial {
    fn device_info(&self) -> vfio_device_info {
        lock(&self.dev).device_info()
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        lock(&self.dev).region_info(index)
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        lock(&self.dev).region_read(index, offset, data)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        lock(&self.dev).region_write(index, offset, data)
    }
    fn irq_info(&self, index: u32) -> Result<vfio_irq_info, DeviceError> {
        lock(&self.dev).irq_info(index)
    }
    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> Result<(), DeviceError> {
        lock(&self.dev).set_irqs(index, start, count, sink)
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        lock(&self.dev).reset()
    }
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        Some(&mut self.mig)
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        self.dma.as_mut().map(|d| d as &mut dyn DmaDirtyLog)
    }
}

impl MigrationDevice for SharedMigration {
    fn migration_flags(&self) -> u32 {
        lock(&self.0).migration_flags()
    }
    fn mig_state(&self) -> MigState {
        MigrationDevice::mig_state(&*lock(&self.0))
    }
    fn set_mig_state(&mut self, target: MigState) -> Result<MigState, MigrationError> {
        lock(&self.0).set_mig_state(target)
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        lock(&self.0).read_data(buf)
    }
    fn write_data(&mut self, buf: &[u8]) -> Result<usize, MigrationError> {
        lock(&self.0).write_data(buf)
    }
    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        lock(&self.0).precopy_info()
    }
    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        lock(&self.0).stop_copy_size()
    }
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
