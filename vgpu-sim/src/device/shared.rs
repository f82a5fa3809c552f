//! The vGPU as a VMM holds it: one device behind a lock ([`mdev_core::Shared`]), shared
//! between the VMM (region accesses, irq wiring, migration) and whatever runs its engine
//! (the simulated platform between vCPU steps, or a thread of its own), as real hardware
//! is reached by the driver while it runs.

pub use mdev_core::shared::lock;

use super::Vgpu;

/// A [`Vgpu`] behind a lock, implementing the VFIO contract by locking for each request;
/// [`mdev_core::Shared::handle`] gives its engine runner the same device.
pub type SharedVgpu = mdev_core::Shared<Vgpu>;
