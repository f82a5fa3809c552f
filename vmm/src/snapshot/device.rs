//! How a snapshot reaches a device's state: through its v1 device-state region when it has
//! one (`pread`/`pwrite` of the header and data window, as QEMU's v1 code did), else
//! through the v2 state machine and its data stream (a device may offer v2 alone: the v1
//! region is deprecated in the uAPI).

use mdev_core::{DataStream, MigState, MigrationDevice};
use snafu::ResultExt;
use state_region::driver as v1;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_STATE_V1_RESUMING, VFIO_DEVICE_STATE_V1_RUNNING, VFIO_DEVICE_STATE_V1_SAVING,
};

use crate::error::*;
use crate::vm::Vm;

/// The path to one device's state, and its open v2 data session.
#[derive(Debug)]
pub struct SnapshotDevice {
    /// The v1 region's index, if the device has one (it is then used).
    region: Option<u32>,
    /// The v2 data session, once a state that has one was entered.
    stream: Option<DataStream>,
}

fn no_v2() -> VmmError {
    VmmError::NoMigration
}

impl SnapshotDevice {
    /// The path `vm`'s device offers: its v1 region, else v2; neither is an error.
    pub fn of(vm: &mut Vm) -> Result<Self> {
        let region = vm
            .device_ref()
            .find_region(state_region::MIGRATION_REGION_TYPE);
        if region.is_none() && vm.device().migration().is_none() {
            return Err(VmmError::NoStateRegion);
        }
        Ok(Self {
            region,
            stream: None,
        })
    }

    /// Whether the v1 region is the path.
    pub fn uses_region(&self) -> bool {
        self.region.is_some()
    }

    fn v2<'a>(&self, vm: &'a mut Vm) -> Result<&'a mut dyn MigrationDevice> {
        vm.device().migration().ok_or_else(no_v2)
    }

    /// Walk to `state` (v1: its `device_state` bits), keeping a data session it opens.
    fn enter(
        &mut self,
        vm: &mut Vm,
        state: MigState,
        v1_bits: u32,
        doing: &'static str,
    ) -> Result<()> {
        match self.region {
            Some(index) => {
                v1::set_device_state(vm.device(), index, v1_bits).context(DeviceSnafu { doing })
            }
            None => {
                let mig = self.v2(vm)?;
                let t = mig.set_mig_state(state).context(MigrationSnafu { doing })?;
                mdev_core::follow_session(&mut self.stream, mig, t.stream);
                Ok(())
            }
        }
    }

    fn stream(&self, doing: &'static str) -> Result<DataStream> {
        self.stream.ok_or(VmmError::Migration {
            doing,
            source: mdev_core::MigrationError::NoStream {
                what: "data",
                state: MigState::Error,
            },
        })
    }

    /// Stop the device and hand all of its state, chunk by chunk, to `sink`; the device is
    /// left in STOP_COPY. Returns the bytes saved.
    pub fn save<E: std::error::Error + 'static>(
        &mut self,
        vm: &mut Vm,
        mut sink: impl FnMut(&[u8]) -> std::result::Result<(), E>,
        sink_err: impl Fn(E) -> VmmError,
    ) -> Result<u64> {
        self.enter(
            vm,
            MigState::StopCopy,
            VFIO_DEVICE_STATE_V1_SAVING,
            "entering stop-and-copy",
        )?;
        if let Some(index) = self.region {
            let pass = v1::save_chunks(vm.device(), index, &mut sink).map_err(|e| match e {
                v1::SaveError::Consumer { source } => sink_err(source),
                v1::SaveError::Region { source } => VmmError::Device {
                    doing: "saving the device state",
                    source,
                },
            })?;
            return Ok(pass.bytes);
        }
        let doing = "saving the device state";
        let stream = self.stream(doing)?;
        let mig = self.v2(vm)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = mig
                .read_data(stream, &mut buf)
                .context(MigrationSnafu { doing })?;
            if n == 0 {
                return Ok(total);
            }
            sink(&buf[..n]).map_err(&sink_err)?;
            total += n as u64;
        }
    }

    /// Open the device for restoring (RESUMING).
    pub fn start_resume(&mut self, vm: &mut Vm) -> Result<()> {
        self.enter(
            vm,
            MigState::Resuming,
            VFIO_DEVICE_STATE_V1_RESUMING,
            "entering resuming",
        )
    }

    /// Hand one chunk of saved state to the resuming device.
    pub fn load_chunk(&mut self, vm: &mut Vm, chunk: &[u8]) -> Result<()> {
        let rejected = |reason: String| VmmError::DeviceRejected { reason };
        if let Some(index) = self.region {
            return v1::resume_chunk(vm.device(), index, chunk)
                .map_err(|e| rejected(e.to_string()));
        }
        let stream = self.stream("loading the device state")?;
        let mig = self.v2(vm)?;
        mdev_core::write_all_data(mig, stream, chunk).map_err(|e| rejected(e.to_string()))
    }

    /// RESUMING -> STOP: the device validates the whole state and commits it.
    pub fn commit(&mut self, vm: &mut Vm) -> Result<()> {
        self.enter(vm, MigState::Stop, 0, "committing the device state")
            .map_err(|e| VmmError::DeviceRejected {
                reason: e.to_string(),
            })
    }

    /// Stop the device (STOP; v1: `device_state` 0), ending any data session: a save
    /// that follows is a whole new one.
    pub fn stop(&mut self, vm: &mut Vm) -> Result<()> {
        self.enter(vm, MigState::Stop, 0, "stopping the device")
    }

    /// Set the device running (after a restore, or a save that is over).
    pub fn run(&mut self, vm: &mut Vm) -> Result<()> {
        self.enter(
            vm,
            MigState::Running,
            VFIO_DEVICE_STATE_V1_RUNNING,
            "setting the device running",
        )
    }
}
