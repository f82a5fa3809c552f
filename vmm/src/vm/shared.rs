//! The device as the VMM holds it: behind one lock, so the vCPU thread (MMIO), the device
//! thread (its hardware and interrupts) and the migration thread (regions, the v2 data
//! stream, DMA logging) can all reach it through the same VFIO contract. Each request takes
//! the lock for its duration, as each VFIO ioctl or region access is one call into the
//! kernel driver.

use std::sync::{Arc, Mutex, MutexGuard};

use mdev_core::uapi::{vfio_device_info, vfio_irq_info, vfio_precopy_info};
use mdev_core::{
    DeviceError, DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange, IrqSink, MigState,
    MigrationDevice, MigrationError, RegionInfo, VfioDevice,
};

type Inner = Arc<Mutex<Box<dyn VfioDevice>>>;

fn lock(dev: &Mutex<Box<dyn VfioDevice>>) -> MutexGuard<'_, Box<dyn VfioDevice>> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// A device shared between the VMM's threads.
#[derive(Debug, Clone)]
pub(crate) struct SharedDevice {
    dev: Inner,
    mig: SharedMigration,
    dma: SharedDmaLog,
    /// Whether the device has the v2 interface and a DMA log (fixed for its lifetime).
    has_mig: bool,
    has_dma: bool,
}

/// The v2 migration interface of a shared device.
#[derive(Debug, Clone)]
struct SharedMigration(Inner);

/// The DMA dirty log of a shared device.
#[derive(Debug, Clone)]
struct SharedDmaLog(Inner);

impl SharedDevice {
    /// Share `dev`.
    pub(crate) fn new(mut dev: Box<dyn VfioDevice>) -> Self {
        let has_mig = dev.migration().is_some();
        let has_dma = dev.dma_dirty_log().is_some();
        let dev = Arc::new(Mutex::new(dev));
        Self {
            mig: SharedMigration(dev.clone()),
            dma: SharedDmaLog(dev.clone()),
            dev,
            has_mig,
            has_dma,
        }
    }
}

impl VfioDevice for SharedDevice {
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
        self.has_mig
            .then_some(&mut self.mig as &mut dyn MigrationDevice)
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        self.has_dma
            .then_some(&mut self.dma as &mut dyn DmaDirtyLog)
    }
}

/// The device lost its v2 interface or DMA log after it was shared (a contract breach).
fn gone() -> MigrationError {
    MigrationError::BadData {
        reason: "the device no longer offers the v2 migration interface".into(),
    }
}

impl MigrationDevice for SharedMigration {
    fn migration_flags(&self) -> u32 {
        let mut d = lock(&self.0);
        d.migration().map_or(0, |m| m.migration_flags())
    }
    fn mig_state(&self) -> MigState {
        let mut d = lock(&self.0);
        d.migration().map_or(MigState::Error, |m| m.mig_state())
    }
    fn set_mig_state(&mut self, target: MigState) -> Result<MigState, MigrationError> {
        lock(&self.0)
            .migration()
            .ok_or_else(gone)?
            .set_mig_state(target)
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        lock(&self.0).migration().ok_or_else(gone)?.read_data(buf)
    }
    fn write_data(&mut self, buf: &[u8]) -> Result<usize, MigrationError> {
        lock(&self.0).migration().ok_or_else(gone)?.write_data(buf)
    }
    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        lock(&self.0).migration().ok_or_else(gone)?.precopy_info()
    }
    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        lock(&self.0).migration().ok_or_else(gone)?.stop_copy_size()
    }
}

impl DmaDirtyLog for SharedDmaLog {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<(), DirtyError> {
        match lock(&self.0).dma_dirty_log() {
            Some(l) => l.start(ranges, page_size),
            None => Err(DirtyError::NotStarted),
        }
    }
    fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        match lock(&self.0).dma_dirty_log() {
            Some(l) => l.report(iova, length, page_size),
            None => Err(DirtyError::NotStarted),
        }
    }
    fn stop(&mut self) -> Result<(), DirtyError> {
        match lock(&self.0).dma_dirty_log() {
            Some(l) => l.stop(),
            None => Err(DirtyError::NotStarted),
        }
    }
    fn is_logging(&self) -> bool {
        lock(&self.0)
            .dma_dirty_log()
            .is_some_and(|l| l.is_logging())
    }
}
