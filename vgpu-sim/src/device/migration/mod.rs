//! Live migration of a vGPU: the v2 state machine's arcs and the context stream.
//!
//! # The stream
//!
//! One context stream (state-region's format: header naming the mdev type, digested
//! sections, a chained end section) carries everything, whether read in pre-copy, in
//! stop-copy, or both:
//!
//! ```text
//!  PRE_COPY (device running)            STOP_COPY (device stopped)
//! ┌────────┬────────────┬─────────┐    ┌────────────┬──────┬─────┬────────┬─────┬─────────┬────────┬─────┐
//! │ header │ GMEM_PAGES │ ...     │ ─► │ GMEM_PAGES │ MMIO │ GTT │ ENGINE │ IRQ │ DISPLAY │ CONFIG │ end │
//! └────────┴────────────┴─────────┘    │  (rest)    │      │     │        │     │         │        │     │
//!    first pass: every non-zero page    └────────────┴──────┴─────┴────────┴─────┴─────────┴────────┴─────┘
//!    then pages dirtied since taken      or, without pre-copy: header, GMEM chunks (all of it), ...
//! ```
//!
//! | id | section      | payload (v1.1 unless said, little-endian)                      |
//! |----|--------------|----------------------------------------------------------------|
//! | 1  | `GMEM`       | 2.0: a chunk of graphics memory, u64 offset + up to 128 KiB; the chunks in order cover all of it (1.x, still read: all of it in one section) |
//! | 2  | `GMEM_PAGES` | records of page index u32 + 4096 bytes                         |
//! | 3  | `MMIO`       | ring start lo/hi, ring control, 16 scratch registers (u32 each) |
//! | 4  | `GTT`        | the guest's GTT entry values, `GTT_ENTRIES` u64                 |
//! | 5  | `ENGINE`     | ring head, tail and the engine's read-back registers, then the `EngineState` bytes |
//! | 6  | `IRQ`        | ISR, IMR, IIR, IER, ERROR_STATUS, ERROR_ADDR lo/hi, MSI owed (u32 0/1) |
//! | 7  | `DISPLAY`    | DSP_CTL, DSP_SURF, DSP_STRIDE, DSP_SIZE, FLIP_COUNT            |
//! | 8  | `CONFIG`     | the PCI configuration space: `ConfigSpaceState::to_bytes` (own magic, version, CRC) |
//!
//! `CONFIG` (added in section version 1.1, required) carries the configuration space as
//! GVT-g's image carried the virtual config space: the VMM replays configuration only
//! through the config region, where device-owned bits (MSI-X PBA, MSI pending) are
//! read-only, so they travel with the device. On load it is rebuilt on this device's own
//! params (`ConfigSpace::from_state`); a state those params could not produce is refused.
//!
//! Every register is in exactly one section (`regfile::REGS` says which). Host addresses
//! never travel: the GTT section holds what the guest wrote and the target rebuilds its
//! shadow from it.
//!
//! # Resuming
//!
//! STOP -> RESUMING opens a staging area (zeroed graphics memory, empty sections); writes
//! feed a push parser whose per-section caps are exact; nothing touches the live device.
//! RESUMING -> STOP checks the stream is complete, every required section came exactly once,
//! every register value, the ring and display against the GTT range and graphics memory,
//! the engine state and the configuration space; only then does it swap everything in at
//! once. A failure names the
//! section and field and leaves the live device as it was (and the device in ERROR).

mod load;
mod save;
mod sections;

use mdev_core::uapi::{
    vfio_precopy_info, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
    VFIO_PCI_NUM_REGIONS,
};
use mdev_core::{
    DataStream, MigState, MigTransition, MigrationArcs, MigrationDevice, MigrationError,
};
use slog::{debug, info, warn};

use super::Vgpu;

pub(crate) use load::ResumeSession;
pub(crate) use save::SaveStream;
pub use sections::{
    decode as decode_sections, Decoded, SectionId, VgpuState, GMEM_CHUNK, GMEM_CHUNK_HEADER,
    GMEM_VERSION, SECTION_MAJOR, SECTION_MINOR,
};

/// The migration features the vGPU offers by default (all three; see
/// [`crate::VgpuConfig::migration_features`] for fewer).
pub const MIGRATION_FEATURES: u32 =
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
/// Region index of the v1 migration region (the first device-specific index).
pub const MIGRATION_REGION_INDEX: u32 = VFIO_PCI_NUM_REGIONS;
/// Number of regions the device reports.
pub const NUM_REGIONS: u32 = VFIO_PCI_NUM_REGIONS + 1;

impl MigrationArcs for Vgpu {
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), String> {
        use MigState::*;
        debug!(self.log, "migration arc"; "from" => %from, "to" => %to);
        match (from, to) {
            // Stopping takes effect between commands: `run` is the only place commands
            // execute and it checks the state first, so there is nothing to drain.
            (Running, RunningP2p) | (RunningP2p, Stop) | (PreCopy, PreCopyP2p) => {}
            (RunningP2p, Running) | (PreCopyP2p, PreCopy) => {}
            (Stop, RunningP2p) => {}
            // Without P2P (vfio_main.c: RUNNING <-> STOP and PRE_COPY -> STOP_COPY are
            // direct arcs for a device that lacks VFIO_MIGRATION_P2P).
            (Running, Stop) | (Stop, Running) => {}
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => {
                self.save = Some(SaveStream::precopy(self.ty.name, &mut self.gmem)?);
                info!(self.log, "pre-copy started";
                    "initial_pages" => self.save.as_ref().map_or(0, |s| s.first_pass_pages()));
            }
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) => self.save = None,
            (PreCopyP2p, StopCopy) | (PreCopy, StopCopy) => {
                let state = self.state();
                let save = self.save.as_mut().ok_or("no pre-copy stream to continue")?;
                save.plan_stop_copy(&mut self.gmem, &state);
            }
            (Stop, StopCopy) => {
                let state = self.state();
                self.save = Some(SaveStream::stop_copy(
                    self.ty.name,
                    self.ty.gmem_size,
                    &state,
                )?);
            }
            (StopCopy, Stop) => self.save = None,
            (Stop, Resuming) => {
                self.resume = Some(Box::new(ResumeSession::new(
                    self.ty,
                    self.spare_staging.take(),
                )));
            }
            (Resuming, Stop) => {
                let r = self.finish_resume();
                if let Err(reason) = &r {
                    warn!(self.log, "resume refused"; "reason" => reason);
                } else {
                    info!(self.log, "context restored");
                }
                return r;
            }
            _ => return Err(format!("{from} -> {to} is not a direct arc")),
        }
        Ok(())
    }
}

impl MigrationDevice for Vgpu {
    fn migration_flags(&self) -> u32 {
        self.mig.features()
    }

    fn mig_state(&self) -> MigState {
        self.mig.state()
    }

    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError> {
        // The controller walks the arcs on the device; lend it a copy and keep the result.
        let mut ctl = self.mig.clone();
        let r = ctl.set_state(self, target);
        self.mig = ctl;
        match self.mig.state() {
            MigState::Error => {
                self.save = None;
                self.resume = None;
            }
            // Back in a running state: deliver what is owed (sinks permitting).
            s if s.is_running() => self.deliver_owed(),
            _ => {}
        }
        r
    }

    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError> {
        self.mig.check_stream(stream)?;
        let state = self.mig.state();
        match self.save.as_mut() {
            Some(s) if state.is_saving() => s
                .read(buf, &mut self.gmem)
                .map_err(|reason| MigrationError::BadData { reason })
                .and_then(|n| mdev_core::saving_read(state, n)),
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
            Some(r) if state == MigState::Resuming => r
                .write(buf)
                .map(|()| buf.len())
                .map_err(|reason| MigrationError::BadData { reason }),
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
            Some(s) if matches!(state, MigState::PreCopy | MigState::PreCopyP2p) => {
                let (initial_bytes, dirty_bytes) = s.precopy_info(&self.gmem);
                Ok(vfio_precopy_info {
                    argsz: std::mem::size_of::<vfio_precopy_info>() as u32,
                    flags: 0,
                    initial_bytes,
                    dirty_bytes,
                })
            }
            _ => Err(MigrationError::NoStream {
                what: "pre-copy",
                state,
            }),
        }
    }

    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        let fixed = sections::fixed_sections_len(
            self.engine.state().to_bytes().len(),
            self.config.params(),
        );
        Ok(match self.save.as_ref() {
            Some(s) => s.remaining(&self.gmem, fixed),
            None => save::full_stream_len(self.ty.name, self.ty.gmem_size, fixed),
        })
    }
}

/// The fixed sections' payloads for `st`, in stream order (for tests building streams).
#[cfg(test)]
pub(crate) fn sections_for_test(st: &VgpuState) -> Vec<(SectionId, Vec<u8>)> {
    sections::REQUIRED
        .iter()
        .map(|id| (*id, sections::encode(*id, st)))
        .collect()
}
