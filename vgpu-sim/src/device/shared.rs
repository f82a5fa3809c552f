//! The vGPU as a VMM holds it: one device shared between the VMM (region accesses, irq
//! wiring, migration) and whatever runs its engine (the simulated platform between vCPU
//! steps, or a thread of its own), as real hardware is reached by the driver while it
//! runs. Every access takes the lock for its duration, so each is atomic with respect to
//! the engine's commands.

use std::sync::{Arc, Mutex, MutexGuard};

use mdev_core::uapi::{vfio_device_info, vfio_irq_info, vfio_precopy_info};
use mdev_core::{
    DeviceError, DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange, IrqSink, MigState,
    MigrationDevice, MigrationError, RegionInfo, VfioDevice,
};

use super::Vgpu;

/// Lock a shared vGPU; a poisoned lock (a panic while it was held) still yields the device.
pub fn lock(dev: &Mutex<Vgpu>) -> MutexGuard<'_, Vgpu> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// The migration interface of a shared vGPU.
#[derive(Debug)]
pub struct SharedMigration(Arc<Mutex<Vgpu>>);

/// The DMA dirty log of a shared vGPU.
#[derive(Debug)]
pub struct SharedDmaLog(Arc<Mutex<Vgpu>>);

/// A [`Vgpu`] behind a lock, implementing the VFIO contract by locking for each request.
#[derive(Debug)]
pub struct SharedVgpu {
    dev: Arc<Mutex<Vgpu>>,
    mig: SharedMigration,
    dma: SharedDmaLog,
}

impl SharedVgpu {
    /// Share `dev`.
    pub fn new(dev: Vgpu) -> Self {
        let dev = Arc::new(Mutex::new(dev));
        Self {
            mig: SharedMigration(dev.clone()),
            dma: SharedDmaLog(dev.clone()),
            dev,
        }
    }

    /// Another handle on the same device (for its engine runner and test hooks).
    pub fn handle(&self) -> Arc<Mutex<Vgpu>> {
        self.dev.clone()
    }
}

impl VfioDevice for SharedVgpu {
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
        Some(&mut self.dma)
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

impl DmaDirtyLog for SharedDmaLog {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<(), DirtyError> {
        lock(&self.0).gtt.start(ranges, page_size)
    }
    fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        lock(&self.0).gtt.report(iova, length, page_size)
    }
    fn stop(&mut self) -> Result<(), DirtyError> {
        lock(&self.0).gtt.stop()
    }
    fn is_logging(&self) -> bool {
        lock(&self.0).gtt.is_logging()
    }
}
