//! The device's interrupts on a KVM guest: one eventfd per vector, each an irqfd on a GSI
//! whose route is the MSI the guest programmed for that vector, so that a signal reaches the
//! guest's local APIC without the VMM in the path (QEMU's and Cloud Hypervisor's
//! `VFIO_DEVICE_SET_IRQS` + `KVM_IRQFD` wiring).
//!
//! * An in-process device calls the sink ([`IrqfdSink::signal`]), which writes the eventfd.
//! * A device in another process (vfio-user) is handed the eventfds themselves
//!   ([`mdev_core::IrqSink::eventfd`]); its writes go straight to KVM.
//!
//! The routes follow the guest: [`Irqfds::sync_routes`] recomputes them from the VMM's PCI
//! face (the MSI-X table and MSI capability as the guest programmed them) under one lock,
//! so two threads that both saw a change cannot apply them out of order. The vCPU thread
//! calls it after every MMIO or config write, before the device can see a doorbell that
//! follows. Masking is the device's business (it holds a masked vector's signal as pending
//! and sends it at unmask), so a masked vector keeps its route.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use mdev_core::IrqSink;
use pci_config_replay::InterruptRoute;
use vfio_bindings::bindings::vfio::{VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX};

use mdev_core::VfioDevice;
use slog::info;

use super::SharedDevice;
use crate::bus::lock_face;
use crate::error::{Result, VmmError};
use crate::irq::msi_vector;
use crate::kvm::KvmMachine;
use crate::pci::PciFace;

/// The first GSI the VMM routes (below are the irqchip pins, which this backend leaves
/// alone).
pub const IRQFD_GSI_BASE: u32 = 24;

/// A GSI and the MSI (address, data) it injects, if any.
type GsiRoute = (u32, Option<(u64, u32)>);

/// One wired vector.
#[derive(Debug)]
struct Wire {
    index: u32,
    vector: u32,
    gsi: u32,
    fd: OwnedFd,
}

/// The eventfds of a device's vectors, as its interrupt sink.
#[derive(Debug)]
pub struct IrqfdSink {
    wires: Vec<Wire>,
    signals: AtomicU64,
}

impl IrqfdSink {
    fn wire(&self, index: u32, vector: u32) -> Option<&Wire> {
        self.wires
            .iter()
            .find(|w| w.index == index && w.vector == vector)
    }

    /// Signals written by an in-process device (a device process writes the eventfds
    /// itself and is not counted).
    pub fn signals(&self) -> u64 {
        self.signals.load(Ordering::Relaxed)
    }
}

impl IrqSink for IrqfdSink {
    fn signal(&self, index: u32, vector: u32) {
        if let Some(w) = self.wire(index, vector) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write from a live buffer to an eventfd this sink owns; a
            // full counter (EAGAIN) only means the guest has not taken the earlier ones.
            unsafe { libc::write(w.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
            self.signals.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn eventfd(&self, index: u32, vector: u32) -> Option<RawFd> {
        self.wire(index, vector).map(|w| w.fd.as_raw_fd())
    }
}

/// A device's vectors wired to a KVM machine.
#[derive(Debug)]
pub(super) struct Irqfds {
    sink: Arc<IrqfdSink>,
    /// The machine, once it is shared (set right after the vCPU thread starts).
    machine: OnceLock<Arc<KvmMachine>>,
    face: Arc<Mutex<PciFace>>,
    sink_base: u32,
    /// The face's routes generation last applied; the lock orders concurrent syncs.
    applied: Mutex<Option<u64>>,
}

impl Irqfds {
    /// An eventfd per vector of MSI (`msi` vectors) and MSI-X (`msix`), each an irqfd on its
    /// own GSI of `machine`.
    pub(super) fn wire(
        machine: &KvmMachine,
        face: Arc<Mutex<PciFace>>,
        sink_base: u32,
        msi: u32,
        msix: u32,
    ) -> Result<Self> {
        let mut wires = Vec::new();
        let vectors = (0..msix)
            .map(|v| (VFIO_PCI_MSIX_IRQ_INDEX, v))
            .chain((0..msi).map(|v| (VFIO_PCI_MSI_IRQ_INDEX, v)));
        for (n, (index, vector)) in vectors.enumerate() {
            let fd = eventfd()?;
            let gsi = IRQFD_GSI_BASE + n as u32;
            machine
                .register_irqfd(&fd, gsi)
                .map_err(|source| VmmError::Kvm { source })?;
            wires.push(Wire {
                index,
                vector,
                gsi,
                fd,
            });
        }
        Ok(Self {
            sink: Arc::new(IrqfdSink {
                wires,
                signals: AtomicU64::new(0),
            }),
            machine: OnceLock::new(),
            face,
            sink_base,
            applied: Mutex::new(None),
        })
    }

    /// Wire the device's MSI and MSI-X vectors as irqfds of `machine` and hand the device
    /// their eventfds (`set_irqs`), as a VMM does before the guest's first instruction.
    pub(super) fn wire_device(
        machine: &KvmMachine,
        dev: &mut SharedDevice,
        face: &Arc<Mutex<PciFace>>,
        cfg: &super::VmConfig,
    ) -> Result<Self> {
        use vfio_bindings::bindings::vfio::{VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX};
        let count = |dev: &mut SharedDevice, index| dev.irq_info(index).map_or(0, |i| i.count);
        let (msi, msix) = (
            count(dev, VFIO_PCI_MSI_IRQ_INDEX),
            count(dev, VFIO_PCI_MSIX_IRQ_INDEX),
        );
        let irqfds = Self::wire(machine, face.clone(), cfg.irq_sink_base, msi, msix)?;
        for (index, n) in [
            (VFIO_PCI_MSI_IRQ_INDEX, msi),
            (VFIO_PCI_MSIX_IRQ_INDEX, msix),
        ] {
            if n > 0 {
                let sink: Arc<dyn mdev_core::IrqSink> = irqfds.sink();
                dev.set_irqs(index, 0, n, Some(sink))
                    .map_err(|source| VmmError::Device {
                        doing: "wiring interrupts to irqfds",
                        source,
                    })?;
            }
        }
        info!(cfg.log, "the device's interrupts go to KVM by irqfd"; "msi" => msi, "msix" => msix);
        Ok(irqfds)
    }

    /// The sink to hand the device (`set_irqs`).
    pub(super) fn sink(&self) -> Arc<IrqfdSink> {
        self.sink.clone()
    }

    /// The machine is shared now: routes can be applied from any thread.
    pub(super) fn attach(&self, machine: Arc<KvmMachine>) -> Result<()> {
        let _ = self.machine.set(machine);
        self.sync_routes()
    }

    /// Make every wired GSI route to what the guest programmed for its vector now (no
    /// route for a vector without one, or whose message is not for a local APIC).
    pub(super) fn sync_routes(&self) -> Result<()> {
        let Some(machine) = self.machine.get() else {
            return Ok(());
        };
        // Called after every MMIO write of the guest: when the routes did not change
        // this costs two uncontended locks and a compare.
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, want) = {
            let face = lock_face(&self.face);
            let g = face.routes_generation();
            if *applied == Some(g) {
                return Ok(());
            }
            (g, self.routes_for(face.routes()))
        };
        machine
            .set_msi_routes(&want)
            .map_err(|source| VmmError::Kvm { source })?;
        *applied = Some(generation);
        Ok(())
    }

    fn routes_for(&self, routes: &[InterruptRoute]) -> Vec<GsiRoute> {
        self.sink
            .wires
            .iter()
            .map(|w| {
                let route = routes
                    .iter()
                    .find(|r| {
                        r.kind.vfio_irq_index() == w.index
                            && u32::from(r.vector) == w.vector
                            && r.sink == self.sink_base + w.vector
                    })
                    .filter(|r| msi_vector(r.address, r.data).is_some())
                    .map(|r| (r.address, r.data));
                (w.gsi, route)
            })
            .collect()
    }
}

/// A new non-blocking eventfd.
fn eventfd() -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
    // nothing else owns, so `OwnedFd` may take it.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmmError::Kvm {
            source: crate::kvm::KvmError::Ioctl {
                what: "eventfd (an irqfd for the device)",
                source: kvm_ioctls::Error::last(),
            },
        });
    }
    // SAFETY: `fd` was just created above and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
