//! vGPU instances taken from one parent device.
//!
//! A parent (a physical GPU in real life) has a pool of graphics memory; every VM built by a
//! [`ParentFactory`] creates an instance of its type on the parent (its `available_instances`
//! drops) and removes it when the VM goes (it comes back), as creating and removing mdevs
//! through sysfs does. A type with no instance left is refused with the registry's message.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mdev_core::Uuid;
use slog::Logger;
use vgpu_sim::types::VgpuParent;
use vmm::memory::GuestMem;
use vmm::platform::{MachineParts, PlatformLayout, VmFactory};
use vmm::{HardwarePosition, SimHardware};

/// A parent device shared by the VMs of one process.
pub type SharedParent = Arc<Mutex<VgpuParent>>;

fn lock(p: &SharedParent) -> MutexGuard<'_, VgpuParent> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// One instance on a parent, removed when dropped.
#[derive(Debug)]
pub struct InstanceLease {
    parent: SharedParent,
    uuid: Uuid,
}

impl InstanceLease {
    /// Create an instance of `mdev_type` on `parent` (a fresh UUID).
    pub fn take(parent: &SharedParent, mdev_type: &str) -> Result<Self, mdev_core::MdevError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let uuid = Uuid(
            (u128::from(std::process::id()) << 64)
                | u128::from(NEXT.fetch_add(1, Ordering::Relaxed)),
        );
        lock(parent).create(mdev_type, uuid)?;
        Ok(Self {
            parent: parent.clone(),
            uuid,
        })
    }

    /// The instance's UUID.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
}

impl Drop for InstanceLease {
    fn drop(&mut self) {
        let _ = lock(&self.parent).remove(self.uuid);
    }
}

/// `available_instances` of `mdev_type` on `parent` (0 for an unknown type).
pub fn available_instances(parent: &SharedParent, mdev_type: &str) -> u64 {
    lock(parent).available_instances(mdev_type).unwrap_or(0)
}

/// The hardware of a VM whose instance is leased: everything goes to the vGPU's hardware;
/// the lease goes with the VM.
#[derive(Debug)]
struct Leased {
    inner: Box<dyn SimHardware>,
    _lease: InstanceLease,
}

impl SimHardware for Leased {
    fn advance(&mut self, budget: usize) -> usize {
        self.inner.advance(budget)
    }
    fn work_done(&mut self) -> u64 {
        self.inner.work_done()
    }
    fn set_throttle(&mut self, percent: u8) {
        self.inner.set_throttle(percent)
    }
    fn describe(&mut self) -> String {
        self.inner.describe()
    }
    fn position(&mut self) -> HardwarePosition {
        self.inner.position()
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self.inner.as_any()
    }
}

/// Builds VMs as `inner` does, each with an instance taken from `parent`.
#[derive(Debug, Clone)]
pub struct ParentFactory {
    inner: Arc<dyn VmFactory>,
    parent: SharedParent,
}

impl ParentFactory {
    /// VMs of `inner` with instances from `parent`.
    pub fn new(inner: Arc<dyn VmFactory>, parent: SharedParent) -> Self {
        Self { inner, parent }
    }

    /// The parent.
    pub fn parent(&self) -> &SharedParent {
        &self.parent
    }
}

impl VmFactory for ParentFactory {
    fn layout(&self) -> PlatformLayout {
        self.inner.layout()
    }

    fn parts(
        &self,
        device_type: &str,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>> {
        let lease = InstanceLease::take(&self.parent, device_type)?;
        slog::info!(log, "mdev instance created"; "uuid" => %lease.uuid(), "type" => device_type,
            "available_instances" => available_instances(&self.parent, device_type));
        let mut parts = self.inner.parts(device_type, mem, log)?;
        parts.hardware = Box::new(Leased {
            inner: parts.hardware,
            _lease: lease,
        });
        Ok(parts)
    }

    fn shared_memory(&self) -> bool {
        self.inner.shared_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_come_and_go_with_their_leases() {
        let parent: SharedParent = Arc::new(Mutex::new(VgpuParent::default()));
        assert_eq!(available_instances(&parent, "vgpu-512"), 4);
        let leases: Vec<_> = (0..4)
            .map(|_| InstanceLease::take(&parent, "vgpu-512").unwrap())
            .collect();
        assert_eq!(available_instances(&parent, "vgpu-512"), 0);
        assert_eq!(available_instances(&parent, "vgpu-64"), 0);
        let e = InstanceLease::take(&parent, "vgpu-64").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no available instances of mdev type 'vgpu-64'"
        );
        drop(leases);
        assert_eq!(available_instances(&parent, "vgpu-512"), 4);
        assert_eq!(available_instances(&parent, "vgpu-64"), 32);
    }
}
