//! Live migration: the v2 state machine's arcs and the device's data stream.
//!
//! PRE_COPY is offered (the VMM's source always enters it) but has nothing to pre-copy:
//! the whole state is a few KiB, so the pre-copy stream reads empty (`initial_bytes` and
//! `dirty_bytes` 0) and everything goes in STOP_COPY as one [`SerialState`] encoding.
//! RESUMING collects the bytes written (at most [`crate::state::MAX_LEN`]);
//! RESUMING -> STOP decodes and checks all of them and only then swaps the state in; a
//! refusal leaves the live device as it was (and the device in ERROR).

use mdev_core::uapi::{
    vfio_precopy_info, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
    VFIO_PCI_NUM_REGIONS,
};
use mdev_core::{
    DataStream, MigState, MigTransition, MigrationArcs, MigrationDevice, MigrationError,
};
use slog::{info, warn};

use super::Serial;
use crate::state::{SerialState, MAX_LEN};

/// The migration features the device offers.
pub const MIGRATION_FEATURES: u32 =
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
/// Region index of the v1 migration region (the first device-specific index).
pub const MIGRATION_REGION_INDEX: u32 = VFIO_PCI_NUM_REGIONS;
/// Number of regions the device reports with the v1 region.
pub const NUM_REGIONS: u32 = VFIO_PCI_NUM_REGIONS + 1;

/// The saving side: pre-copy (empty) or the stop-copy encoding being read.
#[derive(Debug)]
pub(crate) struct SaveStream {
    data: Vec<u8>,
    pos: usize,
}

impl SaveStream {
    fn precopy() -> Self {
        Self {
            data: Vec::new(),
            pos: 0,
        }
    }

    fn stop_copy(state: &SerialState) -> Self {
        Self {
            data: state.to_bytes(),
            pos: 0,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        n
    }

    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }
}

impl Serial {
    /// Decode, check and apply the resume buffer; nothing changes on refusal.
    fn finish_resume(&mut self) -> Result<(), String> {
        let bytes = self.resume.take().unwrap_or_default();
        let state = SerialState::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let config = state.rebuild_config().map_err(|e| e.to_string())?;
        self.apply_state(state, config);
        Ok(())
    }
}

impl MigrationArcs for Serial {
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), String> {
        use MigState::*;
        match (from, to) {
            // The line only moves bytes in a running state: stopping needs no drain.
            (Running, RunningP2p) | (RunningP2p, Stop) | (PreCopy, PreCopyP2p) => {}
            (RunningP2p, Running) | (PreCopyP2p, PreCopy) | (Stop, RunningP2p) => {}
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => {
                self.save = Some(SaveStream::precopy())
            }
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) | (StopCopy, Stop) => self.save = None,
            (PreCopyP2p, StopCopy) | (Stop, StopCopy) => {
                self.save = Some(SaveStream::stop_copy(&self.state()))
            }
            (Stop, Resuming) => self.resume = Some(Vec::new()),
            (Resuming, Stop) => {
                let r = self.finish_resume();
                match &r {
                    Err(reason) => warn!(self.log, "resume refused"; "reason" => reason),
                    Ok(()) => info!(self.log, "state restored"; "rx_count" => self.rx_count),
                }
                return r;
            }
            _ => return Err(format!("{from} -> {to} is not a direct arc")),
        }
        Ok(())
    }
}

impl MigrationDevice for Serial {
    fn migration_flags(&self) -> u32 {
        self.mig.features()
    }

    fn mig_state(&self) -> MigState {
        self.mig.state()
    }

    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError> {
        let mut ctl = self.mig.clone();
        let r = ctl.set_state(self, target);
        self.mig = ctl;
        match self.mig.state() {
            MigState::Error => {
                self.save = None;
                self.resume = None;
            }
            s if s.is_running() => self.deliver_owed(),
            _ => {}
        }
        r
    }

    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError> {
        self.mig.check_stream(stream)?;
        let state = self.mig.state();
        match self.save.as_mut() {
            Some(s) if state.is_saving() => mdev_core::saving_read(state, s.read(buf)),
            _ => Err(MigrationError::NoStream {
                what: "saving",
                state,
            }),
        }
    }

    fn write_data(&mut self, stream: DataStream, buf: &[u8]) -> Result<usize, MigrationError> {
        self.mig.check_stream(stream)?;
        let state = self.mig.state();
        match self.resume.as_mut() {
            Some(r) if state == MigState::Resuming => {
                if r.len() + buf.len() > MAX_LEN {
                    return Err(MigrationError::BadData {
                        reason: format!(
                            "{} bytes of serial state is over the {MAX_LEN}-byte maximum",
                            r.len() + buf.len()
                        ),
                    });
                }
                r.extend_from_slice(buf);
                Ok(buf.len())
            }
            _ => Err(MigrationError::NoStream {
                what: "resuming",
                state,
            }),
        }
    }

    fn close_data(&mut self, stream: DataStream) {
        self.mig.close_stream(stream);
    }

    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        let state = self.mig.state();
        match self.save.as_ref() {
            Some(_) if matches!(state, MigState::PreCopy | MigState::PreCopyP2p) => {
                Ok(vfio_precopy_info {
                    argsz: std::mem::size_of::<vfio_precopy_info>() as u32,
                    flags: 0,
                    initial_bytes: 0,
                    dirty_bytes: 0,
                })
            }
            _ => Err(MigrationError::NoStream {
                what: "pre-copy",
                state,
            }),
        }
    }

    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        Ok(match self.save.as_ref() {
            Some(s) if self.mig.state() == MigState::StopCopy => s.remaining(),
            _ => self.state().to_bytes().len() as u64,
        })
    }
}
