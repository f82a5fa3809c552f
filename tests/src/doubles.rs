//! Devices that behave as the reference drivers do, for proving the VMM against behaviours
//! other than our own vGPU's.
//!
//! [`ReferenceDriver`] wraps a real device (a vGPU from [`DoubleFactory`]) and changes only
//! what the driver it models does differently:
//!
//! - [`OnFailure::Error`]: a failed arc leaves ERROR, out of which only a reset leads (the
//!   rule of include/uapi/linux/vfio.h, which mlx5 and most variant drivers follow);
//! - [`OnFailure::KeepLast`]: a failed arc keeps the last state reached, as
//!   samples/vfio-mdev/mtty.c's `mtty_set_state` does;
//! - over the v1 region, a write of `device_state` whose state is `fail_into` fails the same
//!   way, and `device_state` reads 110 (the v1 ERROR) until a reset;
//! - `enomsg_every`: reads of the data stream in PRE_COPY fail with `ENOMSG` although data
//!   is there, as mlx5 does when its next chunk is not staged yet (more comes later).
//!
//! Everything else goes to the wrapped device unchanged.

use std::fmt;
use std::sync::{Arc, Mutex};

use mdev_core::uapi::{
    vfio_device_info, vfio_irq_info, vfio_precopy_info, VFIO_DEVICE_STATE_MASK,
    VFIO_DEVICE_STATE_V1_RESUMING, VFIO_DEVICE_STATE_V1_SAVING,
};
use mdev_core::{
    DataStream, DeviceError, DmaDirtyLog, IrqSink, MigState, MigTransition, MigrationDevice,
    MigrationError, RegionInfo, VfioDevice,
};
use slog::Logger;
use vmm::memory::GuestMem;
use vmm::platform::{MachineParts, PlatformLayout, VmFactory};

/// What a failed arc leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// ERROR (vfio.h; mlx5): only a reset leads out.
    Error,
    /// The last state reached (mtty).
    KeepLast,
}

/// How a [`ReferenceDriver`] departs from the wrapped device.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// The arc into this state fails (once: the first time it is walked).
    pub fail_into: Option<MigState>,
    /// What the failure leaves.
    pub on_failure: OnFailure,
    /// Every n-th PRE_COPY read fails with `ENOMSG` before reaching the device.
    pub enomsg_every: Option<u32>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            fail_into: None,
            on_failure: OnFailure::Error,
            enomsg_every: None,
        }
    }
}

/// What the double did, for assertions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Record {
    /// Arcs failed on purpose.
    pub failed_arcs: u32,
    /// Spurious `ENOMSG` answers given.
    pub spurious_enomsg: u32,
    /// Resets asked for.
    pub resets: u32,
}

/// A device that behaves as a reference driver does (see the module docs).
pub struct ReferenceDriver {
    /// Behind a lock only so that `&self` queries (state, flags) can reach the device's
    /// v2 interface, which the contract lends out through `&mut`.
    inner: Mutex<Box<dyn VfioDevice>>,
    behaviour: Behaviour,
    /// In ERROR after an injected failure (until reset).
    in_error: bool,
    reads: u32,
    record: Arc<Mutex<Record>>,
}

impl fmt::Debug for ReferenceDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReferenceDriver")
            .field("behaviour", &self.behaviour)
            .field("in_error", &self.in_error)
            .finish_non_exhaustive()
    }
}

impl ReferenceDriver {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dev(&mut self) -> &mut dyn VfioDevice {
        self.inner
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
    }

    fn mig(&mut self) -> Result<&mut dyn MigrationDevice, MigrationError> {
        self.dev().migration().ok_or(MigrationError::BadData {
            reason: "the wrapped device has no v2 interface".into(),
        })
    }
}

impl VfioDevice for ReferenceDriver {
    fn device_info(&self) -> vfio_device_info {
        self.locked().device_info()
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        self.locked().region_info(index)
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        if self.is_v1_device_state(index, offset, data.len()) && self.in_error {
            // The v1 encoding of ERROR: SAVING | RESUMING.
            let v1 = VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RESUMING;
            data.copy_from_slice(&v1.to_ne_bytes());
            return Ok(());
        }
        self.dev().region_read(index, offset, data)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.is_v1_device_state(index, offset, data.len()) {
            let v1 = u32::from_ne_bytes(data.try_into().unwrap_or_default());
            let target = mdev_core::v1_to_v2(v1 & VFIO_DEVICE_STATE_MASK);
            if self.in_error || (target.is_some() && target == self.behaviour.fail_into) {
                let from = self.mig_state();
                let to = target.unwrap_or(MigState::Error);
                if let Err(e) = self.set_mig_state(to) {
                    return Err(DeviceError::InvalidState {
                        what: format!("device_state {v1:#05b} ({from} -> {to}) failed: {e}"),
                    });
                }
            }
        }
        self.dev().region_write(index, offset, data)
    }
    fn irq_info(&self, index: u32) -> Result<vfio_irq_info, DeviceError> {
        self.locked().irq_info(index)
    }
    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> Result<(), DeviceError> {
        self.dev().set_irqs(index, start, count, sink)
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        self.in_error = false;
        self.record().resets += 1;
        self.dev().reset()
    }
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        Some(self)
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        self.dev().dma_dirty_log()
    }
}

impl MigrationDevice for ReferenceDriver {
    fn migration_flags(&self) -> u32 {
        // `migration()` needs `&mut`; the flags do not change, so ask through a shared view.
        self.behaviour_flags()
    }

    fn mig_state(&self) -> MigState {
        if self.in_error {
            return MigState::Error;
        }
        self.inner_state()
    }

    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError> {
        let from = self.mig_state();
        if self.in_error {
            // vfio.h: from ERROR, only a reset leads out.
            return Err(MigrationError::InvalidTransition { from, to: target });
        }
        if self.behaviour.fail_into == Some(target) {
            self.behaviour.fail_into = None;
            self.record().failed_arcs += 1;
            let err = MigrationError::ArcFailed {
                from,
                to: target,
                reason: "injected by the reference-driver double".into(),
            };
            if self.behaviour.on_failure == OnFailure::Error {
                self.in_error = true;
            }
            return Err(err);
        }
        self.mig()?.set_mig_state(target)
    }

    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let state = self.mig_state();
        if self.in_error {
            return Err(MigrationError::StaleStream {
                stream: stream.id(),
            });
        }
        if let (Some(n), MigState::PreCopy | MigState::PreCopyP2p) =
            (self.behaviour.enomsg_every, state)
        {
            self.reads += 1;
            if self.reads % n.max(1) == 0 {
                self.record().spurious_enomsg += 1;
                return Err(MigrationError::NoDataNow { state });
            }
        }
        self.mig()?.read_data(stream, buf)
    }

    fn write_data(&mut self, stream: DataStream, buf: &[u8]) -> Result<usize, MigrationError> {
        if self.in_error {
            return Err(MigrationError::StaleStream {
                stream: stream.id(),
            });
        }
        self.mig()?.write_data(stream, buf)
    }

    fn close_data(&mut self, stream: DataStream) {
        if let Some(m) = self.dev().migration() {
            m.close_data(stream);
        }
    }

    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        self.mig()?.precopy_info()
    }

    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        self.mig()?.stop_copy_size()
    }
}

impl ReferenceDriver {
    /// A whole access to `device_state` of the device's v1 region (offset 0 of the region
    /// with the migration type capability).
    fn is_v1_device_state(&self, index: u32, offset: u64, len: usize) -> bool {
        offset == 0
            && len == 4
            && self
                .locked()
                .find_region(state_region::MIGRATION_REGION_TYPE)
                == Some(index)
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Box<dyn VfioDevice>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn behaviour_flags(&self) -> u32 {
        self.locked().migration().map_or(0, |m| m.migration_flags())
    }

    fn inner_state(&self) -> MigState {
        self.locked()
            .migration()
            .map_or(MigState::Error, |m| m.mig_state())
    }
}

/// Builds vGPU VMs whose device is wrapped in a [`ReferenceDriver`]. Clones share one
/// [`Record`].
#[derive(Debug, Clone)]
pub struct DoubleFactory {
    inner: Arc<dyn VmFactory>,
    behaviour: Behaviour,
    record: Arc<Mutex<Record>>,
}

impl DoubleFactory {
    /// Wrap the devices `inner` builds.
    pub fn new(inner: Arc<dyn VmFactory>, behaviour: Behaviour) -> Self {
        Self {
            inner,
            behaviour,
            record: Arc::default(),
        }
    }

    /// What the devices built so far did.
    pub fn record(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl VmFactory for DoubleFactory {
    fn layout(&self) -> PlatformLayout {
        self.inner.layout()
    }

    fn parts(
        &self,
        device_type: &str,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>> {
        let mut parts = self.inner.parts(device_type, mem, log)?;
        parts.device = Box::new(ReferenceDriver {
            inner: Mutex::new(parts.device),
            behaviour: self.behaviour,
            in_error: false,
            reads: 0,
            record: self.record.clone(),
        });
        Ok(parts)
    }
}
