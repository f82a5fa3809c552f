//! What the source reports: live progress, the rounds, bytes by kind, where the downtime
//! went and where the guest stood at switchover.

use serde::Serialize;

/// The guest and device at the moment the source stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchoverPoint {
    /// Commands the device had executed.
    pub commands: u64,
    /// Frames completed.
    pub frames: u64,
    /// The engine was inside a batch.
    pub in_batch: bool,
    /// Byte offset inside the batch.
    pub batch_offset: u32,
    /// Latched interrupt identity bits.
    pub iir: u32,
    /// The vCPU had an interrupt pending.
    pub vcpu_irq_pending: bool,
}

/// Live figures, reported during the migration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Phase name.
    pub phase: &'static str,
    /// Pre-copy round.
    pub round: u32,
    /// Bytes on the wire so far.
    pub sent: u64,
    /// Bytes still to move (estimate).
    pub remaining: u64,
    /// Dirty rate in bytes/s.
    pub dirty_rate: f64,
    /// Bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Expected downtime if we switched over now, ms.
    pub expected_downtime_ms: f64,
    /// Expected total time, ms.
    pub expected_total_ms: f64,
    /// Engine throttle in percent.
    pub throttle_pct: u32,
}

/// One pre-copy round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundStats {
    /// Round number.
    pub round: u32,
    /// Guest pages sent (CPU- or DMA-dirtied).
    pub ram_pages: u64,
    /// Of those, pages only the device's DMA log reported.
    pub dma_only_pages: u64,
    /// Device pre-copy bytes (graphics memory pages).
    pub device_bytes: u64,
    /// Duration in ms.
    pub ms: f64,
    /// Dirty rate measured over the round, bytes/s.
    pub dirty_rate: f64,
}

/// Bytes by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bytes {
    /// Guest RAM page bytes.
    pub ram: u64,
    /// Guest RAM bytes found dirty only through the device's DMA log.
    pub dma_ram: u64,
    /// Device pre-copy bytes.
    pub device_precopy: u64,
    /// Device stop-copy bytes.
    pub device_stopcopy: u64,
    /// Config and vCPU state.
    pub state: u64,
    /// Everything on the wire.
    pub total: u64,
}

/// Where the downtime went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Breakdown {
    /// Stopping the device (pre-copy -> stop-copy).
    pub stop_ms: f64,
    /// Draining the device's final data and the last dirty pages into the stream.
    pub drain_ms: f64,
    /// Until the last byte was on the wire.
    pub wire_ms: f64,
    /// Target: from the last byte sent to the end record parsed (residue in flight).
    pub target_receive_ms: f64,
    /// Target: device validate + commit.
    pub target_load_ms: f64,
    /// Target: config replay, BAR map and routes.
    pub target_config_ms: f64,
    /// Target: vCPU restore and device RUNNING.
    pub target_resume_ms: f64,
}

/// What a successful migration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceReport {
    /// Protocol used.
    pub protocol: &'static str,
    /// Pre-copy rounds.
    pub rounds: Vec<RoundStats>,
    /// Bytes by kind.
    pub bytes: Bytes,
    /// Source vCPU stop to target vCPU resume, ms.
    pub downtime_ms: f64,
    /// How the downtime was measured, on the source's clock alone (never by subtracting
    /// the target's clock from the source's): its parts and the method, in words.
    pub downtime_clock: Option<crate::migration::clock::SourceDowntime>,
    /// Breakdown of the downtime.
    pub breakdown: Breakdown,
    /// Connect to target resume, ms.
    pub total_ms: f64,
    /// The downtime expected at switchover, ms.
    pub expected_downtime_ms: f64,
    /// Engine throttle at switchover, percent.
    pub throttle_pct: u32,
    /// Measured bandwidth, bytes/s.
    pub bandwidth: f64,
    /// Where the guest and device were at switchover.
    pub switchover: SwitchoverPoint,
    /// The device moves data during pre-copy (v2 without `VFIO_MIGRATION_PRE_COPY`: no,
    /// and all its data moves in stop-copy, inside the downtime).
    pub device_precopy: bool,
    /// The device has a DMA dirty log (without one, all backed guest RAM is re-sent at
    /// stop-copy).
    pub device_dma_log: bool,
}
