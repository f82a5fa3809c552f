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

/// A VFIO container with one device, answering `VFIO_IOMMU_DIRTY_PAGES` requests as
/// drivers/vfio/vfio_iommu_type1.c does: START and STOP carry no range (tracking covers every
/// DMA mapping of the container), a second START succeeds, STOP without START succeeds,
/// GET_BITMAP needs START, takes only the container's smallest page size, and an iova range
/// aligned to it inside the mappings.
#[derive(Debug)]
pub struct IommuContainer {
    /// The container's DMA mappings (guest RAM, mapped for the device).
    mappings: Vec<DmaRange>,
    started: bool,
}

impl IommuContainer {
    /// The smallest page size of the container's IOMMU (`1 << __ffs(pgsize_bitmap)`).
    pub const PGSIZE: u64 = PAGE_SIZE;

    /// A container holding `mappings`, with dirty tracking off.
    pub fn new(mappings: Vec<DmaRange>) -> Self {
        Self {
            mappings,
            started: false,
        }
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` with `flags` (exactly one of START, STOP, GET_BITMAP).
    /// `range` (`iova`, `size`, `pgsize`) is GET_BITMAP's `struct vfio_iommu_type1_dirty_bitmap_get`
    /// and must be `None` for START and STOP. GET_BITMAP returns the bitmap (and clears it).
    pub fn dirty_pages(
        &mut self,
        log: &mut dyn DmaDirtyLog,
        flags: u32,
        range: Option<(u64, u64, u64)>,
    ) -> Result<Option<DirtyBitmap>> {
        let err = |what: String| MigrationError::Device {
            doing: "VFIO_IOMMU_DIRTY_PAGES",
            reason: what,
        };
        match (flags, range) {
            (VFIO_IOMMU_DIRTY_PAGES_FLAG_START, None) => {
                if !self.started {
                    log.start(&self.mappings, Self::PGSIZE)
                        .map_err(|e| err(e.to_string()))?;
                    self.started = true;
                }
                Ok(None)
            }
            (VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, None) => {
                if self.started {
                    log.stop().map_err(|e| err(e.to_string()))?;
                }
                self.started = false;
                Ok(None)
            }
            (VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, Some((iova, size, pgsize))) => {
                if !self.started {
                    return Err(err("GET_BITMAP without START".into()));
                }
                if pgsize != Self::PGSIZE {
                    return Err(err(format!(
                        "GET_BITMAP page size {pgsize:#x} is not the IOMMU's smallest ({:#x})",
                        Self::PGSIZE
                    )));
                }
                let inside = self.mappings.iter().any(|m| {
                    iova >= m.iova && iova.checked_add(size).is_some_and(|e| e <= m.iova + m.length)
                });
                if size == 0 || iova % pgsize != 0 || size % pgsize != 0 || !inside {
                    return Err(err(format!(
                        "GET_BITMAP range {iova:#x}+{size:#x} is not aligned to {pgsize:#x} inside a mapping"
                    )));
                }
                log.report(iova, size, pgsize)
                    .map(Some)
                    .map_err(|e| err(e.to_string()))
            }
            (f @ (VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP), Some(_)) => {
                Err(err(format!("flags {f:#x} carry no range")))
            }
            (f, _) => Err(err(format!(
                "flags {f:#x} must be exactly one of START, STOP, GET_BITMAP (GET_BITMAP with a range)"
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
            container: IommuContainer::new(vec![DmaRange {
                iova: 0,
                length: ram,
            }]),
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
                t.container
                    .dirty_pages(log, VFIO_IOMMU_DIRTY_PAGES_FLAG_START, None)?;
            }
            Protocol::V2 => {
                // page_size is a hint; reports ask for 4 KiB whatever the device tracks.
                let tracked = log
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
                    })?;
                slog::debug!(vm.log(), "DMA logging started"; "device_page_size" => tracked);
            }
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
                    Some((0, self.ram, PAGE_SIZE)),
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
                    let _ = self
                        .container
                        .dirty_pages(log, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, None);
                }
                Protocol::V2 => {
                    let _ = log.stop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mdev_core::DirtyError;

    use super::*;

    /// A log that records START/STOP and reports what it was told to.
    #[derive(Default)]
    struct Recorded {
        starts: Vec<(Vec<DmaRange>, u64)>,
        stops: u32,
        started: bool,
    }

    impl DmaDirtyLog for Recorded {
        fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<u64, DirtyError> {
            if self.started {
                return Err(DirtyError::AlreadyStarted);
            }
            self.started = true;
            self.starts.push((ranges.to_vec(), page_size));
            Ok(page_size)
        }
        fn report(&mut self, iova: u64, length: u64, ps: u64) -> Result<DirtyBitmap, DirtyError> {
            let mut b = DirtyBitmap::new(iova, length, ps)?;
            b.mark(iova);
            Ok(b)
        }
        fn stop(&mut self) -> Result<(), DirtyError> {
            self.started = false;
            self.stops += 1;
            Ok(())
        }
        fn is_logging(&self) -> bool {
            self.started
        }
    }

    // vfio_iommu_type1.c, vfio_iommu_type1_dirty_pages: START and STOP carry no range and
    // cover every mapping; a second START and a STOP without START succeed; GET_BITMAP needs
    // START, the smallest IOMMU page size, and an aligned range inside a mapping.
    #[test]
    fn the_container_follows_type1() {
        use VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP as GET;
        use VFIO_IOMMU_DIRTY_PAGES_FLAG_START as START;
        use VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP as STOP;
        let map = DmaRange {
            iova: 0,
            length: 1 << 20,
        };
        let mut c = IommuContainer::new(vec![map]);
        let mut log = Recorded::default();
        assert!(
            c.dirty_pages(&mut log, STOP, None).is_ok(),
            "STOP before START"
        );
        assert!(c
            .dirty_pages(&mut log, GET, Some((0, 1 << 20, 4096)))
            .is_err());
        assert!(c
            .dirty_pages(&mut log, START, Some((0, 4096, 4096)))
            .is_err());
        c.dirty_pages(&mut log, START, None).unwrap();
        c.dirty_pages(&mut log, START, None).unwrap();
        assert_eq!(
            log.starts,
            vec![(vec![map], 4096)],
            "one START reaches the log"
        );
        let b = c
            .dirty_pages(&mut log, GET, Some((8192, 8192, 4096)))
            .unwrap()
            .unwrap();
        assert_eq!((b.iova(), b.pages()), (8192, 2));
        for bad in [
            (0, 1 << 20, 8192),
            (100, 4096, 4096),
            (0, 4097, 4096),
            (0, 0, 4096),
            (1 << 20, 4096, 4096),
            (u64::MAX - 4095, 4096, 4096),
        ] {
            assert!(c.dirty_pages(&mut log, GET, Some(bad)).is_err(), "{bad:?}");
        }
        assert!(c.dirty_pages(&mut log, START | STOP, None).is_err());
        c.dirty_pages(&mut log, STOP, None).unwrap();
        c.dirty_pages(&mut log, STOP, None).unwrap();
        assert_eq!(log.stops, 1);
    }
}
