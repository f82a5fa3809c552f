//! How to migrate: the options, the injected failure and the switchover point, and their
//! parsing.

use std::time::Duration;

use crate::migration::control;
use crate::migration::device_io::Protocol;

/// Where to inject a failure (tests and `--inject-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// After the handshake, before any data.
    Setup,
    /// At the start of pre-copy round N (0-based).
    Round(u32),
    /// During stop-and-copy, after the device stopped, before the end record.
    StopCopy,
    /// On the target, after the stream verified, before resume.
    BeforeResume,
}

impl FailPoint {
    /// Parse `setup`, `round:N`, `stop-copy`, `before-resume`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "setup" => Some(Self::Setup),
            "stop-copy" => Some(Self::StopCopy),
            "before-resume" => Some(Self::BeforeResume),
            _ => s.strip_prefix("round:")?.parse().ok().map(Self::Round),
        }
    }
}

/// Where, exactly, to put the switchover (testing): the source steps the guest one
/// command at a time until the condition holds, then stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchoverAt {
    /// As soon as pre-copy converged.
    Converged,
    /// Inside a batch buffer, past its first command.
    MidBatch,
    /// With an interrupt raised by the device and not yet handled by the guest.
    IrqPending,
    /// Right after one more frame completed (its checksum and seqno were written by DMA
    /// after the last pre-copy round: only DMA tracking can carry them).
    NextFrame,
}

impl SwitchoverAt {
    /// Parse `converged`, `mid-batch`, `irq-pending`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "converged" => Some(Self::Converged),
            "mid-batch" => Some(Self::MidBatch),
            "irq-pending" => Some(Self::IrqPending),
            "next-frame" => Some(Self::NextFrame),
            _ => None,
        }
    }
}

/// How to migrate.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Device protocol.
    pub protocol: Protocol,
    /// Stream rate cap in bytes/s.
    pub bandwidth: Option<u64>,
    /// Downtime limit.
    pub downtime_limit: Duration,
    /// Most pre-copy rounds before giving up (or throttling harder).
    pub max_rounds: u32,
    /// Throttle the vGPU's engine when the dirty rate outruns the bandwidth.
    pub auto_converge: bool,
    /// Inject a failure.
    pub fail_at: Option<FailPoint>,
    /// Where to put the switchover.
    pub switchover_at: SwitchoverAt,
    /// How long to keep trying to reach the target.
    pub connect_timeout: Duration,
    /// Give up on a target that shows no sign of life for this long, at any phase (the
    /// guest and device then run on here).
    pub peer_timeout: Duration,
    /// Freeze this process there (testing).
    pub stop_self_at: Option<crate::migration::SelfFault>,
    /// Testing: instead of running the guest whenever the link is busy (as fast as this
    /// machine goes), run exactly this many units of its hardware's work (device commands)
    /// at the start of each pre-copy round, scaled down by the auto-converge throttle. What
    /// a round dirties then depends on events, not on the machine's speed, so whether
    /// pre-copy converges does not either.
    pub guest_work_per_round: Option<u32>,
    /// RAM channels beside the main stream ([`crate::migration::multifd`]); 0: guest RAM
    /// goes on the main stream.
    pub channels: u32,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            protocol: Protocol::Region,
            bandwidth: None,
            downtime_limit: Duration::from_millis(300),
            max_rounds: 30,
            auto_converge: false,
            fail_at: None,
            switchover_at: SwitchoverAt::Converged,
            connect_timeout: Duration::from_secs(10),
            peer_timeout: control::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            guest_work_per_round: None,
            channels: 0,
        }
    }
}
