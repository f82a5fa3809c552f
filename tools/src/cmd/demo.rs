//! `demo`: the main job. A source VM renders; at frame K it live-migrates over loopback TCP
//! to a target process started by this command; the target finishes and checks its result
//! against a run that never migrated.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use slog::Logger;
use snafu::ResultExt;

use super::migrate::source;
use super::serve::DeviceProcess;
use super::{CliError, FileSnafu, Result};
use crate::cli::{MigrateArgs, WorkloadArgs};

#[derive(Debug, Serialize)]
struct DemoReport {
    verified: bool,
    /// The vCPU the guest ran on, on both sides: "sim" or "kvm".
    vcpu: &'static str,
    final_checksum: String,
    downtime_ms: f64,
    total_ms: f64,
    rounds: usize,
    bytes_total: u64,
    breakdown: Option<vmm::migration::source::Breakdown>,
    migration: Option<vmm::migration::SourceReport>,
    target: Value,
    png_before: String,
    png_after: String,
    /// Where the devices ran: "in process", or the device processes' ids.
    device: String,
}

/// Wait (at most a minute, a hang guard) until the target wrote its address to `ready`;
/// an error at once if it exited instead.
fn wait_ready(child: &mut Child, ready: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = fs::read_to_string(ready) {
            return Ok(s.trim().to_string());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::Check {
                msg: format!("the target process exited before it listened ({status})"),
            });
        }
        if Instant::now() > deadline {
            return Err(CliError::Check {
                msg: "the target process did not listen within a minute".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    w: &WorkloadArgs,
    m: &MigrateArgs,
    frames: u64,
    migrate_at: u64,
    dir: &Path,
    device_process: bool,
    json: bool,
    log_level: slog::Level,
    log: &Logger,
) -> Result<()> {
    if migrate_at == 0 || migrate_at >= frames {
        return Err(CliError::Usage {
            msg: format!("--migrate-at {migrate_at} must be between 1 and --frames - 1"),
        });
    }
    fs::create_dir_all(dir).context(FileSnafu {
        what: "cannot create",
        path: dir,
    })?;
    let before = dir.join("before.png");
    let after = dir.join("after.png");
    // The target listens on a port of its choosing and says which: no port is picked
    // here and reused (another process could take it in between).
    let ready = dir.join("target.url");
    let _ = fs::remove_file(&ready);
    // With --device-process, each side's device runs in a `serve` process of its own.
    let devices = if device_process {
        let extra = [
            "--migration-features",
            w.migration_features.as_str(),
            "--dirty-tracking",
            m.dirty_tracking.as_str(),
        ];
        let src = DeviceProcess::start(&dir.join("source-device.sock"), &w.mdev_type, &extra)?;
        let dst = DeviceProcess::start(&dir.join("target-device.sock"), &w.mdev_type, &extra)?;
        Some((src, dst))
    } else {
        None
    };
    let mut w = w.clone();
    let (device, target_device) = match &devices {
        Some((src, dst)) => {
            w.device = src.device_arg();
            (
                format!(
                    "device processes: pid {} (source), pid {} (target), over vfio-user",
                    src.pid(),
                    dst.pid()
                ),
                dst.device_arg(),
            )
        }
        None if w.device == "in-process" => ("in process".to_string(), "in-process".to_string()),
        None => (
            format!("source device at {}; target in process", w.device),
            "in-process".to_string(),
        ),
    };
    let w = &w;
    // The target makes its VM and faults in its RAM before it listens.
    let ram_mib = w.ram_mib.to_string();
    let exe = std::env::current_exe().map_err(|e| CliError::Check {
        msg: format!("cannot find this program to start the target: {e}"),
    })?;
    let mut child = Command::new(exe)
        .args(["--log-level", log_level.as_short_str()])
        .args([
            "incoming",
            "--listen",
            "tcp://127.0.0.1:0",
            "--type",
            &w.mdev_type,
            "--ram-mib",
            &ram_mib,
            "--json",
        ])
        .arg("--png-after")
        .arg(&after)
        .args(["--frames", &frames.to_string()])
        .args(["--peer-timeout", &m.peer_timeout.to_string()])
        .args(["--migration-features", &w.migration_features])
        .args(["--device", &target_device])
        .args(w.lenient_v1.then_some("--lenient-v1"))
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Check {
            msg: format!("cannot start the target process: {e}"),
        })?;
    let url = match wait_ready(&mut child, &ready) {
        Ok(u) => u,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let (rep, _) = match source(&url, w, m, frames, migrate_at, Some(&before), log) {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let out = child.wait_with_output().map_err(|e| CliError::Check {
        msg: format!("the target process failed: {e}"),
    })?;
    let target: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    // The target's own one-line error, if it failed, becomes part of ours.
    let target_err = String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .map(|l| l.trim_start_matches("error: ").to_string());
    let verified = rep.migrated && target.get("verified").and_then(Value::as_bool) == Some(true);
    let report = DemoReport {
        verified,
        final_checksum: target
            .get("final_checksum")
            .and_then(Value::as_str)
            .unwrap_or(&rep.final_checksum)
            .to_string(),
        downtime_ms: rep.downtime_ms,
        total_ms: rep.total_ms,
        rounds: rep.rounds,
        bytes_total: rep.bytes_total,
        breakdown: rep.breakdown.clone(),
        migration: rep.migration.clone(),
        target,
        png_before: before.display().to_string(),
        png_after: after.display().to_string(),
        vcpu: m.vcpu.name(),
        device,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_summary(w, frames, migrate_at, &report, &rep.error);
    }
    match (&rep.error, verified) {
        (Some(e), _) if rep.migrated => Err(CliError::Check {
            msg: format!("migrated, but no outcome: {e}"),
        }),
        (Some(e), _) => Err(CliError::Check {
            msg: format!("migration failed: {e}"),
        }),
        (None, false) => Err(CliError::Check {
            msg: format!(
                "the migrated run differs from a run that never migrated: {}",
                report
                    .target
                    .get("detail")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .or(target_err)
                    .unwrap_or_else(|| "the target gave no result".into())
            ),
        }),
        _ => Ok(()),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn print_summary(w: &WorkloadArgs, frames: u64, k: u64, r: &DemoReport, err: &Option<String>) {
    let wp = w.params(frames);
    println!(
        "vgpu-migrate demo: {} | {} | {}x{} | {} triangles | seed {} | {} frames, migration at frame {} | vCPU {}",
        w.mdev_type, w.profile.name(), wp.width, wp.height, wp.triangles, w.seed, frames, k, r.vcpu
    );
    println!("  device: {}", r.device);
    if let Some(e) = err {
        println!("  migration FAILED: {e}");
        return;
    }
    if let Some(m) = &r.migration {
        println!(
            "  protocol {}, {} pre-copy rounds:",
            m.protocol,
            m.rounds.len()
        );
        for rd in &m.rounds {
            println!(
                "    round {:>2}: {:>6} RAM pages ({} via DMA log only), {:>8.2} MiB device data, {:>7.1} ms, dirty {:>7.1} MB/s",
                rd.round,
                rd.ram_pages,
                rd.dma_only_pages,
                mib(rd.device_bytes),
                rd.ms,
                rd.dirty_rate / 1e6
            );
        }
        let b = &m.bytes;
        println!(
            "  bytes: total {:.2} MiB = guest RAM {:.2} (DMA-dirtied {:.2}) + device pre-copy {:.2} + device stop-copy {:.2} + state {:.3}",
            mib(b.total), mib(b.ram), mib(b.dma_ram), mib(b.device_precopy), mib(b.device_stopcopy), mib(b.state)
        );
        let d = &m.breakdown;
        println!(
            "  downtime {:.2} ms (expected {:.2}): stop {:.2} + drain {:.2} + wire {:.2} + target receive {:.2} + load {:.2} + config {:.2} + resume {:.2}",
            m.downtime_ms, m.expected_downtime_ms, d.stop_ms, d.drain_ms, d.wire_ms, d.target_receive_ms,
            d.target_load_ms, d.target_config_ms, d.target_resume_ms
        );
        if let Some(c) = &m.downtime_clock {
            println!("  downtime measured on the {}", c.method);
        }
        if !m.device_precopy {
            println!("  the device offers no PRE_COPY: all its data moved in stop-copy, inside the downtime (it grows with graphics memory)");
        }
        if !m.device_dma_log {
            println!(
                "  the device has no DMA dirty log: all backed guest RAM was re-sent at stop-copy"
            );
        }
        println!(
            "  total {:.1} ms, link {:.0} MB/s",
            m.total_ms,
            m.bandwidth / 1e6
        );
        if let Some(p) = r.target["prefault_ms"].as_f64() {
            println!("  before it listened, the target made its VM and faulted in its RAM: {p:.1} ms (not in the figures above)");
        }
    }
    if r.final_checksum.is_empty() {
        println!("  final checksum: none (the target did not finish the workload)");
    } else {
        println!("  final checksum {}", r.final_checksum);
    }
    println!(
        "  frames: {} (source, at switchover) and {} (target, first after)",
        r.png_before, r.png_after
    );
    println!(
        "  {}",
        if r.verified && r.vcpu == "kvm" {
            "VERIFIED: checksum log and graphics memory equal a run that never migrated (guest RAM also holds the x86 image's stack and heap, not compared)"
        } else if r.verified {
            "VERIFIED: checksum log, guest RAM and graphics memory equal a run that never migrated"
        } else {
            "NOT VERIFIED"
        }
    );
}
