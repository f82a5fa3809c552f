//! Errors of the VMM.

use snafu::Snafu;

use crate::memory::MemoryError;
use crate::stream::StreamError;

/// Errors of VM creation, running, saving and restoring.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum VmmError {
    /// Guest RAM could not be set up.
    #[snafu(display("{source}"))]
    Memory {
        /// The cause.
        source: MemoryError,
    },
    /// The mdev type is unknown or has no free instance.
    #[snafu(display("{source}"))]
    Mdev {
        /// The cause.
        source: mdev_core::MdevError,
    },
    /// The device could not be created.
    #[snafu(display("cannot create the vGPU: {reason}"))]
    CreateDevice {
        /// The cause.
        reason: String,
    },
    /// A device request failed.
    #[snafu(display("device request failed while {doing}: {source}"))]
    Device {
        /// What the VMM was doing.
        doing: &'static str,
        /// The device's answer.
        source: mdev_core::DeviceError,
    },
    /// The device has no migration region.
    #[snafu(display("the device has no device-state (v1 migration) region"))]
    NoStateRegion,
    /// The device has no v2 migration interface.
    #[snafu(display("the device does not support v2 migration"))]
    NoMigration,
    /// A v2 migration request failed.
    #[snafu(display("migration request failed while {doing}: {source}"))]
    Migration {
        /// What the VMM was doing.
        doing: &'static str,
        /// The device's answer.
        source: mdev_core::MigrationError,
    },
    /// The guest program's parameters are invalid (the composer's check).
    #[snafu(display("{source}"))]
    Workload {
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A KVM request failed.
    #[snafu(display("KVM: {source}"))]
    Kvm {
        /// The cause.
        source: crate::kvm::KvmError,
    },
    /// The VMM's view of the device's PCI face failed.
    #[snafu(display("{source}"))]
    Pci {
        /// The cause.
        source: crate::pci::PciError,
    },
    /// The guest driver stopped making progress.
    #[snafu(display("the workload stalled at frame {frame}: {why}"))]
    Stalled {
        /// Frames completed.
        frame: u64,
        /// What was seen.
        why: String,
    },
    /// The guest driver gave up.
    #[snafu(display("the guest driver failed to start: {why}"))]
    DriverFailed {
        /// What was seen.
        why: String,
    },
    /// The stop point cannot be reached.
    #[snafu(display("cannot stop {what}: {why}"))]
    StopPoint {
        /// The requested stop.
        what: String,
        /// Why not.
        why: String,
    },
    /// The migration stream is bad.
    #[snafu(display("{source}"))]
    Stream {
        /// The cause.
        source: StreamError,
    },
    /// The stream is for another mdev type than the target's.
    #[snafu(display("the stream is for mdev type '{found}' but the target is '{expected}'"))]
    WrongType {
        /// Target's type.
        expected: String,
        /// Stream's type.
        found: String,
    },
    /// The saved config space is bad or incompatible.
    #[snafu(display("config space: {reason}"))]
    Config {
        /// The cause.
        reason: String,
    },
    /// The saved vCPU state is bad.
    #[snafu(display("{source}"))]
    Vcpu {
        /// The cause.
        source: crate::vcpu::SavedVcpuError,
    },
    /// The device rejected the migrated state.
    #[snafu(display("the target device rejected the state: {reason}"))]
    DeviceRejected {
        /// The device's reason.
        reason: String,
    },
}

/// `Result` with a [`VmmError`].
pub type Result<T, E = VmmError> = std::result::Result<T, E>;
