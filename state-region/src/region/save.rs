//! The save side of the region: staging chunks of the device's saving stream.

use mdev_core::device::InvalidStateSnafu;
use mdev_core::{MigState, MigrationDevice, MigrationError};
use slog::debug;

use super::{Mode, Result, SaveStage, StateRegion, V1Checks, DATA_OFFSET};

impl StateRegion {
    /// `pending_bytes`: release the chunk the VMM read, stage ahead if nothing is staged,
    /// and answer staged + what the device still has (0 exactly when it has no more data).
    pub(super) fn read_pending(&mut self, dev: &mut dyn MigrationDevice) -> Result<u64> {
        if self.mode != Mode::Saving {
            return Ok(0);
        }
        if self.save.exposed {
            self.save = SaveStage::default();
        }
        if self.save.staged == 0 {
            self.stage(dev)?;
        }
        if self.save.staged == 0 {
            return Ok(0);
        }
        let remainder = match dev.mig_state() {
            MigState::StopCopy => dev.stop_copy_size(),
            _ => dev
                .precopy_info()
                .map(|i| i.initial_bytes.saturating_add(i.dirty_bytes)),
        }
        .map_err(|e| {
            InvalidStateSnafu {
                what: format!("pending_bytes: the device cannot size its stream: {e}"),
            }
            .build()
        })?;
        Ok((self.save.staged as u64).saturating_add(remainder))
    }

    /// `data_offset` while saving: stage a chunk if none is, and expose it to the VMM.
    pub(super) fn read_data_offset(&mut self, dev: &mut dyn MigrationDevice) -> Result<u64> {
        if self.mode == Mode::Saving && !self.save.exposed {
            if self.save.staged == 0 {
                self.stage(dev)?;
            }
            self.save.exposed = true;
            debug!(self.log, "chunk exposed"; "bytes" => self.save.staged);
        }
        Ok(DATA_OFFSET)
    }

    /// `data_size`: the exposed chunk's size while saving, the last size written while
    /// resuming, 0 otherwise.
    pub(super) fn read_data_size(&mut self, dev: &mut dyn MigrationDevice) -> Result<u64> {
        if self.mode == Mode::Saving && !self.save.exposed && self.checks == V1Checks::Lenient {
            self.read_data_offset(dev)?;
        }
        match self.mode {
            Mode::Saving if self.save.exposed => Ok(self.save.staged as u64),
            Mode::Saving => InvalidStateSnafu {
                what: format!(
                    "data_size read before data_offset staged a chunk (device is in {})",
                    dev.mig_state()
                ),
            }
            .fail(),
            Mode::Resuming => Ok(self.resume.last_size),
            Mode::Idle => Ok(0),
        }
    }

    /// Bytes of the exposed chunk, `offset` bytes into the window.
    pub(super) fn read_window(
        &mut self,
        dev: &mut dyn MigrationDevice,
        offset: usize,
        data: &mut [u8],
    ) -> Result<()> {
        let lenient = self.checks == V1Checks::Lenient;
        if lenient && self.mode == Mode::Saving && !self.save.exposed {
            self.read_data_offset(dev)?;
        }
        if self.mode != Mode::Saving {
            return InvalidStateSnafu {
                what: format!(
                    "the data window is readable only while saving (device is in {})",
                    dev.mig_state()
                ),
            }
            .fail();
        }
        if !self.save.exposed {
            return InvalidStateSnafu {
                what: "data window read before data_offset was read for this chunk".to_string(),
            }
            .fail();
        }
        let end = offset + data.len();
        if end > self.save.staged && lenient {
            // Past the chunk reads as zero.
            data.fill(0);
            let n = self.save.staged.saturating_sub(offset);
            data[..n].copy_from_slice(&self.window[offset..offset + n]);
            return Ok(());
        }
        if end > self.save.staged {
            return InvalidStateSnafu {
                what: format!(
                    "data window read of bytes {offset}..{end} is past the {}-byte staged chunk",
                    self.save.staged
                ),
            }
            .fail();
        }
        data.copy_from_slice(&self.window[offset..end]);
        Ok(())
    }

    /// Pull the next chunk of the saving stream into the window.
    fn stage(&mut self, dev: &mut dyn MigrationDevice) -> Result<()> {
        let window = self.window.len();
        if self.empty_precopy {
            // A device without PRE_COPY has no data while running.
            self.save = SaveStage::default();
            return Ok(());
        }
        let stream = self.data_stream(dev)?;
        // Nothing available now in pre-copy (ENOMSG) is v1's pending_bytes = 0 for now.
        let n = match dev.read_data(stream, &mut self.window) {
            Err(MigrationError::NoDataNow { .. }) => 0,
            r => r.map_err(|e| {
                InvalidStateSnafu {
                    what: format!("reading the device's migration data failed: {e}"),
                }
                .build()
            })?,
        };
        if n > window {
            return InvalidStateSnafu {
                what: format!("the device claims {n} bytes read into a {window}-byte window"),
            }
            .fail();
        }
        self.save = SaveStage {
            staged: n,
            exposed: false,
        };
        debug!(self.log, "chunk staged"; "bytes" => n, "state" => %dev.mig_state());
        Ok(())
    }
}
