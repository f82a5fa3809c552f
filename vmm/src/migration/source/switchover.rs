//! The stop-and-copy phase: stop the guest at the switchover point, send the device's
//! final state, the last dirty pages, config and vCPU, and wait for the target to resume.

use slog::info;

use super::guest::{position, switchover_point};
use super::options::{FailPoint, SourceOptions};
use super::pages::send_pages;
use super::peer;
use super::report::{Breakdown, Progress, SourceReport};
use super::rounds::Precopy;
use crate::memory::PAGE_SIZE;
use crate::migration::clock::DeadlineWriter;
use crate::migration::clock::{monotonic_ns, ms_between, SourceDowntime};
use crate::migration::control::{self, Ack, FromSource, FromTarget, TargetEvents};
use crate::migration::device_io::DeviceIo;
use crate::migration::dirty::DmaTracker;
use crate::migration::error::{MigrationError, Result};
use crate::migration::transport::ChannelWriter;
use crate::migration::StopPoint;
use crate::stream::StreamWriter;
use crate::vm::Vm;

/// Stop the guest, send what pre-copy left (`pre`) and the final state, and wait for the
/// target's acknowledgement; fill in `report`.
#[allow(clippy::too_many_arguments)]
pub(super) fn stop_and_copy(
    vm: &mut Vm,
    mut w: StreamWriter<ChannelWriter>,
    events: &TargetEvents,
    ctrl: &mut DeadlineWriter,
    opts: &SourceOptions,
    dio: &mut DeviceIo,
    dma: &mut Option<DmaTracker>,
    t_start: std::time::Instant,
    mut report: SourceReport,
    pre: Precopy,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SourceReport> {
    let Precopy {
        mut pending,
        mut dma_only,
        round,
        expected_downtime_ms,
        bandwidth,
        throttle,
    } = pre;
    // Switchover: the vCPU stops here (the main loop no longer steps it).
    position(vm, opts.switchover_at)?;
    let t_stop = monotonic_ns();
    // A KVM vCPU is kicked out of guest mode and parked; the device thread stops.
    vm.pause_kvm()?;
    report.switchover = switchover_point(vm);
    info!(vm.log(), "migration: switchover"; "rounds" => round, "expected_downtime_ms" => expected_downtime_ms);
    events.liveness().set_phase("stop-and-copy");
    w.switchover(t_stop)?;
    if opts.stop_self_at.map(|f| f.at) == Some(StopPoint::Switchover) {
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
    // The RAM channels sent their last pages beside the device's data; they end now.
    let channels = match w.get_mut().take_ram_channels() {
        Some(ch) => ch.finish()?,
        None => Default::default(),
    };
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

    events.liveness().set_phase("the target's load");
    match next_ack(events)? {
        Ack::Prepared { .. } => {}
        Ack::Rejected { reason } => return Err(MigrationError::Rejected { reason }),
        Ack::Resumed { .. } => {
            return Err(MigrationError::Protocol {
                what: "the target resumed before the handover".into(),
            })
        }
    }
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Prepared, vm.log());
    // From here this side never runs the guest again, unless the target is known gone.
    control::send(ctrl, &FromSource::Handover)?;
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Handover, vm.log());
    events
        .liveness()
        .set_phase("the switchover acknowledgement");
    let ack = match next_ack(events) {
        Ok(a) => a,
        // Silence: the target may have resumed the guest (or will when it wakes).
        Err(e) if e.is_peer_timeout() => {
            return Err(MigrationError::HandedOver { why: e.to_string() })
        }
        // The connection ended: the target process is gone (or discarded the migration
        // before it resumed), so the guest runs nowhere else: it runs on here.
        Err(e) => return Err(e),
    };
    // The ack's arrival on this host's clock: the downtime is measured on it alone.
    let t_ack = monotonic_ns();
    match ack {
        Ack::Rejected { reason } => Err(MigrationError::Rejected { reason }),
        Ack::Prepared { .. } => Err(MigrationError::Protocol {
            what: "the target sent PREPARED twice".into(),
        }),
        Ack::Resumed {
            resumed_ns: _,
            residue_ms: _,
            load_ms,
            config_ms,
            resume_ms,
            switchover_seen_ns: _,
            bytes: _,
        } => {
            // Never the target's clock against ours: stop to ack on ours, minus the ack's
            // trip (half the path's RTT as our TCP measured it); the target's parts are
            // durations on its own clock.
            let clock = SourceDowntime::measure(t_stop, t_ack, ctrl.path_rtt());
            report.downtime_ms = clock.downtime_ms;
            let (stop_ms, drain_ms) = (
                ms_between(t_stop, t_stopped),
                ms_between(t_stopped, t_drained),
            );
            let wire_ms = ms_between(t_drained, t_wire);
            report.breakdown = Breakdown {
                stop_ms,
                drain_ms,
                wire_ms,
                target_receive_ms: clock.receive_ms(
                    stop_ms + drain_ms + wire_ms,
                    load_ms + config_ms + resume_ms,
                ),
                target_load_ms: load_ms,
                target_config_ms: config_ms,
                target_resume_ms: resume_ms,
            };
            // Start to the target's resume, on this clock too: the ack's trip back is not
            // part of the migration.
            let ack_trip_ms = clock.ack_trip_ms;
            report.downtime_clock = Some(clock);
            report.bytes.ram = stats.ram + channels.ram;
            report.bytes.state = stats.state;
            report.bytes.total = stats.total + channels.wire;
            let since_ack_ms = ms_between(t_ack, monotonic_ns());
            report.total_ms =
                (t_start.elapsed().as_secs_f64() * 1e3 - since_ack_ms - ack_trip_ms).max(0.0);
            report.expected_downtime_ms = expected_downtime_ms;
            report.throttle_pct = throttle;
            report.bandwidth = bandwidth;
            info!(vm.log(), "migration: target resumed"; "downtime_ms" => report.downtime_ms, "total_ms" => report.total_ms);
            progress(&Progress {
                phase: "done",
                round,
                sent: stats.total + channels.wire,
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

/// The target's next acknowledgement (its other messages are not for this phase).
fn next_ack(events: &TargetEvents) -> Result<Ack> {
    loop {
        if let FromTarget::Ack(a) = events.next()? {
            return Ok(a);
        }
    }
}
