//! The source side: pre-copy while the guest runs, then stop-and-copy within the downtime
//! limit; on any failure the guest goes on as if nothing had been tried.

mod guest;
mod options;
mod pages;
mod policy;
mod report;
mod rounds;
mod switchover;

use std::net::TcpStream;
use std::time::Instant;

use slog::{info, warn};
use state_region::format::{FORMAT_MAJOR, FORMAT_MINOR};

pub use options::{FailPoint, SourceOptions, SwitchoverAt};
pub use report::{Breakdown, Bytes, Progress, RoundStats, SourceReport, SwitchoverPoint};

use super::clock::{set_slices, DeadlineReader, DeadlineWriter, Liveness};
use super::control::{self, features, FromTarget, Hello, Start};
use super::device_io::{DeviceIo, Protocol, Recovery};
use super::dirty::DmaTracker;
use super::error::{MigrationError, Result};
use super::transport::ChannelWriter;
use super::StopPoint;
use crate::stream::{StreamWriter, STREAM_MAJOR, STREAM_MINOR};
use crate::vm::Vm;

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
    if hello.features & features::HANDOVER == 0 {
        return Err(
            "the target resumes without waiting for the handover (an older vgpu-migrate)".into(),
        );
    }
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
    let why = check_hello(vm, &hello, opts.protocol).err().or_else(|| {
        (opts.channels > 0 && hello.features & features::MULTIFD == 0)
            .then(|| "the target does not accept RAM channels (an older vgpu-migrate)".into())
    });
    if let Some(why) = why {
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
            channels: opts.channels,
        },
    )?;
    info!(vm.log(), "migration: handshake done"; "target" => url, "protocol" => opts.protocol.name());
    live.set_phase("pre-copy round 0");
    let events = TargetEvents::spawn(input, live);

    let mut dio = DeviceIo::new(vm, opts.protocol)?;
    let mut dma: Option<DmaTracker> = None;
    let result = run_migration(
        vm,
        (sock, url, hello.session),
        &events,
        &mut ctrl,
        opts,
        &mut dio,
        &mut dma,
        t_start,
        progress,
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
        Err(e @ MigrationError::HandedOver { .. }) => {
            // The target may run the guest: this side must never run it again.
            ctrl.shutdown();
            warn!(vm.log(), "migration unconfirmed after the handover; the guest stays paused here"; "error" => %e);
            Err(e)
        }
        Err(e) => {
            // A stream write that timed out says so first, not as a stream error.
            let e = e.unwrap_transport();
            // Tell the target first, so that it does not take the closed connection for
            // a dead source (best effort: the target may be gone).
            let _ = control::send(
                &mut ctrl,
                &control::FromSource::Abort {
                    reason: e.to_string(),
                },
            );
            ctrl.shutdown();
            warn!(vm.log(), "migration failed; the source keeps running"; "error" => %e);
            vm.hardware().set_throttle(0);
            // Back to RUNNING, whatever state the device reached (pre-copy or stop-copy);
            // a device left in ERROR is reset.
            let reset = match dio.recover(vm) {
                Ok(r) => r == Recovery::Reset,
                Err(e2) => {
                    warn!(vm.log(), "could not resume the source device"; "error" => %e2);
                    false
                }
            };
            // A KVM guest paused for the switchover runs on.
            if vm.on_kvm() {
                if let Err(e2) = vm.start_kvm() {
                    warn!(vm.log(), "could not resume the source vCPU"; "error" => %e2);
                }
            }
            if reset {
                return Err(MigrationError::SourceDeviceReset {
                    source: Box::new(e),
                });
            }
            Err(e)
        }
    }
}

/// Set the stream up, pre-copy, then stop and copy.
#[allow(clippy::too_many_arguments)]
fn run_migration(
    vm: &mut Vm,
    (sock, url, session): (TcpStream, &str, u64),
    events: &TargetEvents,
    ctrl: &mut DeadlineWriter,
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
    let mut writer = ChannelWriter::spawn(sock, opts.bandwidth, events.liveness().clone());
    let counters = writer.counters();
    if opts.channels > 0 {
        let channels = super::multifd::RamChannels::connect(
            url,
            session,
            opts.channels,
            vm.memory(),
            writer.bucket(),
            counters.clone(),
            opts.peer_timeout,
            opts.connect_timeout,
        )?;
        writer.attach_ram_channels(channels);
    }
    let mut w = StreamWriter::new(writer, &crate::snapshot::header(vm))?;
    // The header goes now: the target makes its VM (and starts applying the RAM
    // channels) once it has it, whatever the main stream carries next.
    std::io::Write::flush(w.get_mut()).map_err(peer)?;
    let mut report = SourceReport {
        protocol: opts.protocol.name(),
        device_precopy: dio.has_precopy(),
        device_dma_log: vm.device().dma_dirty_log().is_some(),
        ..Default::default()
    };
    let pre = rounds::precopy(
        vm,
        &mut w,
        &counters,
        events,
        opts,
        dio,
        dma,
        t_start,
        &mut report,
        progress,
    )?;
    switchover::stop_and_copy(
        vm, w, events, ctrl, opts, dio, dma, t_start, report, pre, progress,
    )
}
