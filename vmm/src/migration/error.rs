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
    /// The peer showed no sign of life (no byte, no keep-alive) for the peer timeout.
    #[snafu(display("{peer} stopped {verb} during {phase} (nothing from it in {secs} s)"))]
    PeerTimeout {
        /// "target" or "source".
        peer: &'static str,
        /// What it stopped doing: "answering", "reading", "sending".
        verb: &'static str,
        /// The phase of the migration, e.g. "pre-copy round 2".
        phase: String,
        /// The peer timeout in seconds, as written.
        secs: String,
    },
    /// Reading from or writing to the peer failed.
    #[snafu(display("{what}: {source}"))]
    PeerIo {
        /// What was being done, naming the peer.
        what: String,
        /// The socket's error.
        source: std::io::Error,
    },
    /// A RAM channel ([`crate::migration::multifd`]) failed or carried something wrong.
    #[snafu(display("RAM channel {index}: {what}"))]
    Channel {
        /// The channel.
        index: u32,
        /// What was wrong.
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
    /// The migration failed and left the source device in ERROR; the VMM reset it (its
    /// context is back at power-on; the config space was replayed).
    #[snafu(display("{source}; the source device was left in ERROR and was reset (its context is back at power-on)"))]
    SourceDeviceReset {
        /// Why the migration failed.
        source: Box<MigrationError>,
    },
    /// The source handed the guest over and the target went silent before confirming it
    /// resumed: the target may run it (or will when it wakes), so the source keeps it
    /// paused and never runs it again.
    #[snafu(display("the guest was handed over to the target, which did not confirm it resumed ({why}); it stays paused here and runs on the target if that one lives"))]
    HandedOver {
        /// What the wait for the confirmation ended with.
        why: String,
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

impl MigrationError {
    /// This error inside an `io::Error` (kind `TimedOut` for a [`MigrationError::PeerTimeout`],
    /// `BrokenPipe` otherwise), for paths that speak `io` (the stream writer and reader).
    pub fn into_io(self) -> std::io::Error {
        let kind = match self {
            MigrationError::PeerTimeout { .. } => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::BrokenPipe,
        };
        std::io::Error::new(kind, self)
    }

    /// The migration error an `io::Error` carries (see [`MigrationError::into_io`]), or the
    /// `io::Error` itself as the cause of `what`.
    pub fn from_io(e: std::io::Error, what: impl FnOnce() -> String) -> Self {
        let kind = e.kind();
        if !e.get_ref().is_some_and(|i| i.is::<MigrationError>()) {
            return MigrationError::PeerIo {
                what: what(),
                source: e,
            };
        }
        match e.into_inner().map(|i| i.downcast::<MigrationError>()) {
            Some(Ok(inner)) => *inner,
            Some(Err(other)) => MigrationError::PeerIo {
                what: what(),
                source: std::io::Error::new(kind, other),
            },
            None => MigrationError::PeerIo {
                what: what(),
                source: kind.into(),
            },
        }
    }

    /// The error a stream failure hides, when the stream's transport failed with one of
    /// ours (a peer timeout on the socket): so the one-line message names the phase first.
    pub fn unwrap_transport(self) -> Self {
        match self {
            MigrationError::Stream {
                source: crate::stream::StreamError::Io { offset, source },
            } if source.get_ref().is_some_and(|i| i.is::<MigrationError>()) => {
                MigrationError::from_io(source, || format!("stream I/O failed at byte {offset}"))
            }
            other => other,
        }
    }

    /// Whether the peer timed out.
    pub fn is_peer_timeout(&self) -> bool {
        matches!(self, MigrationError::PeerTimeout { .. })
    }
}

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
