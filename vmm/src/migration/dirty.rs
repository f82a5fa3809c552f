//! Dirty tracking of device DMA, as the VMM reaches it.
//!
//! Two interfaces onto the same device log (`mdev_core::DmaDirtyLog`):
//! * the IOMMU style of the v1 era: `VFIO_IOMMU_DIRTY_PAGES` on the container with
//!   `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`, `_STOP` and `_GET_BITMAP` (an iova range and a
//!   bitmap page size) — [`IommuContainer`];
//! * the v2 DMA logging features (`DMA_LOGGING_START` with ranges and a page size,
//!   `DMA_LOGGING_REPORT`, `DMA_LOGGING_STOP`) — straight on the device.
//!
//! The source uses the IOMMU style with the region protocol and DMA logging with v2, and
//! merges the result with the CPU dirty log.

use mdev_core::{DirtyBitmap, DmaDirtyLog, DmaRange};
use vfio_bindings::bindings::vfio::{
    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
};

use super::device_io::Protocol;
use super::error::{MigrationError, Result};
use crate::memory::PAGE_SIZE;
use crate::vm::Vm;

/// A VFIO container with one device, answering `VFIO_IOMMU_DIRTY_PAGES` requests.
#[derive(Debug, Default)]
pub struct IommuContainer {
    started: bool,
}

impl IommuContainer {
    /// A container with dirty tracking off.
    pub fn new() -> Self {
        Self::default()
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` with `flags` (exactly one of START, STOP, GET_BITMAP) over
    /// `iova..iova+size` at `pgsize`. GET_BITMAP returns the bitmap (and clears it).
    pub fn dirty_pages(
        &mut self,
        log: &mut dyn DmaDirtyLog,
        flags: u32,
        iova: u64,
        size: u64,
        pgsize: u64,
    ) -> Result<Option<DirtyBitmap>> {
        let err = |what: String| MigrationError::Device {
            doing: "VFIO_IOMMU_DIRTY_PAGES",
            reason: what,
        };
        match flags {
            VFIO_IOMMU_DIRTY_PAGES_FLAG_START => {
                log.start(&[DmaRange { iova, length: size }], pgsize)
                    .map_err(|e| err(e.to_string()))?;
                self.started = true;
                Ok(None)
            }
            VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP => {
                if self.started {
                    log.stop().map_err(|e| err(e.to_string()))?;
                }
                self.started = false;
                Ok(None)
            }
            VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP => {
                if !self.started {
                    return Err(err("GET_BITMAP without START".into()));
                }
                log.report(iova, size, pgsize)
                    .map(Some)
                    .map_err(|e| err(e.to_string()))
            }
            f => Err(err(format!(
                "flags {f:#x} must be exactly one of START, STOP, GET_BITMAP"
            ))),
        }
    }
}

/// The source's view of device DMA dirtying over guest RAM.
///
/// A device without a DMA dirty log (the uAPI makes `DMA_LOGGING` optional) is tracked
/// conservatively, as QEMU does for such devices: its rounds report nothing, and the final
/// harvest, taken while the device is stopped, reports every page of guest RAM the host
/// ever backed, so whatever the device wrote is re-sent inside the downtime.
#[derive(Debug)]
pub struct DmaTracker {
    protocol: Protocol,
    container: IommuContainer,
    ram: u64,
    /// The device has a DMA dirty log.
    logged: bool,
}

fn no_log() -> MigrationError {
    MigrationError::Device {
        doing: "starting DMA dirty tracking",
        reason: "the device has no DMA dirty log".into(),
    }
}

impl DmaTracker {
    /// Start tracking DMA writes to all of guest RAM.
    pub fn start(vm: &mut Vm, protocol: Protocol) -> Result<Self> {
        let ram = crate::memory::size(vm.memory());
        let mut t = Self {
            protocol,
            container: IommuContainer::new(),
            ram,
            logged: vm.device().dma_dirty_log().is_some(),
        };
        let Some(log) = vm.device().dma_dirty_log() else {
            slog::info!(
                vm.log(),
                "the device has no DMA dirty log: all backed guest RAM is re-sent at stop-copy"
            );
            return Ok(t);
        };
        match protocol {
            Protocol::Region => {
                t.container.dirty_pages(
                    log,
                    VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
                    0,
                    ram,
                    PAGE_SIZE,
                )?;
            }
            Protocol::V2 => log
                .start(
                    &[DmaRange {
                        iova: 0,
                        length: ram,
                    }],
                    PAGE_SIZE,
                )
                .map_err(|e| MigrationError::Device {
                    doing: "DMA_LOGGING_START",
                    reason: e.to_string(),
                })?,
        }
        Ok(t)
    }

    /// Whether the device has a DMA dirty log (else see the type's doc).
    pub fn is_logged(&self) -> bool {
        self.logged
    }

    /// The final harvest, with the device stopped: [`Self::harvest`], or for a device
    /// without a log every page of guest RAM the host ever backed.
    pub fn harvest_final(&mut self, vm: &mut Vm) -> Result<DirtyBitmap> {
        if self.logged {
            self.harvest(vm)
        } else {
            Ok(crate::memory::maybe_written(vm.memory()))
        }
    }

    /// Pages the device wrote since the last harvest (read and clear); nothing for a
    /// device without a log.
    pub fn harvest(&mut self, vm: &mut Vm) -> Result<DirtyBitmap> {
        if !self.logged {
            return DirtyBitmap::new(0, self.ram, PAGE_SIZE).map_err(|e| MigrationError::Device {
                doing: "allocating the dirty bitmap",
                reason: e.to_string(),
            });
        }
        let log = vm.device().dma_dirty_log().ok_or_else(no_log)?;
        let bitmap =
            match self.protocol {
                Protocol::Region => self.container.dirty_pages(
                    log,
                    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
                    0,
                    self.ram,
                    PAGE_SIZE,
                )?,
                Protocol::V2 => Some(log.report(0, self.ram, PAGE_SIZE).map_err(|e| {
                    MigrationError::Device {
                        doing: "DMA_LOGGING_REPORT",
                        reason: e.to_string(),
                    }
                })?),
            };
        bitmap.ok_or_else(|| MigrationError::Device {
            doing: "VFIO_IOMMU_DIRTY_PAGES",
            reason: "no bitmap returned".into(),
        })
    }

    /// Stop tracking.
    pub fn stop(&mut self, vm: &mut Vm) {
        if let Some(log) = vm.device().dma_dirty_log() {
            match self.protocol {
                Protocol::Region => {
                    let _ = self.container.dirty_pages(
                        log,
                        VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
                        0,
                        self.ram,
                        PAGE_SIZE,
                    );
                }
                Protocol::V2 => {
                    let _ = log.stop();
                }
            }
        }
    }
}
