//! The device-state side of vGPU migration.
//!
//! * [`mod@format`]: the versioned, digested context format a vGPU serialises its state into:
//!   a header, typed sections, an end section; encoded by [`format::ContextEncoder`] and
//!   decoded by a push parser ([`format::ContextParser`]) that takes the stream in chunks of
//!   any size and never buffers a whole payload.
//! * [`region`]: the v1 migration region ([`region::StateRegion`], the 2017 GVT-g
//!   "device state" region) implemented on top of any device's v2 data stream
//!   ([`mdev_core::MigrationDevice`]).
//! * [`driver`]: the VMM side of the v1 region: the save and resume sequences performed only
//!   through region reads and writes of a [`mdev_core::VfioDevice`], as QEMU does through
//!   `pread`/`pwrite` on the device fd.

#![deny(missing_docs)]

pub mod driver;
pub mod format;
pub mod region;

#[cfg(test)]
mod testutil;

pub use region::{StateRegion, V1Checks, DATA_OFFSET, DEFAULT_WINDOW, MIGRATION_REGION_TYPE};
