//! Live migration between two VMMs over TCP.
//!
//! ```text
//!  source                                         target
//!    |  connect ------------------------------------> accept
//!    |  <------------------- Hello (mdev type, versions, features)
//!    |  Start::Go / Start::Refuse ------------------>   (refuse: nothing moves)
//!    |  stream header ------------------------------>   create VM + device, RESUMING
//!    |  round 0: all RAM pages, device pre-copy ---->   RAM -> memory, chunks -> device
//!    |  round n: CPU-dirty + DMA-dirty pages, ------>   (staged in the device)
//!    |           device dirty graphics pages
//!    |  [converged] vCPU stop, SWITCHOVER ---------->
//!    |  device STOP_COPY, residue, DEVICE_END, ----->
//!    |  CONFIG, VCPU, END(digest) ------------------>   verify digest, device STOP (commit),
//!    |                                                  config replay, vCPU, RUNNING
//!    |  <---------------- Ack::Resumed{t, breakdown}   (or Ack::Rejected: source resumes)
//!    |  Summary ------------------------------------>
//!    |  <--------------------------------- Outcome     (after the workload's end)
//!    |  <~~~~~~~~~~~~~~~~~~~~~ KeepAlive ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~>
//! ```
//!
//! Nothing waits on the peer without a deadline: every read and write of the socket, on
//! every thread, gives up once the peer has shown no sign of life (no byte, no message, no
//! keep-alive) for the peer timeout ([`clock::Liveness`]). Each side sends keep-alives
//! while it has nothing else to say ([`control::KeepAlive`]), so a live peer that is busy
//! or idle is never taken for a dead one. A source that gives up resumes its device and
//! guest; a target discards its VM.
//!
//! The stream is the snapshot format ([`crate::stream`]); control messages are
//! [`control`]. The source drives the device through the v1 region or v2
//! ([`device_io::Protocol`]); DMA dirty pages come from the IOMMU-style container query or
//! v2 DMA logging ([`dirty`]), merged with the CPU dirty log.

pub mod clock;
pub mod control;
pub mod device_io;
pub mod dirty;
pub mod error;
pub mod multifd;
pub mod rate;
pub mod source;
pub mod target;
pub mod transport;

pub use control::DEFAULT_PEER_TIMEOUT;
pub use device_io::Protocol;
pub use error::MigrationError;
pub use source::{migrate, FailPoint, Progress, SourceOptions, SourceReport};
pub use target::{incoming, incoming_prepared, prepare, PreparedVm, TargetOptions, TargetReport};

/// A point of the migration where a side can fault itself (testing `--stop-self-at` and
/// `--kill-self-at`: the peer must then give up within its peer timeout, or see the
/// connection die, and the guest must run on exactly one side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPoint {
    /// Target: accepted, before its hello. Source: hello read, before its start.
    Handshake,
    /// Target: at the SYNC of pre-copy round N, before answering. Source: at the end of
    /// round N, before its SYNC.
    Round(u32),
    /// Target: at the SWITCHOVER record (the source's vCPU is stopped). Source: right after
    /// its vCPU stopped and the SWITCHOVER record is on the wire.
    Switchover,
    /// Target: the whole state verified and loaded, PREPARED sent, before the handover.
    /// Source: PREPARED read, before it hands over.
    Prepared,
    /// Source: HANDOVER sent (it will not run the guest again), before the target's
    /// RESUMED. Target: HANDOVER read, before it resumes the guest.
    Handover,
    /// Target: the guest resumed, before RESUMED is sent (the source has not heard it).
    Resumed,
}

/// A fault a side injects into itself at a [`StopPoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfFault {
    /// Where.
    pub at: StopPoint,
    /// `SIGKILL` (the process dies) instead of `SIGSTOP` (it freezes until `SIGCONT`).
    pub kill: bool,
}

impl SelfFault {
    /// Freeze at `at`.
    pub fn stop(at: StopPoint) -> Self {
        Self { at, kill: false }
    }

    /// Die at `at`.
    pub fn kill(at: StopPoint) -> Self {
        Self { at, kill: true }
    }
}

impl StopPoint {
    /// Parse `handshake`, `round:N`, `switchover`, `prepared`, `handover`, `resumed`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "handshake" => Some(Self::Handshake),
            "switchover" => Some(Self::Switchover),
            "prepared" => Some(Self::Prepared),
            "handover" => Some(Self::Handover),
            "resumed" => Some(Self::Resumed),
            _ => s.strip_prefix("round:")?.parse().ok().map(Self::Round),
        }
    }

    /// Stop this whole process with `SIGSTOP` (until a `SIGCONT`), or kill it with
    /// `SIGKILL`, if `fault` is at `here`.
    pub fn stop_if(fault: Option<SelfFault>, here: StopPoint, log: &slog::Logger) {
        let Some(f) = fault.filter(|f| f.at == here) else {
            return;
        };
        slog::warn!(log, "faulting this process (test hook)"; "at" => ?here, "kill" => f.kill);
        let sig = if f.kill { libc::SIGKILL } else { libc::SIGSTOP };
        // SAFETY: raise() only sends a signal to the calling process; SIGSTOP and SIGKILL
        // cannot be caught, so no handler of ours runs and no memory is touched.
        unsafe {
            libc::raise(sig);
        }
    }
}
