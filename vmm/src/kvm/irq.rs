//! Interrupts into the guest: MSIs written straight to the in-kernel LAPIC
//! (`KVM_SIGNAL_MSI`), and MSI routes with irqfds for devices that signal by eventfd.
//!
//! An MSI address `0xfee0_0000 | dest << 12` with data = vector (edge, fixed) reaches LAPIC
//! `dest`'s vector, as on hardware. Routes live in GSIs the caller picks; use 24 and up so
//! they do not shadow the irqchip pins (setting any route replaces KVM's default table,
//! which this backend does not use: no IOAPIC or PIC device is modelled).

use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqfd, kvm_msi, KvmIrqRouting, KVM_IRQFD_FLAG_DEASSIGN,
    KVM_IRQ_ROUTING_MSI,
};
use snafu::ResultExt;

use super::error::{IoctlSnafu, KvmError, Result};
use super::KvmMachine;

/// `KVM_IRQFD`: `_IOW(KVMIO, 0x76, struct kvm_irqfd)`.
const KVM_IRQFD: libc::c_ulong = 0x4020_ae76;
const _: () = assert!(std::mem::size_of::<kvm_irqfd>() == 0x20);

impl KvmMachine {
    /// Deliver an MSI now (`KVM_SIGNAL_MSI`); callable from any thread while the vCPU runs
    /// (it wakes a halted vCPU). `Ok(false)` when the guest blocked it (e.g. LAPIC
    /// software-disabled).
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<bool> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        let n = self.vm.signal_msi(msi).context(IoctlSnafu {
            what: "KVM_SIGNAL_MSI",
        })?;
        Ok(n > 0)
    }

    /// Route `gsi` to the MSI `address`/`data` (replacing its previous route), so that an
    /// irqfd on `gsi` injects that MSI.
    pub fn set_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.insert(gsi, (address, data));
        self.apply_routes(&routes)
    }

    /// Set the routes of every GSI in `gsis` at once (one `KVM_SET_GSI_ROUTING`): `Some`
    /// routes it to that MSI address/data, `None` removes its route (an irqfd on a GSI
    /// without a route injects nothing). Routes of other GSIs are kept.
    pub fn set_msi_routes(&self, gsis: &[(u32, Option<(u64, u32)>)]) -> Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for &(gsi, route) in gsis {
            match route {
                Some(r) => routes.insert(gsi, r),
                None => routes.remove(&gsi),
            };
        }
        self.apply_routes(&routes)
    }

    /// Remove the route of `gsi`.
    pub fn remove_msi_route(&self, gsi: u32) -> Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.remove(&gsi);
        self.apply_routes(&routes)
    }

    fn apply_routes(&self, routes: &std::collections::BTreeMap<u32, (u64, u32)>) -> Result<()> {
        let mut table = KvmIrqRouting::new(routes.len()).map_err(|_| KvmError::Ioctl {
            what: "KVM_SET_GSI_ROUTING (table too large)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        for (e, (&gsi, &(address, data))) in table.as_mut_slice().iter_mut().zip(routes) {
            let mut entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = address as u32;
            entry.u.msi.address_hi = (address >> 32) as u32;
            entry.u.msi.data = data;
            *e = entry;
        }
        self.vm.set_gsi_routing(&table).context(IoctlSnafu {
            what: "KVM_SET_GSI_ROUTING",
        })
    }

    /// Make a write to the eventfd `fd` inject `gsi`'s route (`KVM_IRQFD`), without the
    /// VMM in the path.
    pub fn register_irqfd(&self, fd: &impl AsRawFd, gsi: u32) -> Result<()> {
        self.irqfd(fd.as_raw_fd(), gsi, 0, "KVM_IRQFD (assign)")
    }

    /// Undo [`register_irqfd`](Self::register_irqfd).
    pub fn unregister_irqfd(&self, fd: &impl AsRawFd, gsi: u32) -> Result<()> {
        self.irqfd(
            fd.as_raw_fd(),
            gsi,
            KVM_IRQFD_FLAG_DEASSIGN,
            "KVM_IRQFD (deassign)",
        )
    }

    fn irqfd(&self, fd: RawFd, gsi: u32, flags: u32, what: &'static str) -> Result<()> {
        let req = kvm_irqfd {
            fd: fd as u32,
            gsi,
            flags,
            ..Default::default()
        };
        // SAFETY: KVM_IRQFD on a VM fd with a fully initialised `kvm_irqfd` that outlives the
        // call; the kernel only reads it and takes its own reference to the eventfd.
        let rc = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_IRQFD as _, &req) };
        if rc < 0 {
            return Err(KvmError::Ioctl {
                what,
                source: kvm_ioctls::Error::last(),
            });
        }
        Ok(())
    }
}
