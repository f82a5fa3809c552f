//! A device behind one lock, for a VMM whose threads all reach it: the vCPU thread (MMIO),
//! the device's own execution (a simulated device's engine), the migration thread (regions,
//! the v2 data stream, DMA logging). Each request takes the lock for its duration, as each
//! VFIO ioctl or region access is one call into the kernel driver.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::dirty::{DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange};
use crate::migration::{DataStream, MigState, MigTransition, MigrationDevice, MigrationError};
use crate::uapi::{vfio_device_info, vfio_irq_info, vfio_precopy_info};
use crate::{DeviceError, IrqSink, RegionInfo, VfioDevice};

/// Lock a shared device; a poisoned lock (a panic while it was held) still yields it.
pub fn lock<D: ?Sized>(dev: &Mutex<D>) -> MutexGuard<'_, D> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// `D` behind a lock, implementing the VFIO contract by locking for each request. Clones
/// share the device.
#[derive(Debug)]
pub struct Shared<D> {
    dev: Arc<Mutex<D>>,
    mig: SharedMigration<D>,
    dma: SharedDmaLog<D>,
    /// Whether the device has the v2 interface and a DMA log (fixed when shared).
    has_mig: bool,
    has_dma: bool,
}

impl<D> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Self {
            dev: self.dev.clone(),
            mig: SharedMigration(self.dev.clone()),
            dma: SharedDmaLog(self.dev.clone()),
            has_mig: self.has_mig,
            has_dma: self.has_dma,
        }
    }
}

/// The v2 migration interface of a shared device.
#[derive(Debug)]
struct SharedMigration<D>(Arc<Mutex<D>>);

/// The DMA dirty log of a shared device.
#[derive(Debug)]
struct SharedDmaLog<D>(Arc<Mutex<D>>);

impl<D: VfioDevice> Shared<D> {
    /// Share `dev`.
    pub fn new(mut dev: D) -> Self {
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

impl<D> Shared<D> {
    /// Another handle on the same device (for its engine and test hooks).
    pub fn handle(&self) -> Arc<Mutex<D>> {
        self.dev.clone()
    }
}

impl<D: VfioDevice> VfioDevice for Shared<D> {
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

/// The device stopped offering its v2 interface after it was shared (a contract breach).
fn gone() -> MigrationError {
    MigrationError::BadData {
        reason: "the device no longer offers the v2 migration interface".into(),
    }
}

impl<D: VfioDevice> MigrationDevice for SharedMigration<D> {
    fn migration_flags(&self) -> u32 {
        lock(&self.0).migration().map_or(0, |m| m.migration_flags())
    }
    fn mig_state(&self) -> MigState {
        lock(&self.0)
            .migration()
            .map_or(MigState::Error, |m| m.mig_state())
    }
    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError> {
        lock(&self.0)
            .migration()
            .ok_or_else(gone)?
            .set_mig_state(target)
    }
    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError> {
        lock(&self.0)
            .migration()
            .ok_or_else(gone)?
            .read_data(stream, buf)
    }
    fn write_data(&mut self, stream: DataStream, buf: &[u8]) -> Result<usize, MigrationError> {
        lock(&self.0)
            .migration()
            .ok_or_else(gone)?
            .write_data(stream, buf)
    }
    fn close_data(&mut self, stream: DataStream) {
        if let Some(m) = lock(&self.0).migration() {
            m.close_data(stream);
        }
    }
    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        lock(&self.0).migration().ok_or_else(gone)?.precopy_info()
    }
    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        lock(&self.0).migration().ok_or_else(gone)?.stop_copy_size()
    }
}

impl<D: VfioDevice> DmaDirtyLog for SharedDmaLog<D> {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<u64, DirtyError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with one 16-byte region and no migration or DMA log.
    #[derive(Debug, Default)]
    struct Cell {
        bytes: [u8; 16],
    }

    impl VfioDevice for Cell {
        fn device_info(&self) -> vfio_device_info {
            vfio_device_info {
                num_regions: 1,
                ..Default::default()
            }
        }
        fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
            Err(DeviceError::NoSuchRegion { index })
        }
        fn region_read(&mut self, _: u32, off: u64, data: &mut [u8]) -> Result<(), DeviceError> {
            let o = off as usize;
            data.copy_from_slice(&self.bytes[o..o + data.len()]);
            Ok(())
        }
        fn region_write(&mut self, _: u32, off: u64, data: &[u8]) -> Result<(), DeviceError> {
            let o = off as usize;
            self.bytes[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn irq_info(&self, index: u32) -> Result<vfio_irq_info, DeviceError> {
            Err(DeviceError::NoSuchIrq { index })
        }
        fn set_irqs(
            &mut self,
            index: u32,
            _: u32,
            _: u32,
            _: Option<Arc<dyn IrqSink>>,
        ) -> Result<(), DeviceError> {
            Err(DeviceError::NoSuchIrq { index })
        }
        fn reset(&mut self) -> Result<(), DeviceError> {
            self.bytes = [0; 16];
            Ok(())
        }
        fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
            None
        }
        fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
            None
        }
    }

    #[test]
    fn clones_and_handles_reach_the_same_device_and_features_are_kept() {
        let mut a = Shared::new(Cell::default());
        let mut b = a.clone();
        a.region_write(0, 4, &[1, 2, 3]).unwrap();
        let mut got = [0u8; 3];
        b.region_read(0, 4, &mut got).unwrap();
        assert_eq!(got, [1, 2, 3], "a clone sees the write");
        assert_eq!(lock(&a.handle()).bytes[5], 2, "so does the handle");
        assert!(b.migration().is_none() && b.dma_dirty_log().is_none());
        // As a boxed trait object, as a VMM holds it.
        let mut boxed = Shared::new(Box::new(Cell::default()) as Box<dyn VfioDevice>);
        boxed.region_write(0, 0, &[9]).unwrap();
        let mut one = [0u8; 1];
        boxed.clone().region_read(0, 0, &mut one).unwrap();
        assert_eq!(one, [9]);
        assert_eq!(boxed.device_info().num_regions, 1);
    }
}
