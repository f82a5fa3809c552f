//! The device as a VMM holds it: one [`Serial`] behind a lock ([`mdev_core::Shared`]),
//! shared between the VMM (region accesses, irq wiring, migration) and whatever advances
//! its line. Every request takes the lock for its duration.

pub use mdev_core::shared::lock;

use super::Serial;

/// A [`Serial`] behind a lock, implementing the VFIO contract by locking for each request;
/// [`mdev_core::Shared::handle`] gives its line the same device.
pub type SharedSerial = mdev_core::Shared<Serial>;
