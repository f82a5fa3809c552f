//! The source side: pre-copy while the guest runs, then stop-and-copy within the downtime
//! limit; on any failure the guest goes on as if nothing had been tried.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mdev_core::DirtyBitmap;
use serde::Serialize;
use slog::{debug, info, warn};
use state_region::format::{FORMAT_MAJOR, FORMAT_MINOR};

use super::clock::{
    monotonic_ns, ms_between, set_slices, DeadlineReader, DeadlineWriter, Liveness,
};
use super::control::{self, features, Ack, FromTarget, Hello, Start};
use super::device_io::{DeviceIo, Protocol};
use super::dirty::DmaTracker;
use super::error::{MigrationError, Result};
use super::transport::ChannelWriter;
use super::StopPoint;
use crate::memory::{self, PAGE_SIZE};
use crate::stream::{StreamWriter, STREAM_MAJOR, STREAM_MINOR};
use crate::vm::Vm;

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
    pub stop_self_at: Option<StopPoint>,
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
        }
    }
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
}

/// Step the guest one device command at a time until `at` holds (bounded).
fn position(vm: &mut Vm, at: SwitchoverAt) -> Result<()> {
    if at == SwitchoverAt::Converged {
        return Ok(());
    }
    let start_frames = vm.completed_frames();
    for _ in 0..200_000 {
        let holds = match at {
            SwitchoverAt::MidBatch => {
                let p = vm.hardware().position();
                p.mid_work && p.offset > 0
            }
            SwitchoverAt::IrqPending => vm.vcpu().has_pending(),
            SwitchoverAt::NextFrame => vm.completed_frames() > start_frames,
            SwitchoverAt::Converged => true,
        };
        if holds {
            return Ok(());
        }
        // One device command; interrupts it raises are queued to the vCPU but not run. When
        // the device has nothing to do, the guest runs a step to give it work.
        if vm.step_device(1) == 0 {
            vm.step(0);
        }
    }
    Err(MigrationError::Position {
        what: format!("{at:?}"),
    })
}

fn switchover_point(vm: &mut Vm) -> SwitchoverPoint {
    let p = vm.hardware().position();
    SwitchoverPoint {
        commands: vm.command_count(),
        frames: vm.completed_frames(),
        in_batch: p.mid_work,
        batch_offset: p.offset,
        iir: p.irq_status,
        vcpu_irq_pending: vm.vcpu().has_pending(),
    }
}

/// Rounds auto-converge may add to `max_rounds` while its throttle takes effect.
const AUTO_CONVERGE_EXTRA_ROUNDS: u32 = 30;
/// Rounds below which pre-copy goes on while each round halves the remainder.
const MAX_EXTRA_ROUNDS: u32 = 6;
/// Bytes of consecutive pages per RAM record.
const RAM_RECORD: usize = 4 << 20;
/// Backlog above which the source runs the guest instead of queueing more.
const HIGH_WATER: u64 = 16 << 20;
/// Assumed fixed device state when the protocol cannot say (v1 has no size query).
const V1_FIXED_ESTIMATE: u64 = 1 << 20;
/// Assumed target load speed for the estimate, bytes/s.
const TARGET_LOAD_RATE: f64 = 2e9;
/// Fixed target work for the estimate, ms.
const TARGET_FIXED_MS: f64 = 1.0;

thread_local! {
    /// Time the guest ran on this thread during the current round (see [`guest_step`]).
    static GUEST_TIME: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// One guest step, with its time accounted: a round's transfer time is its wall time less
/// the time the guest held this thread.
fn guest_step(vm: &mut Vm, budget: usize) -> usize {
    let t = Instant::now();
    let (_, ran) = vm.step(budget);
    GUEST_TIME.with(|g| g.set(g.get() + t.elapsed()));
    ran
}

fn take_guest_time() -> Duration {
    GUEST_TIME.with(|g| g.replace(Duration::ZERO))
}

/// Run `vm` on the main thread until the sender's backlog is below `max`.
fn run_while_busy(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    max: u64,
) -> std::io::Result<()> {
    w.get_mut().flush()?;
    while w.get_mut().backlog() > max {
        // One device command at a time: a long guest slice would leave the link idle. On
        // this simulation the guest, the sender and (in tests and benches) the target share
        // the host's cores; the guest gets half of this thread while the link is busy, as
        // a guest on its own cores would leave the migration thread its share.
        let t = Instant::now();
        let ran = guest_step(vm, 1);
        let spent = t.elapsed();
        if ran == 0 {
            std::thread::sleep(Duration::from_micros(100));
        } else {
            std::thread::sleep(spent.min(Duration::from_millis(5)));
        }
        if let Some(e) = w.get_mut().peer_error_now() {
            return Err(e);
        }
    }
    Ok(())
}

/// What [`send_pages`] sent.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    /// Non-zero pages sent whole.
    nonzero: u64,
    /// Zero pages sent as zero runs (or skipped).
    zero: u64,
    /// Of the non-zero pages, those only the DMA log reported.
    dma_nonzero: u64,
}

impl Sent {
    /// Wire bytes per page processed (a zero run costs a 24-byte record, shared by a run).
    fn bytes_per_page(&self) -> Option<f64> {
        let n = self.nonzero + self.zero;
        (n > 0).then(|| (self.nonzero * PAGE_SIZE + self.zero * 24) as f64 / n as f64)
    }
}

/// Send the pages of `pages` in runs; zero pages as zero runs when `zeros` is set (the
/// target's RAM starts zeroed, so round 0 skips them).
fn send_pages(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    pages: &DirtyBitmap,
    dma_only: &DirtyBitmap,
    zeros: bool,
    running: bool,
) -> Result<Sent> {
    let mut sent = Sent::default();
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0;
    let mut zrun: Option<(u64, u64)> = None;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let flush =
        |w: &mut StreamWriter<ChannelWriter>, start: u64, run: &mut Vec<u8>| -> Result<()> {
            if !run.is_empty() {
                w.ram_pages(start, run)?;
                run.clear();
            }
            Ok(())
        };
    let flush_zero =
        |w: &mut StreamWriter<ChannelWriter>, z: &mut Option<(u64, u64)>| -> Result<()> {
            if let Some((gpa, n)) = z.take() {
                w.ram_zero(gpa, n)?;
            }
            Ok(())
        };
    for gpa in pages.iter_dirty() {
        // A page that does not continue the run ends it.
        if !run.is_empty() && run_start + run.len() as u64 != gpa {
            flush(w, run_start, &mut run)?;
        }
        if run.is_empty() {
            run_start = gpa;
        }
        // The page lands in `page` and is copied onto the run only if it is not zero
        // (zeroing room in the run first would cost a memset per page).
        memory::read(vm.memory(), gpa, &mut page).map_err(|e| MigrationError::Vmm {
            source: crate::VmmError::Memory { source: e },
        })?;
        if memory::is_zero(&page) {
            flush(w, run_start, &mut run)?;
            sent.zero += 1;
            if zeros {
                match &mut zrun {
                    Some((start, n)) if *start + *n * PAGE_SIZE == gpa => *n += 1,
                    _ => {
                        flush_zero(w, &mut zrun)?;
                        zrun = Some((gpa, 1));
                    }
                }
            }
            continue;
        }
        flush_zero(w, &mut zrun)?;
        run.extend_from_slice(&page);
        sent.nonzero += 1;
        if dma_only.is_dirty(gpa) {
            sent.dma_nonzero += 1;
        }
        if run.len() >= RAM_RECORD {
            flush(w, run_start, &mut run)?;
            if running {
                run_while_busy(vm, w, HIGH_WATER).map_err(peer)?;
            }
        }
    }
    flush(w, run_start, &mut run)?;
    flush_zero(w, &mut zrun)?;
    Ok(sent)
}

fn peer(e: std::io::Error) -> MigrationError {
    MigrationError::from_io(e, || "connection to the target lost".into())
}

/// Check the target's hello against this source.
pub fn check_hello(vm: &Vm, hello: &Hello, protocol: Protocol) -> std::result::Result<(), String> {
    if hello.mdev_type != vm.mdev_type() {
        return Err(format!(
            "the target's vGPU is mdev type '{}', the source's is '{}'",
            hello.mdev_type,
            vm.mdev_type()
        ));
    }
    if hello.stream_version.0 != STREAM_MAJOR {
        return Err(format!(
            "the target reads stream format {}.x, the source writes {}.{}",
            hello.stream_version.0, STREAM_MAJOR, STREAM_MINOR
        ));
    }
    if hello.context_version.0 != FORMAT_MAJOR {
        return Err(format!(
            "the target's device reads context format {}.x, the source's writes {}.{}",
            hello.context_version.0, FORMAT_MAJOR, FORMAT_MINOR
        ));
    }
    let need = match protocol {
        Protocol::Region => features::PROTOCOL_REGION,
        Protocol::V2 => features::PROTOCOL_V2,
    };
    if hello.features & features::KEEPALIVE == 0 {
        return Err("the target sends no keep-alives (an older vgpu-migrate)".into());
    }
    if hello.features & need == 0 {
        return Err(format!(
            "the target does not accept the {} protocol",
            protocol.name()
        ));
    }
    Ok(())
}

/// The target's messages, read on a thread.
pub use super::control::TargetEvents;

/// Wait for the target's final outcome (it runs the workload to its end first; its
/// keep-alives say it is alive meanwhile), at most the peer timeout after its last sign of
/// life.
pub fn wait_outcome(events: &TargetEvents) -> Result<control::Outcome> {
    events
        .liveness()
        .set_phase("the wait for its outcome (it runs the workload)");
    loop {
        if let FromTarget::Outcome(o) = events.next()? {
            return Ok(o);
        }
    }
}

/// Send a SYNC and keep the guest running until the target has consumed everything sent.
fn sync(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    events: &TargetEvents,
    seq: u64,
    opts: &SourceOptions,
) -> Result<()> {
    if let Ok(round) = u32::try_from(seq) {
        StopPoint::stop_if(opts.stop_self_at, StopPoint::Round(round), vm.log());
    }
    w.sync(seq)?;
    w.get_mut().flush().map_err(peer)?;
    let since = monotonic_ns();
    loop {
        match events.poll(since)? {
            Some(FromTarget::Synced { seq: s }) if s == seq => break,
            Some(FromTarget::Ack(Ack::Rejected { reason })) => {
                return Err(MigrationError::Rejected { reason })
            }
            Some(_) => {}
            None => {
                if let Some(e) = w.get_mut().peer_error_now() {
                    return Err(peer(e));
                }
                // Small steps, so the answer is noticed promptly.
                let ran = guest_step(vm, SYNC_BUDGET);
                if ran == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
    events
        .liveness()
        .set_phase(format!("pre-copy round {}", seq + 1));
    Ok(())
}

/// Device commands per guest step while waiting for the target.
const SYNC_BUDGET: usize = 4;

/// Migrate `vm` to the target at `url`. On error the VM runs on as before. On success the
/// target's message channel is returned, on which its final outcome may arrive.
pub fn migrate(
    vm: &mut Vm,
    url: &str,
    opts: &SourceOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(SourceReport, TargetEvents)> {
    if vm.on_kvm()
        && !matches!(
            opts.switchover_at,
            SwitchoverAt::Converged | SwitchoverAt::NextFrame
        )
    {
        return Err(MigrationError::Position {
            what: format!(
                "{:?} (a KVM guest runs on its own; only converged and next-frame apply)",
                opts.switchover_at
            ),
        });
    }
    let t_start = Instant::now();
    let sock = super::transport::connect(url, opts.connect_timeout)?;
    let live = Liveness::new("target", opts.peer_timeout);
    set_slices(&sock, &live)?;
    let clone = || {
        sock.try_clone().map_err(|e| MigrationError::PeerIo {
            what: "cannot clone the socket".into(),
            source: e,
        })
    };
    let mut input = DeadlineReader::new(clone()?, live.clone());
    let mut ctrl = DeadlineWriter::new(clone()?, live.clone());
    let hello: Hello = control::recv(&mut input, "target's hello")?;
    if let Err(why) = check_hello(vm, &hello, opts.protocol) {
        let _ = control::send(
            &mut ctrl,
            &Start::Refuse {
                reason: why.clone(),
            },
        );
        return Err(MigrationError::Incompatible { why });
    }
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Handshake, vm.log());
    control::send(
        &mut ctrl,
        &Start::Go {
            protocol: opts.protocol.name().into(),
        },
    )?;
    info!(vm.log(), "migration: handshake done"; "target" => url, "protocol" => opts.protocol.name());
    live.set_phase("pre-copy round 0");
    let events = TargetEvents::spawn(input, live);

    let mut dio = DeviceIo::new(vm, opts.protocol)?;
    let mut dma: Option<DmaTracker> = None;
    let result = run_migration(
        vm, sock, &events, opts, &mut dio, &mut dma, t_start, progress,
    );
    if let Some(d) = dma.as_mut() {
        d.stop(vm);
    }
    match result {
        Ok(r) => {
            // The figures only the source knows, for the target's report (best effort).
            let mut out = ctrl;
            let _ = control::send(
                &mut out,
                &control::Summary {
                    rounds: r.rounds.len(),
                    total_ms: r.total_ms,
                    downtime_ms: r.downtime_ms,
                    bytes_total: r.bytes.total,
                    breakdown: serde_json::to_value(&r.breakdown).unwrap_or_default(),
                },
            );
            Ok((r, events))
        }
        Err(e) => {
            // A stream write that timed out says so first, not as a stream error.
            let e = e.unwrap_transport();
            ctrl.shutdown();
            warn!(vm.log(), "migration failed; the source keeps running"; "error" => %e);
            vm.hardware().set_throttle(0);
            // Back to RUNNING, whatever state the device reached (pre-copy or stop-copy).
            if let Err(e2) = dio.run(vm) {
                warn!(vm.log(), "could not resume the source device"; "error" => %e2);
            }
            // A KVM guest paused for the switchover runs on.
            if vm.on_kvm() {
                if let Err(e2) = vm.start_kvm() {
                    warn!(vm.log(), "could not resume the source vCPU"; "error" => %e2);
                }
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_migration(
    vm: &mut Vm,
    sock: TcpStream,
    events: &TargetEvents,
    opts: &SourceOptions,
    dio: &mut DeviceIo,
    dma: &mut Option<DmaTracker>,
    t_start: Instant,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SourceReport> {
    if opts.fail_at == Some(FailPoint::Setup) {
        return Err(MigrationError::Injected {
            point: "setup".into(),
        });
    }
    let writer = ChannelWriter::spawn(sock, opts.bandwidth, events.liveness().clone());
    let counters = writer.counters();
    let mut w = StreamWriter::new(writer, &crate::snapshot::header(vm))?;
    let mut report = SourceReport {
        protocol: opts.protocol.name(),
        ..Default::default()
    };

    // Setup: device pre-copy, DMA log, a clean CPU log. Round 0 sends every page.
    dio.start_precopy(vm)?;
    *dma = Some(DmaTracker::start(vm, opts.protocol)?);
    // A KVM guest runs on its own vCPU from here on, while this thread migrates it.
    if vm.on_kvm() {
        vm.start_kvm()?;
    }
    let _ = vm.harvest_cpu_dirty()?;
    let ram = memory::size(vm.memory());
    // Round 0: every page the host ever backed (a page never backed has never been written
    // by anyone and is zero on the fresh target).
    let mut pending = memory::maybe_written(vm.memory());
    let mut dma_only = DirtyBitmap::new(0, ram, PAGE_SIZE).map_err(|e| MigrationError::Device {
        doing: "allocating the dirty bitmap",
        reason: e.to_string(),
    })?;
    let mut throttle = 0u32;
    let limit_s = opts.downtime_limit.as_secs_f64();
    let mut round = 0u32;
    let mut expected_downtime_ms;
    let mut bandwidth = opts.bandwidth.map_or(1e9, |b| b as f64);
    let mut measured = false;
    let mut prev_remaining = u64::MAX;
    // Until a round has shown otherwise, every dirty page is assumed to cost a full page.
    let mut ram_bytes_per_page = PAGE_SIZE as f64;
    loop {
        if opts.fail_at == Some(FailPoint::Round(round)) {
            return Err(MigrationError::Injected {
                point: format!("pre-copy round {round}"),
            });
        }
        let t_round = Instant::now();
        let _ = take_guest_time();
        let sent_before = counters.sent.load(std::sync::atomic::Ordering::Relaxed);
        let dma_pages = dma_only
            .iter_dirty()
            .filter(|a| pending.is_dirty(*a))
            .count() as u64;
        let sent = send_pages(vm, &mut w, &pending, &dma_only, round > 0, true)?;
        let pages = sent.nonzero;
        if round > 0 {
            if let Some(b) = sent.bytes_per_page() {
                ram_bytes_per_page = b;
            }
        }
        let mut dev_bytes = 0;
        while let Some(n) = dio.next_chunk_to(vm, &mut |c| w.device_data(c))? {
            dev_bytes += n;
            run_while_busy(vm, &mut w, HIGH_WATER).map_err(peer)?;
        }
        // Let the link drain and the target catch up while the guest runs: the next
        // harvest then covers what was dirtied while this round was in flight, and the
        // round's time is the end-to-end time.
        sync(vm, &mut w, events, u64::from(round), opts)?;
        let round_s = t_round.elapsed().as_secs_f64().max(1e-6);

        // What is dirty now: CPU log, device DMA log, device pre-copy data.
        let cpu = vm.harvest_cpu_dirty()?;
        let dev_dma = dma.as_mut().map(|d| d.harvest(vm)).transpose()?;
        pending = cpu.clone();
        dma_only.clear();
        if let Some(d) = &dev_dma {
            for a in d.iter_dirty() {
                if !cpu.is_dirty(a) {
                    dma_only.mark(a);
                }
            }
            pending.merge(d);
        }
        let dev_pending = dio.pending(vm, false)?;
        // v2 says how long the stop-copy stream would be now (dirty graphics pages and the
        // fixed sections); v1 has no such query: its pending bytes plus an assumed fixed part.
        let dev_remaining = dio
            .stop_copy_estimate(vm)
            .unwrap_or(dev_pending + V1_FIXED_ESTIMATE);
        let remaining = (pending.count() as f64 * ram_bytes_per_page) as u64 + dev_remaining;
        let sent_round = counters.sent.load(std::sync::atomic::Ordering::Relaxed) - sent_before;
        // End-to-end rate of this round (to the target having consumed it), when the round
        // moved enough to measure; else the last estimate, the cap, or 1 GB/s.
        if sent_round >= 1 << 20 {
            // Transfer time: the round less the time the guest held this thread (bounded
            // below, as the guest and the transfer partly overlap on other cores). The best
            // round is the closest to the link's capacity: noise only slows rounds.
            let guest = take_guest_time().as_secs_f64();
            let transfer_s = (round_s - guest).max(round_s / 4.0);
            let r = sent_round as f64 / transfer_s;
            bandwidth = if measured { bandwidth.max(r) } else { r };
            measured = true;
        }
        if let Some(cap) = opts.bandwidth {
            bandwidth = bandwidth.min(cap as f64);
        }
        let dirty_rate = (pending.count() * PAGE_SIZE + dev_pending) as f64 / round_s;
        expected_downtime_ms = remaining as f64 / bandwidth * 1e3
            + remaining as f64 / TARGET_LOAD_RATE * 1e3
            + TARGET_FIXED_MS;
        report.bytes.dma_ram += sent.dma_nonzero * PAGE_SIZE;
        report.rounds.push(RoundStats {
            round,
            ram_pages: pages,
            dma_only_pages: dma_pages,
            device_bytes: dev_bytes,
            ms: round_s * 1e3,
            dirty_rate,
        });
        report.bytes.device_precopy += dev_bytes;
        let p = Progress {
            phase: "pre-copy",
            round,
            sent: counters.sent.load(std::sync::atomic::Ordering::Relaxed),
            remaining,
            dirty_rate,
            bandwidth,
            expected_downtime_ms,
            expected_total_ms: t_start.elapsed().as_secs_f64() * 1e3 + expected_downtime_ms,
            throttle_pct: throttle,
        };
        progress(&p);
        debug!(vm.log(), "pre-copy round"; "round" => round, "pages" => pages, "dma_only" => dma_pages,
               "device" => dev_bytes, "remaining" => remaining, "dirty_rate" => dirty_rate, "bandwidth" => bandwidth);
        round += 1;
        // Switch over once the remainder fits the limit (as QEMU does) — unless the last
        // round still halved it: then one more short round buys a smaller downtime cheaply.
        let still_shrinking =
            remaining.saturating_mul(2) < prev_remaining && round < MAX_EXTRA_ROUNDS;
        prev_remaining = remaining;
        if expected_downtime_ms <= limit_s * 1e3 && !still_shrinking {
            break;
        }
        if round >= opts.max_rounds {
            if opts.auto_converge && round < opts.max_rounds + AUTO_CONVERGE_EXTRA_ROUNDS {
                // Out of rounds but throttling: give the throttle room to take effect.
            } else {
                return Err(MigrationError::NoConvergence {
                    rounds: round,
                    remaining,
                    limit_bytes: (bandwidth * limit_s) as u64,
                    bandwidth_mbps: bandwidth / 1e6,
                    dirty_mbps: dirty_rate / 1e6,
                });
            }
        }
        if opts.auto_converge && dirty_rate > bandwidth * 0.5 && round >= 2 {
            // As QEMU's cpu-throttle-initial (20%) and -increment (10%).
            throttle = (throttle + if throttle == 0 { 20 } else { 10 }).min(99);
            vm.hardware().set_throttle(throttle as u8);
            info!(vm.log(), "auto-converge: throttling the engine"; "percent" => throttle);
        }
        if round >= opts.max_rounds + AUTO_CONVERGE_EXTRA_ROUNDS {
            return Err(MigrationError::NoConvergence {
                rounds: round,
                remaining,
                limit_bytes: (bandwidth * limit_s) as u64,
                bandwidth_mbps: bandwidth / 1e6,
                dirty_mbps: dirty_rate / 1e6,
            });
        }
    }

    // Switchover: the vCPU stops here (the main loop no longer steps it).
    position(vm, opts.switchover_at)?;
    let t_stop = monotonic_ns();
    // A KVM vCPU is kicked out of guest mode and parked; the device thread stops.
    vm.pause_kvm()?;
    report.switchover = switchover_point(vm);
    info!(vm.log(), "migration: switchover"; "rounds" => round, "expected_downtime_ms" => expected_downtime_ms);
    events.liveness().set_phase("stop-and-copy");
    w.switchover(t_stop)?;
    if opts.stop_self_at == Some(StopPoint::Switchover) {
        w.get_mut().drain_to(0).map_err(peer)?;
        StopPoint::stop_if(opts.stop_self_at, StopPoint::Switchover, vm.log());
    }
    dio.stop_copy(vm)?;
    let t_stopped = monotonic_ns();
    let cpu = vm.harvest_cpu_dirty()?;
    pending.merge(&cpu);
    dma_only.clear();
    if let Some(d) = dma.as_mut() {
        let dd = d.harvest_final(vm)?;
        for a in dd.iter_dirty() {
            if !pending.is_dirty(a) {
                dma_only.mark(a);
            }
        }
        pending.merge(&dd);
    }
    let sent = send_pages(vm, &mut w, &pending, &dma_only, true, false)?;
    report.bytes.dma_ram += sent.dma_nonzero * PAGE_SIZE;
    while let Some(n) = dio.next_chunk_to(vm, &mut |c| w.device_data(c))? {
        report.bytes.device_stopcopy += n;
    }
    if opts.fail_at == Some(FailPoint::StopCopy) {
        return Err(MigrationError::Injected {
            point: "stop-and-copy".into(),
        });
    }
    w.device_end()?;
    let cfg = crate::snapshot::config_bytes(vm)?;
    w.config(&cfg)?;
    let vcpu = vm.vcpu_record()?.to_bytes();
    w.vcpu(&vcpu)?;
    let t_drained = monotonic_ns();
    let (mut writer, stats) = w.finish()?;
    writer.finish().map_err(peer)?;
    let t_wire = monotonic_ns();

    events
        .liveness()
        .set_phase("the switchover acknowledgement");
    let ack = loop {
        if let FromTarget::Ack(a) = events.next()? {
            break a;
        }
    };
    match ack {
        Ack::Rejected { reason } => Err(MigrationError::Rejected { reason }),
        Ack::Resumed {
            resumed_ns,
            residue_ms: _,
            load_ms,
            config_ms,
            resume_ms,
            switchover_seen_ns: _,
            bytes: _,
        } => {
            report.downtime_ms = ms_between(t_stop, resumed_ns);
            report.breakdown = Breakdown {
                stop_ms: ms_between(t_stop, t_stopped),
                drain_ms: ms_between(t_stopped, t_drained),
                wire_ms: ms_between(t_drained, t_wire),
                target_receive_ms: (ms_between(t_wire, resumed_ns)
                    - load_ms
                    - config_ms
                    - resume_ms)
                    .max(0.0),
                target_load_ms: load_ms,
                target_config_ms: config_ms,
                target_resume_ms: resume_ms,
            };
            report.bytes.ram = stats.ram;
            report.bytes.state = stats.state;
            report.bytes.total = stats.total;
            report.total_ms = t_start.elapsed().as_secs_f64() * 1e3;
            report.expected_downtime_ms = expected_downtime_ms;
            report.throttle_pct = throttle;
            report.bandwidth = bandwidth;
            info!(vm.log(), "migration: target resumed"; "downtime_ms" => report.downtime_ms, "total_ms" => report.total_ms);
            progress(&Progress {
                phase: "done",
                round,
                sent: stats.total,
                remaining: 0,
                dirty_rate: 0.0,
                bandwidth,
                expected_downtime_ms: report.downtime_ms,
                expected_total_ms: report.total_ms,
                throttle_pct: throttle,
            });
            Ok(report)
        }
    }
}
