//! The KVM vCPU thread's exits: MMIO through the same bus as the simulated vCPU's
//! accesses, the guest image's status port, and the irqfd routes kept in step with the
//! guest's MSI programming.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use slog::Logger;

use super::irqfd::Irqfds;
use super::SharedDevice;
use crate::bus::VmBus;
use crate::kvm::{ExitAction, ExitHandler};
use crate::memory::GuestMem;
use crate::pci::PciFace;
use crate::platform::{GuestBus, GuestImage, GuestSignal};
use crate::ratelimit::RateLimit;

/// What the vCPU thread needs for its exits.
pub(super) struct Exits {
    pub(super) dev: SharedDevice,
    pub(super) face: Arc<Mutex<PciFace>>,
    pub(super) mem: GuestMem,
    pub(super) ecam_gpa: u64,
    pub(super) image: Arc<dyn GuestImage>,
    pub(super) signal: Arc<Mutex<Option<GuestSignal>>>,
    pub(super) mmio_exits: Arc<AtomicU64>,
    pub(super) irqfds: Arc<Irqfds>,
    pub(super) warn_limit: RateLimit,
    pub(super) log: Logger,
}

impl Exits {
    /// After a write that may have reprogrammed an MSI or MSI-X vector: the irqfds' routes
    /// follow before the guest's next access (a doorbell) can make the device signal.
    fn sync_routes(&mut self) {
        if let Err(e) = self.irqfds.sync_routes() {
            if self.warn_limit.allow() {
                slog::warn!(self.log, "cannot route the device's interrupts"; "error" => %e);
            }
        }
    }

    fn bus(&mut self) -> VmBus<'_> {
        self.mmio_exits.fetch_add(1, Ordering::Relaxed);
        VmBus {
            mem: &self.mem,
            dev: &mut self.dev,
            face: &self.face,
            ecam_gpa: self.ecam_gpa,
            log: &self.log,
            warn_limit: &mut self.warn_limit,
        }
    }
}

impl ExitHandler for Exits {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        self.bus().read(gpa, data);
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        self.bus().write(gpa, data);
        self.sync_routes();
    }

    fn io_out(&mut self, port: u16, data: &[u8]) -> ExitAction {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        match self.image.port_write(port, u32::from_le_bytes(v)) {
            GuestSignal::Ignore => ExitAction::Continue,
            s => {
                *self.signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                ExitAction::Pause
            }
        }
    }

    fn io_in(&mut self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
}
