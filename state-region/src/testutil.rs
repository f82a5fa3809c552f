//! Test doubles: a migratable device serving a known byte stream and recording every call,
//! and a VFIO device exposing a [`StateRegion`] over it.

use std::sync::Arc;

use mdev_core::uapi::{
    vfio_device_info, vfio_irq_info, vfio_precopy_info, VFIO_MIGRATION_P2P,
    VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
};
use mdev_core::{
    DataStream, DeviceError, DmaDirtyLog, IrqSink, MigState, MigTransition, MigrationArcs,
    MigrationController, MigrationDevice, MigrationError, RegionInfo, VfioDevice,
};

use crate::region::StateRegion;

/// A call made to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    SetState(MigState),
    Read { asked: usize, got: usize },
    Write(Vec<u8>),
    PrecopyInfo,
    StopCopySize,
}

/// The data side of the double, which the state machine's arcs open and close.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    /// The saving stream.
    pub data: Vec<u8>,
    /// How much of it is available in pre-copy.
    pub precopy_len: usize,
    /// Read position in `data`.
    pub pos: usize,
    /// What was written while resuming.
    pub received: Vec<u8>,
}

impl MigrationArcs for Streams {
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), String> {
        match (from, to) {
            // Opening a saving stream starts it from the beginning.
            (MigState::Running, MigState::PreCopy)
            | (MigState::RunningP2p, MigState::PreCopyP2p)
            | (MigState::Stop, MigState::StopCopy) => self.pos = 0,
            (MigState::Stop, MigState::Resuming) => self.received.clear(),
            _ => {}
        }
        Ok(())
    }
}

/// A migratable device serving `streams.data`.
#[derive(Debug)]
pub(crate) struct FakeMigration {
    pub ctl: MigrationController,
    pub streams: Streams,
    /// Most bytes one `read_data` returns.
    pub max_read: usize,
    /// `write_data` rejects any chunk containing this byte.
    pub poison: Option<u8>,
    pub calls: Vec<Call>,
}

impl FakeMigration {
    /// A device in RUNNING whose stream is `data`, the first `precopy_len` bytes of it
    /// available in pre-copy.
    pub fn new(data: Vec<u8>, precopy_len: usize) -> Self {
        Self {
            ctl: MigrationController::new(
                VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
            ),
            streams: Streams {
                data,
                precopy_len,
                ..Streams::default()
            },
            max_read: usize::MAX,
            poison: None,
            calls: Vec::new(),
        }
    }

    /// Bytes of the stream the device has not handed out yet.
    pub fn remaining(&self) -> usize {
        self.streams.data.len() - self.streams.pos
    }

    /// Forget the recorded calls.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    /// End of the part of the stream readable in the current state.
    pub fn limit(&self) -> usize {
        match self.ctl.state() {
            MigState::StopCopy => self.streams.data.len(),
            _ => self.streams.precopy_len.min(self.streams.data.len()),
        }
    }
}

/// A stream of `len` bytes that never repeats with a short period.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

impl MigrationDevice for FakeMigration {
    fn migration_flags(&self) -> u32 {
        self.ctl.features()
    }

    fn mig_state(&self) -> MigState {
        self.ctl.state()
    }

    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError> {
        self.calls.push(Call::SetState(target));
        self.ctl.set_state(&mut self.streams, target)
    }

    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError> {
        self.ctl.check_stream(stream)?;
        let state = self.ctl.state();
        if !state.is_saving() {
            return Err(MigrationError::NoStream {
                what: "saving",
                state,
            });
        }
        let pos = self.streams.pos;
        let n = buf
            .len()
            .min(self.max_read)
            .min(self.limit().saturating_sub(pos));
        buf[..n].copy_from_slice(&self.streams.data[pos..pos + n]);
        self.streams.pos += n;
        self.calls.push(Call::Read {
            asked: buf.len(),
            got: n,
        });
        Ok(n)
    }

    fn write_data(&mut self, stream: DataStream, buf: &[u8]) -> Result<usize, MigrationError> {
        self.ctl.check_stream(stream)?;
        let state = self.ctl.state();
        if state != MigState::Resuming {
            return Err(MigrationError::NoStream {
                what: "resuming",
                state,
            });
        }
        self.calls.push(Call::Write(buf.to_vec()));
        if let Some(p) = self.poison.filter(|p| buf.contains(p)) {
            return Err(MigrationError::BadData {
                reason: format!("poison byte {p:#x}"),
            });
        }
        self.streams.received.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn close_data(&mut self, stream: DataStream) {
        self.ctl.close_stream(stream);
    }

    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        self.calls.push(Call::PrecopyInfo);
        let state = self.ctl.state();
        if !matches!(state, MigState::PreCopy | MigState::PreCopyP2p) {
            return Err(MigrationError::NoStream {
                what: "pre-copy",
                state,
            });
        }
        Ok(vfio_precopy_info {
            initial_bytes: self.limit().saturating_sub(self.streams.pos) as u64,
            ..Default::default()
        })
    }

    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        self.calls.push(Call::StopCopySize);
        Ok(self.remaining() as u64)
    }
}

/// A VFIO device with one region, the v1 migration region, at `index`.
#[derive(Debug)]
pub(crate) struct TestVfio {
    pub index: u32,
    pub region: StateRegion,
    pub dev: FakeMigration,
}

impl TestVfio {
    pub fn new(index: u32, window: usize, dev: FakeMigration) -> Self {
        Self {
            index,
            region: StateRegion::new(window).with_index(index),
            dev,
        }
    }

    fn check(&self, index: u32) -> Result<(), DeviceError> {
        if index == self.index {
            Ok(())
        } else {
            Err(DeviceError::NoSuchRegion { index })
        }
    }
}

impl VfioDevice for TestVfio {
    fn device_info(&self) -> vfio_device_info {
        vfio_device_info {
            num_regions: self.index + 1,
            ..Default::default()
        }
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        self.check(index)?;
        Ok(self.region.region_info(index))
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.check(index)?;
        self.region.read(&mut self.dev, offset, data)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check(index)?;
        self.region.write(&mut self.dev, offset, data)
    }

    fn irq_info(&self, index: u32) -> Result<vfio_irq_info, DeviceError> {
        Err(DeviceError::NoSuchIrq { index })
    }

    fn set_irqs(
        &mut self,
        index: u32,
        _start: u32,
        _count: u32,
        _sink: Option<Arc<dyn IrqSink>>,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::NoSuchIrq { index })
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.dev.ctl.reset();
        Ok(())
    }

    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        Some(&mut self.dev)
    }

    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        None
    }
}
