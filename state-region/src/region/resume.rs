//! The resume side of the region: chunks written into the window and handed to the device.

use mdev_core::device::InvalidStateSnafu;
use mdev_core::MigrationDevice;
use slog::debug;

use super::{Mode, Result, StateRegion, V1Checks};

impl StateRegion {
    /// Bytes of the next chunk, `offset` bytes into the window.
    pub(super) fn write_window(
        &mut self,
        dev: &dyn MigrationDevice,
        offset: usize,
        data: &[u8],
    ) -> Result<()> {
        if self.mode != Mode::Resuming {
            return InvalidStateSnafu {
                what: format!(
                    "the data window is writable only while resuming (device is in {})",
                    dev.mig_state()
                ),
            }
            .fail();
        }
        let end = offset + data.len();
        self.window[offset..end].copy_from_slice(data);
        self.resume.filled = self.resume.filled.max(end);
        Ok(())
    }

    /// `data_size` while resuming: the device consumes the chunk before this returns.
    pub(super) fn write_data_size(
        &mut self,
        dev: &mut dyn MigrationDevice,
        size: u64,
    ) -> Result<()> {
        if self.mode != Mode::Resuming {
            return InvalidStateSnafu {
                what: format!(
                    "data_size is writable only while resuming (device is in {})",
                    dev.mig_state()
                ),
            }
            .fail();
        }
        let window = self.window.len();
        if size > window as u64 {
            return InvalidStateSnafu {
                what: format!("data_size {size} is larger than the {window}-byte data window"),
            }
            .fail();
        }
        // Not above the window size, a usize.
        let size = size as usize;
        if size > self.resume.filled && self.checks == V1Checks::Strict {
            return InvalidStateSnafu {
                what: format!(
                    "data_size {size} is more than the {} bytes written to the data window",
                    self.resume.filled
                ),
            }
            .fail();
        }
        self.resume.filled = 0;
        if size > 0 {
            let stream = self.data_stream(dev)?;
            let n = dev.write_data(stream, &self.window[..size]).map_err(|e| {
                InvalidStateSnafu {
                    what: format!("the device rejected a {size}-byte chunk: {e}"),
                }
                .build()
            })?;
            if n != size {
                return InvalidStateSnafu {
                    what: format!("the device consumed {n} of a {size}-byte chunk"),
                }
                .fail();
            }
        }
        self.resume.last_size = size as u64;
        debug!(self.log, "chunk consumed"; "bytes" => size);
        Ok(())
    }
}
