//! The two ways the VMM drives the device's state: the v1 device-state region (reads and
//! writes of its header and data window only) or the v2 state machine with its data stream.

use mdev_core::{DataStream, MigState};
use state_region::driver as v1;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_STATE_MASK, VFIO_DEVICE_STATE_V1_RESUMING, VFIO_DEVICE_STATE_V1_RUNNING,
    VFIO_DEVICE_STATE_V1_SAVING, VFIO_MIGRATION_PRE_COPY,
};

use super::error::{MigrationError, Result};
use crate::vm::Vm;

/// Which protocol drives the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The v1 device-state region (`VFIO_REGION_TYPE_MIGRATION_DEPRECATED`).
    Region,
    /// The v2 state machine and data stream.
    V2,
}

impl Protocol {
    /// Name on the command line and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Region => "region",
            Protocol::V2 => "v2",
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "region" => Some(Protocol::Region),
            "v2" => Some(Protocol::V2),
            _ => None,
        }
    }
}

/// How the source's device came back after a failed migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// It walked back to RUNNING with its context intact.
    Resumed,
    /// It was in ERROR and was reset (config space replayed; device context at power-on).
    Reset,
}

/// The device end of a migration, over either protocol.
#[derive(Debug)]
pub struct DeviceIo {
    protocol: Protocol,
    /// The v1 device-state region (only the region protocol needs one).
    region: Option<u32>,
    /// The device moves data while running (v1 always may; v2 with `VFIO_MIGRATION_PRE_COPY`).
    /// Without it the source stays RUNNING through pre-copy and all device data moves in
    /// stop-copy, as for a device whose driver offers STOP_COPY alone.
    precopy: bool,
    /// The v2 data session the device handed back (the kernel's data_fd), closed when the
    /// session's part of the migration is over.
    stream: Option<DataStream>,
    buf: Vec<u8>,
}

fn dev_err(doing: &'static str) -> impl Fn(String) -> MigrationError {
    move |reason| MigrationError::Device { doing, reason }
}

impl DeviceIo {
    /// Find what the protocol needs on `vm`'s device.
    pub fn new(vm: &mut Vm, protocol: Protocol) -> Result<Self> {
        let (region, precopy) = match protocol {
            Protocol::Region => (Some(crate::snapshot::state_region_index(vm)?), true),
            Protocol::V2 => {
                let flags = vm
                    .device()
                    .migration()
                    .ok_or_else(|| MigrationError::Device {
                        doing: "opening the v2 interface",
                        reason: "the device does not support v2 migration".into(),
                    })?
                    .migration_flags();
                (None, flags & VFIO_MIGRATION_PRE_COPY != 0)
            }
        };
        Ok(Self {
            protocol,
            region,
            precopy,
            stream: None,
            buf: vec![0u8; 1 << 20],
        })
    }

    /// Whether the device sends data during pre-copy (see the field).
    pub fn has_precopy(&self) -> bool {
        self.precopy
    }

    /// The v1 region's index (the region protocol found it in [`Self::new`]).
    fn region(&self) -> Result<u32> {
        self.region.ok_or(MigrationError::Vmm {
            source: crate::VmmError::NoStateRegion,
        })
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn v1_state(&self, vm: &mut Vm, bits: u32, doing: &'static str) -> Result<()> {
        v1::set_device_state(vm.device(), self.region()?, bits)
            .map_err(|e| dev_err(doing)(e.to_string()))
    }

    fn v2_state(&mut self, vm: &mut Vm, s: MigState, doing: &'static str) -> Result<()> {
        let mig = vm
            .device()
            .migration()
            .ok_or_else(|| dev_err(doing)("no v2 interface".into()))?;
        let t = mig
            .set_mig_state(s)
            .map_err(|e| dev_err(doing)(e.to_string()));
        Self::follow_stream(
            &mut self.stream,
            mig,
            t.as_ref().ok().and_then(|t| t.stream),
        );
        t.map(|_| ())
    }

    /// Keep the data session a walk opened; close ours once the state has no session (as
    /// QEMU closes the data_fd when it leaves the saving or resuming states).
    fn follow_stream(
        held: &mut Option<DataStream>,
        mig: &mut dyn mdev_core::MigrationDevice,
        opened: Option<DataStream>,
    ) {
        mdev_core::follow_session(held, mig, opened);
    }

    /// The open v2 data session.
    fn data_stream(&self, doing: &'static str) -> Result<DataStream> {
        self.stream
            .ok_or_else(|| dev_err(doing)("the device handed back no data stream".into()))
    }

    /// Source: start pre-copy (v1 RUNNING|SAVING, v2 PRE_COPY).
    pub fn start_precopy(&mut self, vm: &mut Vm) -> Result<()> {
        if !self.precopy {
            return Ok(());
        }
        match self.protocol {
            Protocol::Region => self.v1_state(
                vm,
                VFIO_DEVICE_STATE_V1_RUNNING | VFIO_DEVICE_STATE_V1_SAVING,
                "entering pre-copy",
            ),
            Protocol::V2 => self.v2_state(vm, MigState::PreCopy, "entering pre-copy"),
        }
    }

    /// Source: bytes the device has for now (pre-copy) or still (stop-copy).
    pub fn pending(&mut self, vm: &mut Vm, stop_copy: bool) -> Result<u64> {
        if !stop_copy && !self.precopy {
            return Ok(0);
        }
        match self.protocol {
            Protocol::Region => v1::read_pending(vm.device(), self.region()?)
                .map_err(|e| dev_err("reading pending_bytes")(e.to_string())),
            Protocol::V2 => {
                let mig = vm
                    .device()
                    .migration()
                    .ok_or_else(|| dev_err("querying")("no v2 interface".into()))?;
                if stop_copy {
                    mig.stop_copy_size()
                        .map_err(|e| dev_err("querying the data size")(e.to_string()))
                } else {
                    mig.precopy_info()
                        .map(|i| i.initial_bytes + i.dirty_bytes)
                        .map_err(|e| dev_err("querying pre-copy info")(e.to_string()))
                }
            }
        }
    }

    /// Source: the device's estimate of its stop-copy length (v2 only; v1 has no query).
    pub fn stop_copy_estimate(&mut self, vm: &mut Vm) -> Option<u64> {
        match self.protocol {
            Protocol::Region => None,
            Protocol::V2 => vm.device().migration()?.stop_copy_size().ok(),
        }
    }

    /// Source: hand the next chunk of device data straight to `sink` (no copy of its own);
    /// the chunk's length, or `None` when the device has nothing more (for now in pre-copy;
    /// at all in stop-copy).
    pub fn next_chunk_to(
        &mut self,
        vm: &mut Vm,
        sink: &mut dyn FnMut(&[u8]) -> std::result::Result<(), crate::stream::StreamError>,
    ) -> Result<Option<u64>> {
        match self.protocol {
            Protocol::Region => {
                let region = self.region()?;
                let pass =
                    v1::save_chunks_limited(vm.device(), region, 1, |c| sink(c)).map_err(|e| {
                        match e {
                            v1::SaveError::Consumer { source } => MigrationError::Stream { source },
                            v1::SaveError::Region { source } => {
                                dev_err("reading device data")(source.to_string())
                            }
                        }
                    })?;
                Ok((pass.bytes > 0).then_some(pass.bytes))
            }
            Protocol::V2 => {
                let mig = vm
                    .device()
                    .migration()
                    .ok_or_else(|| dev_err("reading device data")("no v2 interface".into()))?;
                // A device without PRE_COPY has no data stream while it runs.
                if !self.precopy && mig.mig_state().is_running() {
                    return Ok(None);
                }
                let stream = self.data_stream("reading device data")?;
                // ENOMSG in pre-copy is "nothing for now", as QEMU's vfio_save_block takes it;
                // 0 is the end of the stream (in stop-copy).
                let n = match mig.read_data(stream, &mut self.buf) {
                    Err(mdev_core::MigrationError::NoDataNow { .. }) => return Ok(None),
                    r => r.map_err(|e| dev_err("reading device data")(e.to_string()))?,
                };
                if n == 0 {
                    return Ok(None);
                }
                sink(&self.buf[..n]).map_err(|source| MigrationError::Stream { source })?;
                Ok(Some(n as u64))
            }
        }
    }

    /// Source: stop the device for the final copy (v1 SAVING, v2 STOP_COPY).
    pub fn stop_copy(&mut self, vm: &mut Vm) -> Result<()> {
        match self.protocol {
            Protocol::Region => {
                self.v1_state(vm, VFIO_DEVICE_STATE_V1_SAVING, "entering stop-and-copy")
            }
            Protocol::V2 => self.v2_state(vm, MigState::StopCopy, "entering stop-and-copy"),
        }
    }

    /// Source after a failure, or target at the end: the device runs again.
    pub fn run(&mut self, vm: &mut Vm) -> Result<()> {
        match self.protocol {
            Protocol::Region => {
                self.v1_state(vm, VFIO_DEVICE_STATE_V1_RUNNING, "resuming the device")
            }
            Protocol::V2 => self.v2_state(vm, MigState::Running, "resuming the device"),
        }
    }

    /// Source after a failed migration: bring the device back to running, as QEMU does.
    /// Walk back to RUNNING; if that fails, read the state, and if it is ERROR (a failed
    /// arc leaves it, vfio.h) reset the device through the reset path with its config space
    /// replayed ([`Vm::reset_device`], QEMU's fallback to `VFIO_DEVICE_RESET`). A device
    /// that keeps its last state on failure (mtty) walks back from where it stopped.
    pub fn recover(&mut self, vm: &mut Vm) -> Result<Recovery> {
        let first = match self.run(vm) {
            Ok(()) => return Ok(Recovery::Resumed),
            Err(e) => e,
        };
        let in_error = match self.protocol {
            Protocol::Region => v1::read_device_state(vm.device(), self.region()?)
                .map(|v1| {
                    v1 & VFIO_DEVICE_STATE_MASK
                        == VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RESUMING
                })
                .unwrap_or(true),
            Protocol::V2 => vm
                .device()
                .migration()
                .is_none_or(|m| m.mig_state() == MigState::Error),
        };
        if !in_error {
            return Err(first);
        }
        // ERROR: the data session is gone with it.
        self.stream = None;
        vm.reset_device()
            .map_err(|source| MigrationError::Vmm { source })?;
        Ok(Recovery::Reset)
    }

    /// Target: open the resume stream (v1 RESUMING, v2 RESUMING).
    pub fn start_resume(&mut self, vm: &mut Vm) -> Result<()> {
        match self.protocol {
            Protocol::Region => {
                self.v1_state(vm, VFIO_DEVICE_STATE_V1_RESUMING, "entering resuming")
            }
            Protocol::V2 => self.v2_state(vm, MigState::Resuming, "entering resuming"),
        }
    }

    /// Target: hand one chunk to the device.
    pub fn write_chunk(&self, vm: &mut Vm, chunk: &[u8]) -> Result<()> {
        match self.protocol {
            Protocol::Region => v1::resume_chunk(vm.device(), self.region()?, chunk)
                .map_err(|e| dev_err("loading device data")(e.to_string())),
            Protocol::V2 => {
                let stream = self.data_stream("loading device data")?;
                let mig = vm
                    .device()
                    .migration()
                    .ok_or_else(|| dev_err("loading device data")("no v2 interface".into()))?;
                mdev_core::write_all_data(mig, stream, chunk)
                    .map_err(|e| dev_err("loading device data")(e.to_string()))
            }
        }
    }

    /// Target: the stream is complete; the device validates and commits (-> STOP).
    pub fn commit(&mut self, vm: &mut Vm) -> Result<()> {
        match self.protocol {
            Protocol::Region => v1::set_device_state(vm.device(), self.region()?, 0).map_err(|e| {
                MigrationError::Rejected {
                    reason: e.to_string(),
                }
            }),
            Protocol::V2 => {
                let mig = vm
                    .device()
                    .migration()
                    .ok_or_else(|| dev_err("committing")("no v2 interface".into()))?;
                let t = mig.set_mig_state(MigState::Stop);
                Self::follow_stream(&mut self.stream, mig, None);
                t.map(|_| ()).map_err(|e| MigrationError::Rejected {
                    reason: e.to_string(),
                })
            }
        }
    }
}
