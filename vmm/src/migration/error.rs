//! Errors of live migration.

use snafu::Snafu;

/// Why a migration failed. On the source, every one of these leaves the guest running as
/// before; on the target, everything received is discarded.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum MigrationError {
    /// The peer is gone or the connection broke.
    #[snafu(display("{what}"))]
    Peer {
        /// What happened.
        what: String,
    },
    /// The peer spoke something else.
    #[snafu(display("protocol error: {what}"))]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// Source and target cannot migrate to each other.
    #[snafu(display("incompatible target: {why}"))]
    Incompatible {
        /// Why.
        why: String,
    },
    /// The target rejected the stream.
    #[snafu(display("the target rejected the migration: {reason}"))]
    Rejected {
        /// The target's reason.
        reason: String,
    },
    /// Pre-copy did not converge within the round limit.
    #[snafu(display("pre-copy did not converge in {rounds} rounds: {remaining} bytes remain, {limit_bytes} fit the downtime limit at {bandwidth_mbps:.0} MB/s (dirty rate {dirty_mbps:.0} MB/s); try --auto-converge, more bandwidth or a larger --downtime-limit"))]
    NoConvergence {
        /// Rounds run.
        rounds: u32,
        /// Bytes left.
        remaining: u64,
        /// Bytes that fit the limit.
        limit_bytes: u64,
        /// Measured bandwidth.
        bandwidth_mbps: f64,
        /// Measured dirty rate.
        dirty_mbps: f64,
    },
    /// A failure injected for testing.
    #[snafu(display("injected failure at {point}"))]
    Injected {
        /// Where.
        point: String,
    },
    /// The requested switchover point never came (the workload ended first).
    #[snafu(display("the switchover point {what} was not reached: the workload ended first"))]
    Position {
        /// The point asked for.
        what: String,
    },
    /// The VMM failed.
    #[snafu(display("{source}"))]
    Vmm {
        /// Cause.
        source: crate::VmmError,
    },
    /// A device request failed.
    #[snafu(display("device request failed while {doing}: {reason}"))]
    Device {
        /// What was being done.
        doing: &'static str,
        /// The device's answer.
        reason: String,
    },
    /// The stream failed.
    #[snafu(display("{source}"))]
    Stream {
        /// Cause.
        source: crate::stream::StreamError,
    },
}

/// `Result` with a [`MigrationError`].
pub type Result<T, E = MigrationError> = std::result::Result<T, E>;

impl From<crate::VmmError> for MigrationError {
    fn from(source: crate::VmmError) -> Self {
        MigrationError::Vmm { source }
    }
}

impl From<crate::stream::StreamError> for MigrationError {
    fn from(source: crate::stream::StreamError) -> Self {
        MigrationError::Stream { source }
    }
}
