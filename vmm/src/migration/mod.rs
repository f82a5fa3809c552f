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
pub mod rate;
pub mod source;
pub mod target;
pub mod transport;

pub use control::DEFAULT_PEER_TIMEOUT;
pub use device_io::Protocol;
pub use error::MigrationError;
pub use source::{migrate, FailPoint, Progress, SourceOptions, SourceReport};
pub use target::{incoming, TargetOptions, TargetReport};

/// Where a side freezes itself with `SIGSTOP` (testing `--stop-self-at`: the peer must then
/// give up within its peer timeout).
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
}

impl StopPoint {
    /// Parse `handshake`, `round:N`, `switchover`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "handshake" => Some(Self::Handshake),
            "switchover" => Some(Self::Switchover),
            _ => s.strip_prefix("round:")?.parse().ok().map(Self::Round),
        }
    }

    /// Stop this whole process with `SIGSTOP` if `at` is `here` (until a `SIGCONT`).
    pub fn stop_if(at: Option<StopPoint>, here: StopPoint, log: &slog::Logger) {
        if at != Some(here) {
            return;
        }
        slog::warn!(log, "stopping this process (test hook)"; "at" => ?here);
        // SAFETY: raise() only sends a signal to the calling process; SIGSTOP cannot be
        // caught, so no handler of ours runs and no memory is touched.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}
