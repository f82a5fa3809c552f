//! `migrate`: the source of a live migration.

use std::path::Path;
use std::time::Duration;
use vgpu_platform::VgpuVm;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use slog::Logger;
use vmm::migration::source::SwitchoverAt;
use vmm::migration::{
    self, FailPoint, Progress, Protocol, SelfFault, SourceOptions, SourceReport, StopPoint,
};
use vmm::{StopAt, Vm};

use snafu::ResultExt;

use super::{boot_idle, boot_with, parse_tracking, CliError, Result, TimelineSnafu};
use crate::cli::{MigrateArgs, WorkloadArgs};
use crate::cli::{Vcpu, Workload};
use crate::output::{write_png, RunReport};
use crate::timeline::Recorder;
use crate::verify;

/// What `migrate --json` prints.
#[derive(Debug, Serialize)]
pub struct MigrateReport {
    /// Whether the migration completed.
    pub migrated: bool,
    /// The vCPU the source guest ran on: "sim" or "kvm".
    pub vcpu: &'static str,
    /// The error, if it did not.
    pub error: Option<String>,
    /// Whether the checksum log and final digests equal a run that never migrated: the
    /// target's verdict after a migration, the source's own after a failed one.
    pub verified: Option<bool>,
    /// What differed.
    pub detail: String,
    /// Final frame checksum.
    pub final_checksum: String,
    /// After a failed migration: the source's own checksum log, once it ran the workload
    /// to its frame limit (empty after a migration: the target has the log).
    pub checksums: Vec<String>,
    /// After a failed migration: CLOCK_MONOTONIC ns at which the source's device was
    /// running again (the guest runs on from there).
    pub source_resumed_ns: Option<u64>,
    /// Source vCPU stop to target vCPU resume, ms.
    pub downtime_ms: f64,
    /// Migration start to target resume, ms.
    pub total_ms: f64,
    /// Pre-copy rounds.
    pub rounds: usize,
    /// Bytes on the wire.
    pub bytes_total: u64,
    /// Where the downtime went.
    pub breakdown: Option<vmm::migration::source::Breakdown>,
    /// Details: rounds, bytes by kind, downtime breakdown.
    pub migration: Option<SourceReport>,
}

/// Parse `--peer-timeout SECONDS`.
pub fn peer_timeout(secs: f64) -> Result<Duration> {
    let min = migration::control::MIN_PEER_TIMEOUT;
    if !(secs.is_finite() && secs >= min.as_secs_f64() && secs <= 86_400.0) {
        return Err(CliError::Usage {
            msg: format!(
                "--peer-timeout {secs} must be between {} and 86400 seconds",
                min.as_secs_f64()
            ),
        });
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--frames` and `--migrate-at`: both needed with the vGPU workload, neither with
/// `--workload idle`.
pub fn frames_given(
    m: &MigrateArgs,
    frames: Option<u64>,
    migrate_at: Option<u64>,
) -> Result<(u64, u64)> {
    match (m.workload, frames, migrate_at) {
        (Workload::Vgpu, Some(f), Some(k)) => Ok((f, k)),
        (Workload::Vgpu, ..) => Err(CliError::Usage {
            msg: "--frames and --migrate-at are needed (unless --workload idle)".into(),
        }),
        (Workload::Idle, None, None) => Ok((0, 0)),
        (Workload::Idle, ..) => Err(CliError::Usage {
            msg: "--frames and --migrate-at go with the vGPU workload, not --workload idle".into(),
        }),
    }
}

/// Parse `--stop-self-at PHASE` / `--kill-self-at PHASE` (at most one is given).
pub fn stop_point(stop: Option<&str>, kill: Option<&str>) -> Result<Option<SelfFault>> {
    let parse = |s: &str, opt: &str| {
        StopPoint::parse(s).ok_or_else(|| CliError::Usage {
            msg: format!(
                "{opt} '{s}' is not handshake, round:N, switchover, prepared, handover or resumed"
            ),
        })
    };
    Ok(match (stop, kill) {
        (Some(s), _) => Some(SelfFault::stop(parse(s, "--stop-self-at")?)),
        (None, Some(k)) => Some(SelfFault::kill(parse(k, "--kill-self-at")?)),
        (None, None) => None,
    })
}

/// Parse the migration options.
pub fn options(m: &MigrateArgs) -> Result<SourceOptions> {
    let protocol = Protocol::parse(&m.protocol).ok_or_else(|| CliError::Usage {
        msg: format!("--protocol '{}' is not region or v2", m.protocol),
    })?;
    let bandwidth = m
        .bandwidth
        .as_deref()
        .map(migration::rate::parse_rate)
        .transpose()
        .map_err(|msg| CliError::Usage { msg })?;
    let fail_at = m
        .inject_failure
        .as_deref()
        .map(|s| {
            FailPoint::parse(s).ok_or_else(|| CliError::Usage {
                msg: format!("--inject-failure '{s}' is not one of setup, round:N, stop-copy"),
            })
        })
        .transpose()?;
    if !(m.downtime_limit > 0.0 && m.downtime_limit.is_finite()) {
        return Err(CliError::Usage {
            msg: format!(
                "--downtime-limit {} must be a positive number of ms",
                m.downtime_limit
            ),
        });
    }
    let switchover_at = match m.switchover_at.as_deref() {
        Some(s) => SwitchoverAt::parse(s).ok_or_else(|| CliError::Usage {
            msg: format!(
                "--switchover-at '{s}' is not converged, mid-batch, irq-pending or next-frame"
            ),
        })?,
        None if m.dirty_tracking == "off" => SwitchoverAt::NextFrame,
        None => SwitchoverAt::Converged,
    };
    Ok(SourceOptions {
        switchover_at,
        protocol,
        bandwidth,
        downtime_limit: Duration::from_secs_f64(m.downtime_limit / 1e3),
        max_rounds: m.max_rounds.max(1),
        auto_converge: m.auto_converge,
        fail_at,
        peer_timeout: peer_timeout(m.peer_timeout)?,
        stop_self_at: stop_point(m.stop_self_at.as_deref(), m.kill_self_at.as_deref())?,
        channels: channels(m.channels)?,
        ..SourceOptions::default()
    })
}

/// A progress bar on a terminal (hidden otherwise).
pub fn progress_bar() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Text for the bar.
pub fn describe(p: &Progress) -> String {
    format!(
        "{} round {} | sent {:.1} MiB | remaining {:.1} MiB | dirty {:.0} MB/s | link {:.0} MB/s | expected downtime {:.1} ms | throttle {}%",
        p.phase,
        p.round,
        p.sent as f64 / 1048576.0,
        p.remaining as f64 / 1048576.0,
        p.dirty_rate / 1e6,
        p.bandwidth / 1e6,
        p.expected_downtime_ms,
        p.throttle_pct
    )
}

/// Boot, run to `migrate_at`, migrate. On failure the source finishes the workload itself.
#[allow(clippy::too_many_arguments)]
pub fn source(
    to: &str,
    w: &WorkloadArgs,
    m: &MigrateArgs,
    frames: u64,
    migrate_at: u64,
    png_before: Option<&Path>,
    log: &Logger,
) -> Result<(MigrateReport, Option<Vm>)> {
    let opts = options(m)?;
    if migrate_at > frames {
        return Err(CliError::Usage {
            msg: format!("--migrate-at {migrate_at} is past --frames {frames}"),
        });
    }
    let idle = m.workload == Workload::Idle;
    if idle && m.vcpu == Vcpu::Kvm {
        return Err(CliError::Usage {
            msg: "--workload idle runs on the simulated vCPU (the KVM guest image is the vGPU driver)"
                .into(),
        });
    }
    let mut vm = if idle {
        boot_idle(w, &m.dirty_tracking, log)?
    } else {
        boot_with(w, frames, parse_tracking(&m.dirty_tracking)?, log)?
    };
    match m.vcpu {
        _ if idle => {}
        Vcpu::Sim => {
            vm.run(StopAt::Frame(migrate_at))?;
        }
        Vcpu::Kvm => {
            vm.run_kvm(StopAt::Frame(migrate_at))?;
        }
    }
    // The events are lines on stderr: no spinner redrawing over them.
    let pb = if m.events {
        ProgressBar::hidden()
    } else {
        progress_bar()
    };
    let mut last = std::time::Instant::now();
    let mut rec = Recorder::new(m.events);
    rec.start();
    let result = migration::migrate(&mut vm, to, &opts, &mut |p| {
        rec.progress(p);
        if last.elapsed() >= Duration::from_millis(50) || p.phase == "done" {
            pb.set_message(describe(p));
            last = std::time::Instant::now();
        }
    });
    pb.finish_and_clear();
    if let Err(e) = &result {
        rec.failed(&e.to_string());
    }
    // A picture that cannot be drawn fails the command, but only once the target has
    // told how the migration ended.
    let timeline = match (&m.timeline, &result) {
        (Some(path), Ok((rep, _))) => {
            let limit = Some(opts.downtime_limit.as_secs_f64() * 1e3);
            crate::timeline::draw(path, "live migration", rep, rec.rounds(), limit)
                .context(TimelineSnafu)
        }
        _ => Ok(()),
    };
    match result {
        Ok((rep, events)) => {
            if let Some(p) = png_before {
                // The source's last displayed frame, as it was at switchover.
                write_png(&mut vm, p)?;
            }
            // The target finishes the workload and tells us how it ended (its keep-alives
            // say it is alive meanwhile).
            let (mut outcome, error) = match migration::source::wait_outcome(&events) {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(e.to_string())),
            };
            timeline?;
            if let (true, Some(o)) = (idle, outcome.as_mut()) {
                // No workload to compare: the target's device must hold what ours held.
                // Ours stays stopped (the guest is the target's now).
                let ours = vgpu_platform::device_digest(&mut vm)?;
                o.verified = o.final_checksum == ours;
                o.detail = if o.verified {
                    String::new()
                } else {
                    format!(
                        "device state: the target's digest {} differs from the source's {ours}",
                        o.final_checksum
                    )
                };
            }
            Ok((
                MigrateReport {
                    vcpu: m.vcpu.name(),
                    migrated: true,
                    error,
                    verified: outcome.as_ref().map(|o| o.verified),
                    detail: outcome
                        .as_ref()
                        .map(|o| o.detail.clone())
                        .unwrap_or_default(),
                    final_checksum: outcome.map(|o| o.final_checksum).unwrap_or_default(),
                    checksums: Vec::new(),
                    source_resumed_ns: None,
                    downtime_ms: rep.downtime_ms,
                    total_ms: rep.total_ms,
                    rounds: rep.rounds.len(),
                    bytes_total: rep.bytes.total,
                    breakdown: Some(rep.breakdown.clone()),
                    migration: Some(rep),
                },
                None,
            ))
        }
        Err(e @ migration::MigrationError::HandedOver { .. }) => {
            // The target may run the guest: it must never run here again.
            Err(CliError::Check {
                msg: format!("migration unconfirmed: {e}"),
            })
        }
        Err(e) if idle => Err(CliError::Check {
            msg: format!("migration failed: {e}; the source's device runs on here"),
        }),
        Err(e) => {
            // Nothing lost: the device is running again; the guest goes on here, to the
            // end, and is checked.
            let resumed = migration::clock::monotonic_ns();
            vm.run_guest(StopAt::Done)?;
            let ran = RunReport::collect(&mut vm, frames);
            let got = verify::fingerprint(&mut vm, frames);
            let params = vm.params().ok_or_else(|| CliError::Check {
                msg: "the guest lost its workload parameters".into(),
            })?;
            let ram = vmm::memory::size(vm.memory());
            let want = verify::reference(&w.mdev_type, ram, &params, frames, log)?;
            let (ok, detail) = verify::compare(&got, &want);
            Ok((
                MigrateReport {
                    vcpu: m.vcpu.name(),
                    migrated: false,
                    error: Some(e.to_string()),
                    verified: Some(ok),
                    detail,
                    final_checksum: ran.final_checksum,
                    checksums: ran.checksums,
                    source_resumed_ns: Some(resumed),
                    downtime_ms: 0.0,
                    total_ms: 0.0,
                    rounds: 0,
                    bytes_total: 0,
                    breakdown: None,
                    migration: None,
                },
                Some(vm),
            ))
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    to: &str,
    w: &WorkloadArgs,
    m: &MigrateArgs,
    (frames, migrate_at): (u64, u64),
    png_before: Option<&Path>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let (rep, _) = source(to, w, m, frames, migrate_at, png_before, log)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default());
    } else if rep.migrated {
        println!(
            "migrated: downtime {:.2} ms, total {:.1} ms, {} rounds, {} bytes; verified: {}",
            rep.downtime_ms,
            rep.total_ms,
            rep.rounds,
            rep.bytes_total,
            rep.verified.map_or("unknown".into(), |v| v.to_string())
        );
        if let Some(c) = rep
            .migration
            .as_ref()
            .and_then(|m| m.downtime_clock.as_ref())
        {
            println!("downtime measured on the {}", c.method);
        }
        if let Some(mig) = &rep.migration {
            println!("{}", device_summary(mig));
        }
    }
    match (&rep.error, rep.verified) {
        (Some(e), _) if rep.migrated => Err(CliError::Check {
            msg: format!("migrated, but no outcome: {e}"),
        }),
        (Some(e), Some(ok)) => Err(CliError::Check {
            msg: format!(
                "migration failed: {e}; the source kept running and finished frame {frames} ({})",
                if ok {
                    "checksum log equals the reference"
                } else {
                    "checksum log DIFFERS from the reference"
                }
            ),
        }),
        (None, Some(false)) => Err(CliError::Check {
            msg: format!(
                "migrated, but the target's run differs from the reference: {}",
                rep.detail
            ),
        }),
        _ => Ok(()),
    }
}

/// One line on how the device's state moved: with or without pre-copy, with its own DMA
/// log or with all backed guest RAM re-sent in the final pass.
pub fn device_summary(rep: &SourceReport) -> String {
    format!(
        "device: {} ({}), {}",
        if rep.device_precopy {
            "pre-copy and stop-copy"
        } else {
            "no PRE_COPY: its state moved in stop-copy alone"
        },
        rep.protocol,
        if rep.device_dma_log {
            "DMA writes from its dirty log".to_string()
        } else {
            "no DMA logging: all backed guest RAM was re-sent in the final pass".to_string()
        }
    )
}

/// `--channels N`, checked against the most a target accepts.
fn channels(n: u32) -> Result<u32> {
    let max = vmm::migration::multifd::MAX_CHANNELS;
    if n > max {
        return Err(CliError::Usage {
            msg: format!("--channels {n}: at most {max} RAM channels"),
        });
    }
    Ok(n)
}
