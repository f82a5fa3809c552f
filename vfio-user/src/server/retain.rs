//! The device's state across a client's disconnect.
//!
//! The spec (`docs/interop/vfio-user.rst`, "Client Disconnection"): when a client leaves,
//! its memory maps and irq eventfds are dropped and "the device state should otherwise be
//! retained", so that a client that reconnects (a VMM upgrading itself) finds the device as
//! it left it. Our device model is built on the client's memory and cannot outlive it, so
//! the server keeps the state instead: at disconnect it saves the device whole through its
//! own v2 migration interface ([`park`]: STOP, then a full STOP_COPY read), and builds the
//! next client's device on that client's maps and, at its first request that can see the
//! state, loads the state into it ([`restore`]:
//! RESUMING, the bytes, STOP, and RUNNING again if it was running). The device's GTT is
//! re-validated against the new maps on load, as on a migration target.
//!
//! Not retained: an open migration session (the client that drove it is gone; the device
//! comes back running if it was in a running state, stopped otherwise), DMA logging, and a
//! device that was resuming or in ERROR (its state is partial or undefined; the next client
//! gets a device at power-on, and the log says so). A VMM that attaches the device to a new
//! VM resets it first, as vfio-pci resets a device at VM start.

use mdev_core::{DataStream, MigState, MigrationDevice, MigrationError, VfioDevice};
use slog::{info, warn};

use super::session::{Refusal, Session};

/// A device's state saved at a client's disconnect.
#[derive(Debug)]
pub(crate) struct Retained {
    /// The device's full migration data (one STOP_COPY session).
    bytes: Vec<u8>,
    /// Whether the device ran (RUNNING, PRE_COPY or their P2P twins).
    running: bool,
}

impl Retained {
    /// Bytes kept.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Why a state was not kept or not restored.
#[derive(Debug, snafu::Snafu)]
pub(crate) enum RetainError {
    /// The device has no v2 migration interface to save or load its state with.
    #[snafu(display("the device cannot save its state (no v2 migration)"))]
    NoMigration,
    /// The device was in a state whose data is partial or undefined.
    #[snafu(display("the device was in {state:?}: nothing consistent to keep"))]
    Inconsistent {
        /// The state.
        state: MigState,
    },
    /// A step of the save or the load failed.
    #[snafu(display("{doing}: {source}"))]
    Step {
        /// The step.
        doing: &'static str,
        /// The device's error.
        source: MigrationError,
    },
}

fn step(doing: &'static str) -> impl FnOnce(MigrationError) -> RetainError {
    move |source| RetainError::Step { doing, source }
}

/// Walk to `state`, which opens a data session of kind `what`; its handle.
fn open(
    mig: &mut dyn MigrationDevice,
    state: MigState,
    doing: &'static str,
    what: &'static str,
) -> Result<DataStream, RetainError> {
    let t = mig.set_mig_state(state).map_err(step(doing))?;
    t.stream.ok_or(RetainError::Step {
        doing,
        source: MigrationError::NoStream { what, state },
    })
}

/// Save `device`'s whole state, leaving it stopped.
pub(crate) fn park(device: &mut dyn VfioDevice) -> Result<Retained, RetainError> {
    let mig = device.migration().ok_or(RetainError::NoMigration)?;
    let state = mig.mig_state();
    let running = matches!(
        state,
        MigState::Running | MigState::PreCopy | MigState::RunningP2p | MigState::PreCopyP2p
    );
    if matches!(state, MigState::Resuming | MigState::Error) {
        return Err(RetainError::Inconsistent { state });
    }
    mig.set_mig_state(MigState::Stop)
        .map_err(step("stopping the device"))?;
    let stream = open(mig, MigState::StopCopy, "entering STOP_COPY", "saving")?;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = mig
            .read_data(stream, &mut buf)
            .map_err(step("reading the device's state"))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    // STOP_COPY -> STOP ends the session.
    mig.set_mig_state(MigState::Stop)
        .map_err(step("stopping the device after the save"))?;
    Ok(Retained { bytes, running })
}

/// Load `kept` into `device` (fresh, on the new client's maps) and set it running again
/// if it ran.
pub(crate) fn restore(device: &mut dyn VfioDevice, kept: &Retained) -> Result<(), RetainError> {
    let mig = device.migration().ok_or(RetainError::NoMigration)?;
    let stream = open(mig, MigState::Resuming, "entering RESUMING", "resuming")?;
    mdev_core::write_all_data(mig, stream, &kept.bytes).map_err(step("loading the kept state"))?;
    // RESUMING -> STOP commits the state and ends the session.
    mig.set_mig_state(MigState::Stop)
        .map_err(step("committing the kept state"))?;
    if kept.running {
        mig.set_mig_state(MigState::Running)
            .map_err(step("setting the device running"))?;
    }
    Ok(())
}

impl Session {
    /// Give this client's device the state `kept` (the last client's, see
    /// [`super::retain`]) once it is built.
    pub(super) fn keep(&mut self, kept: Option<Retained>) {
        self.kept = kept;
    }

    /// Load the last client's device state into this client's device, once.
    pub(super) fn restore_kept(&mut self) -> Result<(), Refusal> {
        if self.kept.is_none() {
            return Ok(());
        }
        // Build the device first: a request that cannot have one yet keeps the state.
        self.dev()?;
        let (Some(k), Some(d)) = (self.kept.take(), self.dev.as_mut()) else {
            return Ok(());
        };
        match restore(&mut *d.device, &k) {
            Ok(()) => {
                info!(self.log, "the last client's device state restored"; "bytes" => k.len())
            }
            Err(e) => {
                warn!(self.log, "the last client's device state could not be restored: the device is at power-on"; "why" => %e)
            }
        }
        Ok(())
    }

    /// The client left: save the device's state for the next client (or hand on what
    /// this client never loaded: it only asked for info). `None` if there is nothing
    /// consistent to keep.
    pub(super) fn park(&mut self) -> Option<Retained> {
        if self.kept.is_some() {
            return self.kept.take();
        }
        let d = self.dev.as_mut()?;
        if let (Some(s), Some(mig)) = (self.stream.take(), d.device.migration()) {
            mig.close_data(s);
        }
        match park(&mut *d.device) {
            Ok(k) => {
                info!(self.log, "device state kept for the next client"; "bytes" => k.len());
                Some(k)
            }
            Err(e) => {
                warn!(self.log, "device state not kept: the next client gets a device at power-on"; "why" => %e);
                None
            }
        }
    }
}
