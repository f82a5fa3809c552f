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
//! ```
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

pub use device_io::Protocol;
pub use error::MigrationError;
pub use source::{migrate, FailPoint, Progress, SourceOptions, SourceReport};
pub use target::{incoming, TargetOptions, TargetReport};
