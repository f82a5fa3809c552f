//! The v1 migration region (`VFIO_REGION_TYPE_MIGRATION_DEPRECATED` /
//! `VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED`, GVT-g's "device state" region) on top of a
//! device's v2 data stream.
//!
//! [`StateRegion`] owns the region's layout and its chunk staging; the device it serves is
//! passed to every access as a `&mut dyn MigrationDevice`, so a device can hold its region
//! next to itself and lend itself out on each `region_read`/`region_write`.
//!
//! # Save (device_state SAVING: pre-copy `011` or stop-and-copy `010`)
//!
//! ```text
//!  VMM                                  StateRegion                    MigrationDevice
//!   | read pending_bytes  ------------>  | release the chunk the VMM read
//!   |                                    | nothing staged? read_data(window) ---> |
//!   | <-- staged + device remainder      | precopy_info() / stop_copy_size() ---> |
//!   |     (0: stream ended / none now)   |
//!   | read data_offset    ------------>  | stage now if nothing staged; expose it
//!   | <-- DATA_OFFSET                    |
//!   | read data_size      ------------>  |
//!   | <-- size of the staged chunk       |
//!   | read data_size bytes @ data_offset |
//!   | read pending_bytes ...             | (next iteration)
//! ```
//!
//! Staging ahead on `pending_bytes` makes it exact: with nothing staged the region pulls the
//! next chunk first, so `pending_bytes` is 0 exactly when the device's stream returned no
//! more data (the end of the stream in STOP_COPY, "nothing for now" in PRE_COPY); otherwise
//! it is the staged chunk plus what the device reports still to come (`initial_bytes +
//! dirty_bytes` in pre-copy, `stop_copy_size()` in stop-copy). A chunk staged in PRE_COPY
//! and not yet read survives the switch to STOP_COPY: the v2 stream is one stream.
//! Repeated reads of `pending_bytes`, `data_offset` or `data_size` within one iteration have
//! no further side effects, as the uAPI asks.
//!
//! # Resume (device_state RESUMING `100`)
//!
//! ```text
//!  VMM                                  StateRegion                    MigrationDevice
//!   | read data_offset    ------------>  |
//!   | <-- DATA_OFFSET                    |
//!   | write the chunk @ data_offset ---> | (into the window)
//!   | write data_size     ------------>  | write_data(&window[..size]) ---------> |
//!   | <-- Ok / the device's error        |                                        |
//! ```
//!
//! # Conformance
//!
//! Header fields accept only accesses of their native width at their own offset
//! ([`DeviceError::BadAccess`]); `pending_bytes`, `data_offset` and `reserved` refuse writes
//! ([`DeviceError::NotPermitted`]); `reserved` reads 0. Out-of-sequence accesses are
//! [`DeviceError::InvalidState`] with a sentence saying what was wrong: reading the window
//! when not saving, before `data_offset` was read for the chunk, or past the staged size;
//! reading `data_size` while saving before `data_offset`; writing the window or `data_size`
//! when not resuming; a `data_size` over the window or over what was written to it.
//!
//! The region notices a state change made outside it (a reset, a v2 request) at its next
//! access, and drops its staging when the stream direction changes.

mod layout;
mod resume;
mod save;

#[cfg(test)]
mod tests;

use std::fmt;
use std::mem::size_of;

use mdev_core::device::{BadAccessSnafu, InvalidStateSnafu, NotPermittedSnafu, OutOfRangeSnafu};
use mdev_core::uapi::{
    vfio_info_cap_header, vfio_region_info, vfio_region_info_cap_type, VFIO_DEVICE_STATE_MASK,
    VFIO_MIGRATION_PRE_COPY, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED, VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
};
use mdev_core::{
    v1_to_v2, v2_to_v1, DataStream, DeviceError, MigState, MigrationDevice, RegionInfo, RegionType,
};
use slog::{debug, info, o, warn, Discard, Logger};

pub(crate) use layout::Field;
pub use layout::DATA_OFFSET;
use layout::{AccessFault, Target};

/// Default size of the data window: 1 MiB.
pub const DEFAULT_WINDOW: usize = 1 << 20;

/// Granularity of the data window (a page, so the window could be mmapped).
pub const WINDOW_GRANULE: usize = 4096;

/// The type/subtype capability of the v1 migration region, for
/// [`VfioDevice::find_region`](mdev_core::VfioDevice::find_region).
pub const MIGRATION_REGION_TYPE: RegionType = RegionType {
    type_: VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
    subtype: VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
};

/// vfio-pci places region `index` at `index << 40` of the device fd
/// (`VFIO_PCI_OFFSET_SHIFT`, drivers/vfio/pci/vfio_pci_priv.h; not part of the uAPI).
const REGION_OFFSET_SHIFT: u32 = 40;

/// `Result` with a [`DeviceError`].
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// How strictly the region checks the VMM's access sequence.
///
/// The uAPI describes the v1 sequences (vfio.h, `struct vfio_device_migration_info`:
/// read `pending_bytes`, then `data_offset`, then `data_size`, then the data; on resume write
/// the data, then `data_size`) but a kernel driver cannot see every step of them (the data
/// area may be mmap'ed). [`V1Checks::Strict`], the default, refuses steps out of order so
/// that a VMM bug shows up here rather than against a real device; [`V1Checks::Lenient`]
/// accepts what a driver that cannot check would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum V1Checks {
    /// Refuse out-of-order steps: `data_size` or the window read before `data_offset`, a
    /// window read past the staged chunk, a `data_size` larger than what was written.
    #[default]
    Strict,
    /// Accept them: reading `data_size` or the window stages and exposes the chunk as
    /// `data_offset` would; bytes past the chunk read as zero; `data_size` is taken as
    /// written (up to the window).
    Lenient,
}

/// Which direction the device's data stream flows, as the region last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    /// No stream (STOP, RUNNING, RUNNING_P2P, ERROR).
    #[default]
    Idle,
    /// PRE_COPY, PRE_COPY_P2P, STOP_COPY.
    Saving,
    /// RESUMING.
    Resuming,
}

impl Mode {
    fn of(state: MigState) -> Self {
        if state.is_saving() {
            Mode::Saving
        } else if state == MigState::Resuming {
            Mode::Resuming
        } else {
            Mode::Idle
        }
    }
}

/// The save side: a chunk read from the device into the window.
#[derive(Debug, Clone, Copy, Default)]
struct SaveStage {
    /// Bytes of the window holding the chunk (0: nothing staged).
    staged: usize,
    /// `data_offset` was read for this chunk: the VMM may read it; the next
    /// `pending_bytes` read releases it.
    exposed: bool,
}

/// The resume side: a chunk being written into the window.
#[derive(Debug, Clone, Copy, Default)]
struct ResumeStage {
    /// End of the highest window byte written since the last `data_size` write.
    filled: usize,
    /// The last `data_size` written (what `data_size` reads back while resuming).
    last_size: u64,
}

/// The v1 migration region of one device.
pub struct StateRegion {
    index: u32,
    window: Vec<u8>,
    mode: Mode,
    save: SaveStage,
    resume: ResumeStage,
    /// The device's data session, as its last `set_mig_state` handed it back.
    stream: Option<DataStream>,
    /// 011 was written to a device without `VFIO_MIGRATION_PRE_COPY`: the device stays
    /// RUNNING and the region shows RUNNING|SAVING with no data ("vendor drivers must
    /// support the pre-copy state even for implementations where no data is provided",
    /// vfio.h, `struct vfio_device_migration_info`).
    empty_precopy: bool,
    checks: V1Checks,
    log: Logger,
}

impl fmt::Debug for StateRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateRegion")
            .field("index", &self.index)
            .field("window", &self.window.len())
            .field("mode", &self.mode)
            .field("save", &self.save)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl Default for StateRegion {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl StateRegion {
    /// A region with a data window of `window` bytes, rounded up to a whole number of
    /// [`WINDOW_GRANULE`]s (at least one). Errors name region index 0 until
    /// [`with_index`](Self::with_index) says otherwise.
    pub fn new(window: usize) -> Self {
        let window = window.max(1).div_ceil(WINDOW_GRANULE) * WINDOW_GRANULE;
        Self {
            index: 0,
            window: vec![0; window],
            mode: Mode::Idle,
            save: SaveStage::default(),
            resume: ResumeStage::default(),
            stream: None,
            empty_precopy: false,
            checks: V1Checks::Strict,
            log: Logger::root(Discard, o!()),
        }
    }

    /// The region index the device exposes this region at (used in error messages).
    pub fn with_index(mut self, index: u32) -> Self {
        self.index = index;
        self
    }

    /// Check the VMM's access sequence as `checks` says (default: strict).
    pub fn with_checks(mut self, checks: V1Checks) -> Self {
        self.checks = checks;
        self
    }

    /// Log phases (info) and per-chunk detail (debug) to `log`.
    pub fn with_logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Region size: [`DATA_OFFSET`] + the window.
    pub fn size(&self) -> u64 {
        DATA_OFFSET + self.window.len() as u64
    }

    /// Size of the data window, the largest chunk either direction.
    pub fn window(&self) -> usize {
        self.window.len()
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for this region at `index`: readable, writable, with
    /// the migration type/subtype capability.
    pub fn region_info(&self, index: u32) -> RegionInfo {
        let info_size = size_of::<vfio_region_info>();
        let cap_size = size_of::<vfio_region_info_cap_type>();
        RegionInfo {
            info: vfio_region_info {
                argsz: (info_size + cap_size) as u32,
                flags: VFIO_REGION_INFO_FLAG_READ
                    | VFIO_REGION_INFO_FLAG_WRITE
                    | VFIO_REGION_INFO_FLAG_CAPS,
                index,
                cap_offset: info_size as u32,
                size: self.size(),
                offset: u64::from(index) << REGION_OFFSET_SHIFT,
            },
            cap_type: Some(vfio_region_info_cap_type {
                header: vfio_info_cap_header {
                    id: VFIO_REGION_INFO_CAP_TYPE as u16,
                    version: 1,
                    next: 0,
                },
                type_: MIGRATION_REGION_TYPE.type_,
                subtype: MIGRATION_REGION_TYPE.subtype,
            }),
        }
    }

    /// Read `data.len()` bytes at `offset` (a `pread` of the region).
    pub fn read(
        &mut self,
        dev: &mut dyn MigrationDevice,
        offset: u64,
        data: &mut [u8],
    ) -> Result<()> {
        let target = self.decode(offset, data.len())?;
        let state = self.effective_state(dev);
        self.sync(state);
        let field = match target {
            Target::Window { offset } => return self.read_window(dev, offset, data),
            Target::Field(field) => field,
        };
        let value = match field {
            Field::DeviceState => u64::from(v2_to_v1(state)),
            Field::Reserved => 0,
            Field::PendingBytes => self.read_pending(dev)?,
            Field::DataOffset => self.read_data_offset(dev)?,
            Field::DataSize => self.read_data_size(dev)?,
        };
        put_field(data, value);
        Ok(())
    }

    /// Write `data` at `offset` (a `pwrite` of the region).
    pub fn write(&mut self, dev: &mut dyn MigrationDevice, offset: u64, data: &[u8]) -> Result<()> {
        let target = self.decode(offset, data.len())?;
        let state = self.effective_state(dev);
        self.sync(state);
        let field = match target {
            Target::Window { offset } => return self.write_window(dev, offset, data),
            Target::Field(field) => field,
        };
        let value = get_field(data);
        match field {
            // A 4-byte field: the value fits.
            Field::DeviceState => self.write_device_state(dev, value as u32),
            Field::DataSize => self.write_data_size(dev, value),
            // vfio.h, struct vfio_device_migration_info: `reserved` reads 0; a write to it
            // is ignored.
            Field::Reserved => {
                debug!(self.log, "write to the reserved field ignored"; "value" => value);
                Ok(())
            }
            Field::PendingBytes | Field::DataOffset => NotPermittedSnafu {
                index: self.index,
                what: if field == Field::PendingBytes {
                    "writes to the read-only field pending_bytes"
                } else {
                    "writes to the read-only field data_offset"
                },
            }
            .fail(),
        }
    }

    fn decode(&self, offset: u64, len: usize) -> Result<Target> {
        layout::decode(offset, len, self.window.len()).map_err(|fault| match fault {
            AccessFault::OutOfRange => OutOfRangeSnafu {
                index: self.index,
                offset,
                len,
                size: self.size(),
            }
            .build(),
            AccessFault::BadAccess => BadAccessSnafu {
                index: self.index,
                offset,
                len,
            }
            .build(),
        })
    }

    /// The state the region shows: the device's, or PRE_COPY while an empty pre-copy of a
    /// device without `VFIO_MIGRATION_PRE_COPY` lasts (the device is RUNNING meanwhile).
    fn effective_state(&mut self, dev: &dyn MigrationDevice) -> MigState {
        let state = dev.mig_state();
        if self.empty_precopy && state == MigState::Running {
            return MigState::PreCopy;
        }
        self.empty_precopy = false;
        state
    }

    /// Follow the device's state: drop the staging when the stream direction changed.
    fn sync(&mut self, state: MigState) {
        let mode = Mode::of(state);
        if mode == self.mode {
            return;
        }
        if self.save.staged > 0 && !self.save.exposed {
            debug!(self.log, "dropping a staged chunk"; "bytes" => self.save.staged, "state" => %state);
        }
        if self.resume.filled > 0 {
            warn!(self.log, "dropping a chunk written without data_size"; "bytes" => self.resume.filled, "state" => %state);
        }
        self.mode = mode;
        self.save = SaveStage::default();
        self.resume = ResumeStage::default();
    }

    fn write_device_state(&mut self, dev: &mut dyn MigrationDevice, v1: u32) -> Result<()> {
        // vfio.h: bits of device_state outside VFIO_DEVICE_STATE_MASK are reserved; the
        // VMM preserves them by read-modify-write and the device does not reject them.
        let reserved = v1 & !VFIO_DEVICE_STATE_MASK;
        if reserved != 0 {
            debug!(self.log, "reserved device_state bits ignored"; "bits" => reserved);
        }
        let v1 = v1 & VFIO_DEVICE_STATE_MASK;
        let target = v1_to_v2(v1).ok_or_else(|| {
            InvalidStateSnafu {
                what: format!("device_state {v1:#05b} is not a v1 state (101 and 111 are invalid)"),
            }
            .build()
        })?;
        let from = self.effective_state(dev);
        let no_precopy = dev.migration_flags() & VFIO_MIGRATION_PRE_COPY == 0;
        if target == MigState::PreCopy && no_precopy && dev.mig_state() == MigState::Running {
            // Pre-copy with no data: the device goes on RUNNING (see `empty_precopy`).
            self.empty_precopy = true;
            self.sync(MigState::PreCopy);
            info!(self.log, "device_state written: pre-copy with no data (the device has no PRE_COPY)";
                "region" => self.index);
            return Ok(());
        }
        self.empty_precopy = false;
        let result = dev.set_mig_state(target);
        let state = dev.mig_state();
        self.sync(state);
        self.follow_stream(dev, result.as_ref().ok().and_then(|t| t.stream), state);
        match result {
            Ok(reached) => {
                info!(self.log, "device_state written"; "region" => self.index, "v1" => v1, "from" => %from, "to" => %reached.state);
                Ok(())
            }
            Err(e) => InvalidStateSnafu {
                what: format!("device_state {v1:#05b} ({from} -> {target}) failed: {e}"),
            }
            .fail(),
        }
    }
}

impl StateRegion {
    /// Keep the data session the device handed back; close it when the state has none.
    fn follow_stream(
        &mut self,
        dev: &mut dyn MigrationDevice,
        opened: Option<DataStream>,
        state: MigState,
    ) {
        debug_assert_eq!(state, dev.mig_state());
        mdev_core::follow_session(&mut self.stream, dev, opened);
    }

    /// The open data session, or the error naming why there is none.
    fn data_stream(&self, dev: &dyn MigrationDevice) -> Result<DataStream> {
        self.stream.ok_or_else(|| {
            InvalidStateSnafu {
                what: format!(
                    "the device handed back no data stream for this session (device is in {})",
                    dev.mig_state()
                ),
            }
            .build()
        })
    }
}

/// Store a field value in an access buffer of the field's width, in host byte order (a
/// `pread` of a u64 field yields the kernel's u64 as it sits in memory).
fn put_field(data: &mut [u8], value: u64) {
    if data.len() == size_of::<u32>() {
        // 4-byte fields (device_state, reserved) hold u32 values.
        data.copy_from_slice(&(value as u32).to_ne_bytes());
    } else {
        data.copy_from_slice(&value.to_ne_bytes());
    }
}

/// Load a field value from an access buffer of the field's width (4 or 8 bytes).
fn get_field(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if data.len() == size_of::<u32>() {
        let mut w = [0u8; 4];
        w.copy_from_slice(data);
        return u64::from(u32::from_ne_bytes(w));
    }
    b.copy_from_slice(data);
    u64::from_ne_bytes(b)
}
