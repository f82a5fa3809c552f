//! The one error type of the KVM backend.

use std::time::Duration;

use snafu::Snafu;

use crate::memory::MemoryError;

/// Errors of the KVM vCPU backend.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[snafu(display("cannot open /dev/kvm: {source}"))]
    Open {
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// `KVM_CREATE_VM` failed.
    #[snafu(display("cannot create a KVM VM: {source}"))]
    CreateVm {
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl failed.
    #[snafu(display("{what} failed: {source}"))]
    Ioctl {
        /// The ioctl and what it was for.
        what: &'static str,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// A guest RAM region could not be registered as a memory slot.
    #[snafu(display("cannot register guest RAM {gpa:#x}+{size:#x} as KVM slot {slot}: {source}"))]
    MemorySlot {
        /// Slot number.
        slot: u32,
        /// First guest-physical byte.
        gpa: u64,
        /// Length in bytes.
        size: u64,
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// The host address of a guest RAM region could not be found.
    #[snafu(display("guest RAM region at {gpa:#x} has no host mapping"))]
    HostAddress {
        /// First guest-physical byte of the region.
        gpa: u64,
    },
    /// The boot tables do not fit where they were asked to go.
    #[snafu(display(
        "boot tables at {gpa:#x} must be 4 KiB aligned with {len:#x} bytes of guest RAM behind them (RAM size {ram:#x})"
    ))]
    BootTables {
        /// Where the tables were asked to go.
        gpa: u64,
        /// Bytes the tables need.
        len: u64,
        /// Guest RAM size.
        ram: u64,
    },
    /// Writing boot data into guest RAM failed.
    #[snafu(display("cannot write {what} into guest RAM: {source}"))]
    GuestWrite {
        /// What was written.
        what: &'static str,
        /// The cause.
        source: MemoryError,
    },
    /// The vCPU was already handed to a thread.
    #[snafu(display("the vCPU is already running on its thread"))]
    AlreadySpawned,
    /// The vCPU thread could not be started.
    #[snafu(display("cannot start the vCPU thread: {source}"))]
    Spawn {
        /// The cause.
        source: std::io::Error,
    },
    /// The kick signal could not be installed or sent.
    #[snafu(display("cannot {what} the vCPU kick signal: {source}"))]
    Signal {
        /// `install` or `send`.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The vCPU did not park before the deadline.
    #[snafu(display("the vCPU did not park within {waited:?}"))]
    PauseTimeout {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The operation needs a parked vCPU.
    #[snafu(display("the vCPU must be paused to {what}"))]
    NotPaused {
        /// The operation.
        what: &'static str,
    },
    /// The vCPU thread has ended.
    #[snafu(display("the vCPU thread has ended: {reason}"))]
    VcpuEnded {
        /// Why it ended (the error it ended with, or "stopped").
        reason: String,
    },
    /// `KVM_RUN` failed.
    #[snafu(display("KVM_RUN failed: {source}"))]
    Run {
        /// The kernel's answer.
        source: kvm_ioctls::Error,
    },
    /// The guest made an exit this backend cannot handle (shutdown, internal error, ...).
    #[snafu(display("unexpected vCPU exit {exit} at rip {rip:#x}"))]
    UnexpectedExit {
        /// The exit and its details.
        exit: String,
        /// The guest's instruction pointer when it happened (0 if unreadable).
        rip: u64,
    },
    /// The vCPU thread panicked (a bug in an exit handler).
    #[snafu(display("the vCPU thread panicked"))]
    Panicked,
    /// Saved vCPU state does not start with the record's magic.
    #[snafu(display("vCPU state has magic {found:02x?}, not a KVM vCPU state record"))]
    StateMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// Saved vCPU state has an unsupported version.
    #[snafu(display("vCPU state version {found} is not supported (expected {expected})"))]
    StateVersion {
        /// Version found.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// Saved vCPU state is shorter than its contents need.
    #[snafu(display(
        "vCPU state is truncated: {what} needs {need} bytes at offset {offset}, {have} remain"
    ))]
    StateTruncated {
        /// What was being read.
        what: &'static str,
        /// Offset of the read.
        offset: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The record's total length does not match the input.
    #[snafu(display("vCPU state declares {declared} bytes but has {actual}"))]
    StateLength {
        /// Length in the header.
        declared: u64,
        /// Length of the input.
        actual: u64,
    },
    /// A part has a length that does not match its structure.
    #[snafu(display("vCPU state part {part} is {found} bytes, expected {expected}"))]
    StatePart {
        /// The part.
        part: &'static str,
        /// Length found.
        found: usize,
        /// Length expected (for MSRs: a multiple of this entry size).
        expected: usize,
    },
    /// More MSRs than any host would report.
    #[snafu(display("vCPU state holds {count} MSRs, more than the cap of {cap}"))]
    StateTooManyMsrs {
        /// MSRs found.
        count: usize,
        /// The cap.
        cap: usize,
    },
    /// Bytes after the last part.
    #[snafu(display("vCPU state has {extra} bytes after its last part"))]
    StateTrailing {
        /// Bytes left over.
        extra: usize,
    },
}

/// `Result` with a [`KvmError`].
pub type Result<T, E = KvmError> = std::result::Result<T, E>;
