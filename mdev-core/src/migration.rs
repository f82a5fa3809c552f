//! The v2 migration state machine, the v1 `device_state` mapping, and the device's side.
//!
//! # States and arcs
//!
//! The eight uAPI states (`enum vfio_device_mig_state`) are [`MigState`]. The uAPI defines a
//! set of *direct arcs*, each of which a driver implements as one action:
//!
//! ```text
//!   RUNNING <-> RUNNING_P2P          RUNNING_P2P -> STOP        STOP -> RUNNING_P2P
//!   RUNNING -> PRE_COPY              PRE_COPY -> RUNNING
//!   RUNNING_P2P -> PRE_COPY_P2P      PRE_COPY_P2P -> RUNNING_P2P
//!   PRE_COPY <-> PRE_COPY_P2P        PRE_COPY_P2P -> STOP_COPY
//!   STOP -> STOP_COPY                STOP_COPY -> STOP
//!   STOP -> RESUMING                 RESUMING -> STOP
//! ```
//!
//! Any other request is carried out as a walk along the shortest path of arcs, where the
//! saving states (PRE_COPY, PRE_COPY_P2P, STOP_COPY share one data stream) may appear only at
//! the ends of the walk; STOP_COPY -> PRE_COPY* is refused. [`next_step`] is that walk's next
//! hop, exactly as the kernel's `vfio_mig_get_next_state` table gives it (including its
//! choice between equally short paths), and a unit test checks every hop against a
//! breadth-first search over the arcs. A request for ERROR, from ERROR, or that needs an
//! unsupported feature is refused without changing state; an arc that *fails* leaves the
//! device in ERROR, from which only reset (back to RUNNING) leaves.

use std::fmt;

use snafu::Snafu;

use crate::uapi::{
    vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR as ST_ERROR,
    vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY as ST_PRE_COPY,
    vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P as ST_PRE_COPY_P2P,
    vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING as ST_RESUMING,
    vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING as ST_RUNNING,
    vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P as ST_RUNNING_P2P,
    vfio_device_mig_state_VFIO_DEVICE_STATE_STOP as ST_STOP,
    vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY as ST_STOP_COPY, vfio_precopy_info,
    VFIO_DEVICE_STATE_MASK, VFIO_DEVICE_STATE_V1_RESUMING, VFIO_DEVICE_STATE_V1_RUNNING,
    VFIO_DEVICE_STATE_V1_SAVING, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
    VFIO_MIGRATION_STOP_COPY,
};

/// A v2 migration state (`enum vfio_device_mig_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MigState {
    /// `VFIO_DEVICE_STATE_ERROR`: an arc failed; only reset leaves.
    Error = ST_ERROR,
    /// `VFIO_DEVICE_STATE_STOP`: not running, no data stream.
    Stop = ST_STOP,
    /// `VFIO_DEVICE_STATE_RUNNING`: normal operation.
    Running = ST_RUNNING,
    /// `VFIO_DEVICE_STATE_STOP_COPY`: stopped, streaming its final state.
    StopCopy = ST_STOP_COPY,
    /// `VFIO_DEVICE_STATE_RESUMING`: stopped, consuming a state stream.
    Resuming = ST_RESUMING,
    /// `VFIO_DEVICE_STATE_RUNNING_P2P`: running, but initiates no peer-to-peer DMA.
    RunningP2p = ST_RUNNING_P2P,
    /// `VFIO_DEVICE_STATE_PRE_COPY`: running and streaming pre-copy data.
    PreCopy = ST_PRE_COPY,
    /// `VFIO_DEVICE_STATE_PRE_COPY_P2P`: pre-copy, with peer-to-peer quiesced.
    PreCopyP2p = ST_PRE_COPY_P2P,
}

/// All states, in uAPI order.
pub const ALL_STATES: [MigState; 8] = [
    MigState::Error,
    MigState::Stop,
    MigState::Running,
    MigState::StopCopy,
    MigState::Resuming,
    MigState::RunningP2p,
    MigState::PreCopy,
    MigState::PreCopyP2p,
];

impl TryFrom<u32> for MigState {
    type Error = MigrationError;

    fn try_from(v: u32) -> Result<Self, MigrationError> {
        ALL_STATES
            .iter()
            .copied()
            .find(|s| *s as u32 == v)
            .ok_or(MigrationError::UnknownState { value: v })
    }
}

impl From<MigState> for u32 {
    fn from(s: MigState) -> u32 {
        s as u32
    }
}

impl fmt::Display for MigState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MigState::Error => "ERROR",
            MigState::Stop => "STOP",
            MigState::Running => "RUNNING",
            MigState::StopCopy => "STOP_COPY",
            MigState::Resuming => "RESUMING",
            MigState::RunningP2p => "RUNNING_P2P",
            MigState::PreCopy => "PRE_COPY",
            MigState::PreCopyP2p => "PRE_COPY_P2P",
        };
        f.write_str(s)
    }
}

impl MigState {
    /// Whether the device's data stream is open for reading in this state.
    pub fn is_saving(self) -> bool {
        matches!(
            self,
            MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy
        )
    }

    /// Whether the device executes work in this state.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            MigState::Running | MigState::RunningP2p | MigState::PreCopy | MigState::PreCopyP2p
        )
    }

    /// The migration feature flags (`VFIO_MIGRATION_*`) a device needs to enter this state.
    pub fn required_features(self) -> u32 {
        match self {
            MigState::RunningP2p => VFIO_MIGRATION_P2P,
            MigState::PreCopy => VFIO_MIGRATION_PRE_COPY,
            MigState::PreCopyP2p => VFIO_MIGRATION_PRE_COPY | VFIO_MIGRATION_P2P,
            _ => VFIO_MIGRATION_STOP_COPY,
        }
    }
}

/// Whether `from -> to` is one of the uAPI's direct arcs.
pub fn is_direct_arc(from: MigState, to: MigState) -> bool {
    use MigState::*;
    matches!(
        (from, to),
        (Running, RunningP2p)
            | (RunningP2p, Running)
            | (RunningP2p, Stop)
            | (Stop, RunningP2p)
            | (Running, PreCopy)
            | (PreCopy, Running)
            | (RunningP2p, PreCopyP2p)
            | (PreCopyP2p, RunningP2p)
            | (PreCopy, PreCopyP2p)
            | (PreCopyP2p, PreCopy)
            | (PreCopyP2p, StopCopy)
            | (Stop, StopCopy)
            | (StopCopy, Stop)
            | (Stop, Resuming)
            | (Resuming, Stop)
    )
}

/// The next hop from `cur` towards `new` on a device with all features, as the kernel's
/// `vfio_mig_get_next_state` table gives it. ERROR means the request is refused.
fn table_step(cur: MigState, new: MigState) -> MigState {
    use MigState::*;
    if cur == new {
        return cur;
    }
    match (cur, new) {
        (Error, _) | (_, Error) => Error,
        (Stop, StopCopy) => StopCopy,
        (Stop, Resuming) => Resuming,
        (Stop, _) => RunningP2p,
        (Running, PreCopy) => PreCopy,
        (Running, _) => RunningP2p,
        (PreCopy, PreCopyP2p | StopCopy) => PreCopyP2p,
        (PreCopy, _) => Running,
        (PreCopyP2p, PreCopy) => PreCopy,
        (PreCopyP2p, StopCopy) => StopCopy,
        (PreCopyP2p, _) => RunningP2p,
        (StopCopy, PreCopy | PreCopyP2p) => Error,
        (StopCopy, _) => Stop,
        (Resuming, _) => Stop,
        (RunningP2p, Running | PreCopy) => Running,
        (RunningP2p, PreCopyP2p) => PreCopyP2p,
        (RunningP2p, _) => Stop,
    }
}

/// The next hop of the walk from `cur` to `new` on a device with `features`
/// (`VFIO_MIGRATION_*`), skipping states whose features the device lacks. `None` means the
/// request is refused (`-EINVAL` in the uAPI); `Some(cur)` means already there.
pub fn next_step(cur: MigState, new: MigState, features: u32) -> Option<MigState> {
    let supported = |s: MigState| s.required_features() & features == s.required_features();
    if features & VFIO_MIGRATION_STOP_COPY == 0 || !supported(new) || !supported(cur) {
        return None;
    }
    let mut next = table_step(cur, new);
    while next != MigState::Error && !supported(next) {
        next = table_step(next, new);
    }
    (next != MigState::Error).then_some(next)
}

/// Map a v1 `device_state` value (bits RESUMING|SAVING|RUNNING) to the v2 state.
///
/// `000` STOP, `001` RUNNING, `010` STOP_COPY, `011` PRE_COPY, `100` RESUMING, `110` ERROR;
/// `101`, `111` and any bit outside `VFIO_DEVICE_STATE_MASK` are invalid (`None`).
pub fn v1_to_v2(v1: u32) -> Option<MigState> {
    if v1 & !VFIO_DEVICE_STATE_MASK != 0 {
        return None;
    }
    const R: u32 = VFIO_DEVICE_STATE_V1_RUNNING;
    const S: u32 = VFIO_DEVICE_STATE_V1_SAVING;
    const M: u32 = VFIO_DEVICE_STATE_V1_RESUMING;
    match v1 {
        0 => Some(MigState::Stop),
        R => Some(MigState::Running),
        S => Some(MigState::StopCopy),
        x if x == R | S => Some(MigState::PreCopy),
        M => Some(MigState::Resuming),
        x if x == S | M => Some(MigState::Error),
        _ => None,
    }
}

/// Map a v2 state to the v1 `device_state` bits. The P2P states, which v1 lacks, read as
/// their non-P2P counterparts (the device is running either way).
pub fn v2_to_v1(s: MigState) -> u32 {
    const R: u32 = VFIO_DEVICE_STATE_V1_RUNNING;
    const S: u32 = VFIO_DEVICE_STATE_V1_SAVING;
    const M: u32 = VFIO_DEVICE_STATE_V1_RESUMING;
    match s {
        MigState::Stop => 0,
        MigState::Running | MigState::RunningP2p => R,
        MigState::StopCopy => S,
        MigState::PreCopy | MigState::PreCopyP2p => R | S,
        MigState::Resuming => M,
        MigState::Error => S | M,
    }
}

/// Errors of the migration state machine and its data stream.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub))]
pub enum MigrationError {
    /// A value that is not a uAPI state.
    #[snafu(display("{value} is not a migration state"))]
    UnknownState {
        /// The raw value.
        value: u32,
    },
    /// The request is not allowed from the current state (the uAPI's `-EINVAL`).
    #[snafu(display("transition {from} -> {to} is not allowed"))]
    InvalidTransition {
        /// Current state.
        from: MigState,
        /// Requested state.
        to: MigState,
    },
    /// A direct arc failed; the device is now in ERROR (or, for a device that keeps its
    /// last state on failure as mtty does, still in `from`).
    #[snafu(display("arc {from} -> {to} failed: {reason}"))]
    ArcFailed {
        /// Arc start.
        from: MigState,
        /// Arc end.
        to: MigState,
        /// What went wrong.
        reason: String,
    },
    /// A data-stream access in a state that has no open stream of that direction.
    #[snafu(display("no {what} data stream in state {state}"))]
    NoStream {
        /// "saving" or "resuming".
        what: &'static str,
        /// Current state.
        state: MigState,
    },
    /// A read of the saving data stream in PRE_COPY or PRE_COPY_P2P found nothing
    /// available now: the uAPI's `-ENOMSG` (include/uapi/linux/vfio.h, the data_fd and
    /// `VFIO_MIG_GET_PRECOPY_INFO` comments). More may come; only in STOP_COPY does a
    /// 0-length read mean the end of the stream.
    #[snafu(display("no migration data available now in {state} (ENOMSG)"))]
    NoDataNow {
        /// Current state.
        state: MigState,
    },
    /// A data-stream access through a handle that is closed or belongs to a session that
    /// has ended (the state left the stream's states, or the device was reset): the
    /// kernel's data_fd then fails with `-ENODEV` (include/uapi/linux/vfio.h,
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`: leaving the saving or resuming states ends
    /// the data transfer session).
    #[snafu(display("data stream #{stream} is closed or from an ended session (ENODEV)"))]
    StaleStream {
        /// The handle's session number.
        stream: u64,
    },
    /// The device rejected data written to it while resuming.
    #[snafu(display("device rejected migration data: {reason}"))]
    BadData {
        /// What is wrong with the data.
        reason: String,
    },
}

/// The uAPI's read semantics of the saving data stream, for a device's `read_data`: `n`
/// bytes read in `state`. Nothing read in PRE_COPY or PRE_COPY_P2P is
/// [`MigrationError::NoDataNow`] (`-ENOMSG`: nothing for now); nothing read in STOP_COPY is
/// `Ok(0)`, the end of the stream.
pub fn saving_read(state: MigState, n: usize) -> Result<usize, MigrationError> {
    if n == 0 && matches!(state, MigState::PreCopy | MigState::PreCopyP2p) {
        return Err(MigrationError::NoDataNow { state });
    }
    Ok(n)
}

/// A handle on one data-transfer session: the kernel's `data_fd`.
///
/// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` hands one back when the arc it ends on starts a
/// session: into PRE_COPY or PRE_COPY_P2P from a running state, into STOP_COPY from STOP,
/// into RESUMING from STOP. Arcs between saving states (PRE_COPY -> STOP_COPY, PRE_COPY
/// <-> PRE_COPY_P2P) continue the same session and return none; any arc out of the
/// session's states, a failed arc (ERROR) and a reset end it. Reads and writes through a
/// handle whose session ended, or that was closed, fail with
/// [`MigrationError::StaleStream`] (`-ENODEV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataStream(u64);

impl DataStream {
    /// The session number (unique per device for the device's lifetime).
    pub fn id(self) -> u64 {
        self.0
    }

    /// The handle for session `id`, for transports that carry it (a handle made up by a
    /// caller is refused by the device like any stale one).
    pub fn from_id(id: u64) -> Self {
        Self(id)
    }
}

/// What `set_mig_state` reached: the state, and the data stream the walk opened, if its
/// last arc started a session (see [`DataStream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigTransition {
    /// The state reached (the requested one).
    pub state: MigState,
    /// The new session's handle, if the walk started one.
    pub stream: Option<DataStream>,
}

/// The direction of a state's data session, if it has one: `Some(true)` saving (PRE_COPY,
/// PRE_COPY_P2P, STOP_COPY), `Some(false)` resuming (RESUMING), `None` no session.
pub fn session_kind(s: MigState) -> Option<bool> {
    match s {
        MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy => Some(true),
        MigState::Resuming => Some(false),
        _ => None,
    }
}

/// What a migratable device offers the VMM: `VFIO_DEVICE_FEATURE_MIGRATION` (flags),
/// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (get/set state), the data fd (read/write),
/// `VFIO_MIG_GET_PRECOPY_INFO` and `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
pub trait MigrationDevice {
    /// `VFIO_MIGRATION_*` flags the device supports.
    fn migration_flags(&self) -> u32;
    /// The current state.
    fn mig_state(&self) -> MigState;
    /// Walk to `target`; returns the state reached and the data stream the walk opened
    /// (see [`DataStream`]). On a failed arc the device is in ERROR.
    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError>;
    /// Read the saving data stream (pre-copy or stop-copy) through `stream`. `Ok(0)` in
    /// STOP_COPY is the end of the stream; in PRE_COPY with nothing available now the read
    /// fails with [`MigrationError::NoDataNow`] (see [`saving_read`]); a stale handle fails
    /// with [`MigrationError::StaleStream`].
    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError>;
    /// Write the resuming data stream through `stream`. The device consumes all of `buf`
    /// or fails.
    fn write_data(&mut self, stream: DataStream, buf: &[u8]) -> Result<usize, MigrationError>;
    /// Close `stream` (the kernel's `close(data_fd)`): the session ends; the state does not
    /// change. Closing a stale handle does nothing.
    fn close_data(&mut self, stream: DataStream);
    /// `VFIO_MIG_GET_PRECOPY_INFO`: `initial_bytes` and `dirty_bytes` (PRE_COPY* only).
    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError>;
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: estimated length of the stop-copy stream.
    fn stop_copy_size(&mut self) -> Result<u64, MigrationError>;
}

/// The VMM's side of the data session: keep the handle a walk `opened` (closing the one
/// held before), and close the held one once the device's state has no session (as QEMU
/// closes the data_fd when it leaves the saving or resuming states).
pub fn follow_session(
    held: &mut Option<DataStream>,
    mig: &mut dyn MigrationDevice,
    opened: Option<DataStream>,
) {
    if opened.is_some() || session_kind(mig.mig_state()).is_none() {
        if let Some(old) = held.take() {
            mig.close_data(old);
        }
    }
    if opened.is_some() {
        *held = opened;
    }
}

/// Write all of `buf` to the resuming data stream `stream` (the loop a VMM runs around
/// `write(data_fd)`); a device that accepts no bytes is an error.
pub fn write_all_data(
    mig: &mut dyn MigrationDevice,
    stream: DataStream,
    buf: &[u8],
) -> Result<(), MigrationError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let n = mig.write_data(stream, rest)?;
        if n == 0 {
            return Err(MigrationError::BadData {
                reason: "the device accepted no bytes".into(),
            });
        }
        rest = &rest[n.min(rest.len())..];
    }
    Ok(())
}

/// The per-arc actions a device implements; [`MigrationController`] walks them.
pub trait MigrationArcs {
    /// Carry out one direct arc `from -> to`.
    fn arc(&mut self, from: MigState, to: MigState) -> Result<(), String>;
}

/// The state-machine half of a migratable device: current state, features, and the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationController {
    state: MigState,
    features: u32,
    /// Sessions started so far (the next handle's number).
    sessions: u64,
    /// The open session, if any.
    open: Option<DataStream>,
    /// What a failed arc leaves: ERROR (vfio.h's rule, mlx5 and most drivers) or the last
    /// state reached (samples/vfio-mdev/mtty.c keeps it).
    keep_last_on_failure: bool,
}

impl MigrationController {
    /// A controller in RUNNING for a device with `features` (`VFIO_MIGRATION_*`).
    pub fn new(features: u32) -> Self {
        Self {
            state: MigState::Running,
            features,
            sessions: 0,
            open: None,
            keep_last_on_failure: false,
        }
    }

    /// A failed arc leaves the last state reached instead of ERROR, as
    /// samples/vfio-mdev/mtty.c does (`mtty_set_state` stops the walk and keeps its
    /// state); the data session of that state, if any, stays open.
    pub fn keeping_last_state_on_failure(mut self) -> Self {
        self.keep_last_on_failure = true;
        self
    }

    /// Current state.
    pub fn state(&self) -> MigState {
        self.state
    }

    /// Supported `VFIO_MIGRATION_*` flags.
    pub fn features(&self) -> u32 {
        self.features
    }

    /// Reset: back to RUNNING, whatever the state was; any open data session ends.
    pub fn reset(&mut self) {
        self.state = MigState::Running;
        self.open = None;
    }

    /// The open data session, if any.
    pub fn open_stream(&self) -> Option<DataStream> {
        self.open
    }

    /// Check that `stream` is the open session (else [`MigrationError::StaleStream`]).
    pub fn check_stream(&self, stream: DataStream) -> Result<(), MigrationError> {
        if self.open == Some(stream) {
            Ok(())
        } else {
            Err(MigrationError::StaleStream { stream: stream.0 })
        }
    }

    /// Close `stream`: if it is the open session, the session ends.
    pub fn close_stream(&mut self, stream: DataStream) {
        if self.open == Some(stream) {
            self.open = None;
        }
    }

    /// Follow one arc's effect on the data session; the new session's handle if it opened
    /// one.
    fn track_session(&mut self, from: MigState, to: MigState) -> Option<DataStream> {
        match (session_kind(from), session_kind(to)) {
            (_, None) => {
                self.open = None;
                None
            }
            // Between saving states the session (and its handle, if still open) goes on.
            (Some(a), Some(b)) if a == b => None,
            (_, Some(_)) => {
                self.sessions += 1;
                let s = DataStream(self.sessions);
                self.open = Some(s);
                Some(s)
            }
        }
    }

    /// Walk from the current state to `target`, one direct arc at a time.
    ///
    /// A refused request leaves the state unchanged; an arc that fails leaves ERROR.
    pub fn set_state<A: MigrationArcs + ?Sized>(
        &mut self,
        arcs: &mut A,
        target: MigState,
    ) -> Result<MigTransition, MigrationError> {
        let from = self.state;
        // Check the whole walk before the first arc, so a refused request changes nothing.
        let mut cur = from;
        while cur != target {
            cur = next_step(cur, target, self.features)
                .ok_or(MigrationError::InvalidTransition { from, to: target })?;
        }
        let mut opened = None;
        while self.state != target {
            let next = next_step(self.state, target, self.features)
                .ok_or(MigrationError::InvalidTransition { from, to: target })?;
            if let Err(reason) = arcs.arc(self.state, next) {
                let err = MigrationError::ArcFailed {
                    from: self.state,
                    to: next,
                    reason,
                };
                if !self.keep_last_on_failure {
                    self.state = MigState::Error;
                    self.open = None;
                }
                return Err(err);
            }
            opened = self.track_session(self.state, next).or(opened);
            self.state = next;
        }
        Ok(MigTransition {
            state: self.state,
            stream: opened.filter(|s| self.open == Some(*s)),
        })
    }
}

#[cfg(test)]
mod tests;
