//! Contracts shared by every vgpu-migrate crate.
//!
//! * [`device`]: a VFIO-style device trait ([`VfioDevice`]): device info, regions by index
//!   with size, flags and a type/subtype capability, region reads and writes, irqs, reset.
//! * [`migration`]: the v2 migration state machine ([`MigState`]), its direct arcs and the
//!   shortest-path walk, the mapping from v1 `device_state` bits, and the data-stream
//!   operations a migratable device offers ([`MigrationDevice`]).
//! * [`dirty`]: dirty tracking of device DMA into guest RAM ([`DmaDirtyLog`]).
//! * [`shared`]: a device behind one lock, shared by a VMM's threads ([`Shared`]).
//! * [`mdev`]: mdev types, instances by UUID, and available instances from a parent's
//!   resources ([`MdevRegistry`]).
//!
//! Every uAPI constant and struct comes from `vfio-bindings`; nothing is redefined here.

#![deny(missing_docs)]

pub mod device;
pub mod dirty;
pub mod mdev;
pub mod migration;
pub mod shared;

pub use device::{DeviceError, IrqSink, RegionInfo, RegionType, VfioDevice, NO_REGION_TYPE};
pub use dirty::{
    check_logging_ranges, DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange, LOG_MAX_RANGES,
    MIN_REPORT_PAGE_SIZE,
};
pub use mdev::{MdevError, MdevRegistry, MdevType, Uuid};
pub use migration::{
    follow_session, is_direct_arc, next_step, saving_read, session_kind, v1_to_v2, v2_to_v1,
    write_all_data, DataStream, MigState, MigTransition, MigrationArcs, MigrationController,
    MigrationDevice, MigrationError, ALL_STATES,
};
pub use shared::Shared;
/// The VFIO uAPI as the kernel headers define it (re-exported from `vfio-bindings`).
pub use vfio_bindings::bindings::vfio as uapi;
