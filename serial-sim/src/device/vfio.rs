//! The VFIO face: regions, irqs, reset, migration.
//!
//! | index | region                    | size                  |
//! |-------|---------------------------|-----------------------|
//! | 0     | BAR0 (registers, MSI-X)   | 4 KiB                 |
//! | 2     | BAR2 (scratch)            | 4 KiB                 |
//! | 7     | PCI configuration space   | 4 KiB                 |
//! | 9     | v1 migration region       | `StateRegion::size()` (0 when not exposed) |
//! | 1, 3-6, 8 | absent                | 0                     |
//!
//! Irqs: MSI-X with one vector; INTx, MSI and ERR report one vector each and are never
//! signalled (the device only does MSI-X); REQ has none.

use std::mem::size_of;
use std::sync::Arc;

use mdev_core::device::{BadIrqSetSnafu, NoSuchIrqSnafu, NoSuchRegionSnafu, OutOfRangeSnafu};
use mdev_core::uapi::*;
use mdev_core::{DeviceError, DmaDirtyLog, IrqSink, MigrationDevice, RegionInfo, VfioDevice};

use super::{Serial, MIGRATION_REGION_INDEX, NUM_REGIONS};
use crate::regs::{BAR0_SIZE, BAR2_SIZE, MSIX_VECTORS};

/// Size of the PCI configuration region.
pub const CONFIG_REGION_SIZE: u64 = 4096;
/// vfio-pci places region `index` at `index << 40` of the device fd.
const REGION_OFFSET_SHIFT: u32 = 40;

type DevResult<T> = std::result::Result<T, DeviceError>;

fn irq_count(index: u32) -> Option<u32> {
    match index {
        VFIO_PCI_INTX_IRQ_INDEX | VFIO_PCI_MSI_IRQ_INDEX | VFIO_PCI_ERR_IRQ_INDEX => Some(1),
        VFIO_PCI_MSIX_IRQ_INDEX => Some(u32::from(MSIX_VECTORS)),
        VFIO_PCI_REQ_IRQ_INDEX => Some(0),
        _ => None,
    }
}

impl Serial {
    fn region_size(&self, index: u32) -> DevResult<u64> {
        Ok(match index {
            VFIO_PCI_BAR0_REGION_INDEX => BAR0_SIZE,
            VFIO_PCI_BAR2_REGION_INDEX => BAR2_SIZE,
            VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_REGION_SIZE,
            MIGRATION_REGION_INDEX => self.region.as_ref().map_or(0, |r| r.size()),
            i if i < NUM_REGIONS => 0,
            _ => return NoSuchRegionSnafu { index }.fail(),
        })
    }

    fn check_range(&self, index: u32, offset: u64, len: usize) -> DevResult<()> {
        let size = self.region_size(index)?;
        let fits = offset.checked_add(len as u64).is_some_and(|e| e <= size);
        if fits {
            return Ok(());
        }
        OutOfRangeSnafu {
            index,
            offset,
            len,
            size,
        }
        .fail()
    }

    /// Run `f` with the v1 region lent out and the device as its migration device.
    fn with_region<T>(
        &mut self,
        f: impl FnOnce(&mut state_region::StateRegion, &mut dyn MigrationDevice) -> T,
    ) -> DevResult<T> {
        let Some(mut region) = self.region.take() else {
            return NoSuchRegionSnafu {
                index: MIGRATION_REGION_INDEX,
            }
            .fail();
        };
        let out = f(&mut region, self);
        self.region = Some(region);
        Ok(out)
    }

    /// Whether a DMA dirty log is offered (see [`super::SerialConfig::dma_log`]).
    pub fn offers_dma_log(&self) -> bool {
        self.dma_log.is_some()
    }
}

impl VfioDevice for Serial {
    fn device_info(&self) -> vfio_device_info {
        vfio_device_info {
            argsz: size_of::<vfio_device_info>() as u32,
            flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
            num_regions: if self.has_region {
                NUM_REGIONS
            } else {
                VFIO_PCI_NUM_REGIONS
            },
            num_irqs: VFIO_PCI_NUM_IRQS,
            cap_offset: 0,
            pad: 0,
        }
    }

    fn region_info(&self, index: u32) -> DevResult<RegionInfo> {
        if index == MIGRATION_REGION_INDEX {
            if let Some(r) = &self.region {
                return Ok(r.region_info(index));
            }
        }
        let size = self.region_size(index)?;
        let flags = if size == 0 {
            0
        } else {
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
        };
        Ok(RegionInfo {
            info: vfio_region_info {
                argsz: size_of::<vfio_region_info>() as u32,
                flags,
                index,
                cap_offset: 0,
                size,
                offset: u64::from(index) << REGION_OFFSET_SHIFT,
            },
            cap_type: None,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> DevResult<()> {
        self.check_range(index, offset, data.len())?;
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => self.bar0_read(offset, data),
            VFIO_PCI_BAR2_REGION_INDEX => self.bar2_read(offset, data),
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.read(offset, data),
            MIGRATION_REGION_INDEX => return self.with_region(|r, d| r.read(d, offset, data))?,
            // Absent regions have size 0: check_range refused every access.
            _ => {}
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> DevResult<()> {
        self.check_range(index, offset, data.len())?;
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => self.bar0_write(offset, data),
            VFIO_PCI_BAR2_REGION_INDEX => self.bar2_write(offset, data),
            VFIO_PCI_CONFIG_REGION_INDEX => {
                let changes = self.config.write(offset, data);
                self.apply_config_changes(&changes);
            }
            MIGRATION_REGION_INDEX => self.with_region(|r, d| r.write(d, offset, data))??,
            _ => {}
        }
        Ok(())
    }

    fn irq_info(&self, index: u32) -> DevResult<vfio_irq_info> {
        let count = irq_count(index).ok_or(DeviceError::NoSuchIrq { index })?;
        let flags = match index {
            VFIO_PCI_INTX_IRQ_INDEX => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE,
            _ => VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
        };
        Ok(vfio_irq_info {
            argsz: size_of::<vfio_irq_info>() as u32,
            flags,
            index,
            count,
        })
    }

    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> DevResult<()> {
        let max = irq_count(index).ok_or_else(|| NoSuchIrqSnafu { index }.build())?;
        let in_range = start.checked_add(count).is_some_and(|end| end <= max);
        if !in_range || (sink.is_some() && count == 0) {
            return BadIrqSetSnafu {
                index,
                what: format!("vectors {start}+{count} do not fit the {max} this index has"),
            }
            .fail();
        }
        self.sinks[index as usize] = sink;
        // A sink just wired may be the one an owed interrupt waits for.
        self.deliver_owed();
        Ok(())
    }

    fn reset(&mut self) -> DevResult<()> {
        self.reset_device();
        Ok(())
    }

    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        Some(self)
    }

    /// A log that never reports a page (the device does no DMA), when configured to
    /// offer one.
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        self.dma_log.as_mut().map(|l| l as &mut dyn DmaDirtyLog)
    }
}
