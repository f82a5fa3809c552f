//! The VFIO-style device contract.
//!
//! A VMM reaches a device only through [`VfioDevice`], as QEMU reaches a VFIO device only
//! through ioctls and region accesses: it asks for device, region and irq info, reads and
//! writes regions at offsets, wires interrupts to sinks, resets, and (for migratable devices)
//! drives the migration state machine. The structs returned are the uAPI's own
//! (`vfio_device_info`, `vfio_region_info`, `vfio_region_info_cap_type`, `vfio_irq_info`).

use std::fmt::Debug;
use std::sync::Arc;

use snafu::Snafu;

use crate::dirty::DmaDirtyLog;
use crate::migration::MigrationDevice;
use crate::uapi::{vfio_device_info, vfio_irq_info, vfio_region_info, vfio_region_info_cap_type};

/// Errors a device returns for a request it cannot honour.
///
/// These are the equivalents of the `-EINVAL`/`-EFAULT`/`-EBUSY` a VFIO driver returns; a
/// guest access through a BAR never produces one (the device logs and ignores it instead).
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub))]
pub enum DeviceError {
    /// No region has this index.
    #[snafu(display("no region with index {index}"))]
    NoSuchRegion {
        /// The index asked for.
        index: u32,
    },
    /// No irq has this index.
    #[snafu(display("no irq with index {index}"))]
    NoSuchIrq {
        /// The index asked for.
        index: u32,
    },
    /// The access falls outside the region.
    #[snafu(display(
        "access of {len} bytes at offset {offset:#x} is outside region {index} (size {size:#x})"
    ))]
    OutOfRange {
        /// Region index.
        index: u32,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// Size of the region.
        size: u64,
    },
    /// The access has a width or alignment the region does not accept.
    #[snafu(display("region {index}: {len}-byte access at offset {offset:#x} is not a naturally aligned access of the field's width"))]
    BadAccess {
        /// Region index.
        index: u32,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
    },
    /// The region does not allow this direction of access.
    #[snafu(display("region {index} does not allow {what}"))]
    NotPermitted {
        /// Region index.
        index: u32,
        /// "reads" or "writes".
        what: &'static str,
    },
    /// The device refused the request in its current state.
    #[snafu(display("{what}"))]
    InvalidState {
        /// What was refused and why.
        what: String,
    },
    /// The irq set request is malformed.
    #[snafu(display("irq {index}: {what}"))]
    BadIrqSet {
        /// Irq index.
        index: u32,
        /// What is wrong.
        what: String,
    },
}

/// `Result` with a [`DeviceError`].
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// A project sentinel (not a uAPI name): the type/subtype of a region that carries no
/// `VFIO_REGION_INFO_CAP_TYPE` capability (`type_ = subtype = 0`).
pub const NO_REGION_TYPE: RegionType = RegionType {
    type_: 0,
    subtype: 0,
};

/// A region's type/subtype capability (`VFIO_REGION_INFO_CAP_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionType {
    /// `vfio_region_info_cap_type::type_`.
    pub type_: u32,
    /// `vfio_region_info_cap_type::subtype`.
    pub subtype: u32,
}

impl From<vfio_region_info_cap_type> for RegionType {
    fn from(c: vfio_region_info_cap_type) -> Self {
        Self {
            type_: c.type_,
            subtype: c.subtype,
        }
    }
}

/// What `VFIO_DEVICE_GET_REGION_INFO` returns: the uAPI struct plus its type capability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionInfo {
    /// Index, size, flags and offset as the uAPI reports them.
    pub info: vfio_region_info,
    /// The `VFIO_REGION_INFO_CAP_TYPE` capability, for device-specific regions.
    pub cap_type: Option<vfio_region_info_cap_type>,
}

impl RegionInfo {
    /// Region size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Whether the region carries the given type/subtype capability.
    pub fn is_type(&self, ty: RegionType) -> bool {
        self.cap_type.is_some_and(|c| RegionType::from(c) == ty)
    }
}

/// Where a device's interrupts go: the stand-in for the eventfd a VMM passes with
/// `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`.
pub trait IrqSink: Send + Sync + Debug {
    /// Signal vector `vector` of irq index `index` (e.g. `VFIO_PCI_MSI_IRQ_INDEX`).
    fn signal(&self, index: u32, vector: u32);

    /// The eventfd behind vector `vector` of `index`, when the sink is one (a VMM that
    /// wired it to KVM with an irqfd): a device in another process is then handed this
    /// eventfd itself and its writes reach the guest without the VMM, as
    /// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_EVENTFD` does. `None` (the default):
    /// the sink must be called.
    fn eventfd(&self, _index: u32, _vector: u32) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// A VFIO-style device, as a VMM sees it.
///
/// The trait is object safe: a VMM holds `Box<dyn VfioDevice>` and never learns the
/// concrete type, as QEMU never learns which driver is behind a VFIO device fd. What a
/// write changes in the guest-visible PCI face (a BAR moved, an MSI-X entry reprogrammed),
/// the VMM learns by reading the config region and the MSI-X table back, as vfio-pci does.
pub trait VfioDevice: Send + Debug {
    /// `VFIO_DEVICE_GET_INFO`.
    fn device_info(&self) -> vfio_device_info;

    /// `VFIO_DEVICE_GET_REGION_INFO` for region `index`.
    fn region_info(&self, index: u32) -> Result<RegionInfo>;

    /// Read `data.len()` bytes of region `index` at `offset` (a `pread` on the device fd).
    ///
    /// Takes `&mut self`: reads of some registers have side effects (reading `data_offset`
    /// of the migration region stages the next chunk).
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<()>;

    /// Write `data` to region `index` at `offset` (a `pwrite` on the device fd).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()>;

    /// `VFIO_DEVICE_GET_IRQ_INFO` for irq `index`.
    fn irq_info(&self, index: u32) -> Result<vfio_irq_info>;

    /// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`
    /// (with `sink` set) or `VFIO_IRQ_SET_DATA_NONE` (with `sink` unset: tear down), for
    /// vectors `start..start + count` of irq `index`.
    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> Result<()>;

    /// `VFIO_DEVICE_RESET`: back to power-on state, migration state RUNNING.
    fn reset(&mut self) -> Result<()>;

    /// The v2 migration feature (`VFIO_DEVICE_FEATURE_MIGRATION`,
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` and the data fd), if the device supports it.
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice>;

    /// The DMA dirty log (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`), if the device has one.
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog>;

    /// Find the first region with the given type/subtype capability.
    fn find_region(&self, ty: RegionType) -> Option<u32> {
        (0..self.device_info().num_regions).find(|&i| {
            self.region_info(i)
                .map(|info| info.is_type(ty))
                .unwrap_or(false)
        })
    }
}

/// A boxed device is a device (a VMM holds `Box<dyn VfioDevice>`).
impl<T: VfioDevice + ?Sized> VfioDevice for Box<T> {
    fn device_info(&self) -> vfio_device_info {
        (**self).device_info()
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        (**self).region_info(index)
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        (**self).region_read(index, offset, data)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        (**self).region_write(index, offset, data)
    }
    fn irq_info(&self, index: u32) -> Result<vfio_irq_info> {
        (**self).irq_info(index)
    }
    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> Result<()> {
        (**self).set_irqs(index, start, count, sink)
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        (**self).migration()
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        (**self).dma_dirty_log()
    }
}
