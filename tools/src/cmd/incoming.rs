//! `incoming`: the target of a live migration.

use std::path::Path;
use vgpu_platform::VgpuVm;

use serde::Serialize;
use slog::Logger;
use vmm::migration::{self, control, FailPoint, TargetOptions};
use vmm::StopAt;

use super::migrate::{peer_timeout, stop_point};
use super::{parse_tracking, CliError, FileSnafu, Result};
use crate::cli::{IncomingArgs, Workload};
use crate::output::{write_png, RunReport};
use crate::verify;

/// What `incoming --json` prints.
#[derive(Debug, Serialize)]
pub struct IncomingReport {
    /// Whether the checksum log and final digests equal a run that never migrated
    /// (`null` with --no-verify).
    pub verified: Option<bool>,
    /// What differed.
    pub detail: String,
    /// Frames rendered.
    pub frames: u64,
    /// Final frame checksum.
    pub final_checksum: String,
    /// Checksum log.
    pub checksums: Vec<String>,
    /// Protocol the source used.
    pub protocol: String,
    /// Pre-copy rounds (from the source's summary).
    pub rounds: Option<usize>,
    /// Migration start to resume, ms (from the source's summary).
    pub total_ms: Option<f64>,
    /// The downtime breakdown: the source's, with the target's own parts.
    pub breakdown: serde_json::Value,
    /// Bytes received.
    pub bytes_total: u64,
    /// The vCPU the guest went on on here: "kvm" when the stream carried a KVM vCPU.
    pub vcpu: &'static str,
    /// Source vCPU stop to target vCPU resume, ms, as the source measured it on its own
    /// clock (from its summary; 0 if none arrived): this host's clock is never compared
    /// with the source's.
    pub downtime_ms: f64,
    /// Target part of the downtime.
    pub load_ms: f64,
    /// Config replay.
    pub config_ms: f64,
    /// vCPU restore and device RUNNING.
    pub resume_ms: f64,
    /// With `--ram-mib`: making the VM and faulting in its RAM before listening, ms (not
    /// part of the migration's figures); 0 otherwise.
    pub prefault_ms: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    listen: &str,
    args: &IncomingArgs,
    mdev_type: &str,
    frames: Option<u64>,
    tracking: &str,
    png_after: Option<&Path>,
    no_verify: bool,
    inject: Option<&str>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let fail_at = inject
        .map(|s| {
            FailPoint::parse(s).ok_or_else(|| CliError::Usage {
                msg: format!("--inject-failure '{s}' is not one of before-resume"),
            })
        })
        .transpose()?;
    let peer_timeout = peer_timeout(args.peer_timeout)?;
    let stop_self_at = stop_point(args.stop_self_at.as_deref(), args.kill_self_at.as_deref())?;
    let listener =
        migration::transport::listen(listen).map_err(|e| CliError::Check { msg: e.to_string() })?;
    let idle = args.workload == Workload::Idle;
    let factory = if idle {
        super::idle_factory(&args.device, mdev_type, tracking, &args.migration_features)?
    } else {
        // A target made ahead of the stream (--ram-mib) also faults in its device's
        // resume staging then.
        let make = if args.ram_mib.is_some() {
            vgpu_platform::target_factory
        } else {
            vgpu_platform::factory_checked
        };
        super::serve::attach(
            &args.device,
            args.dma_by_message,
            make(
                parse_tracking(tracking)?,
                super::parse_features(&args.migration_features)?,
                super::v1_checks(args.lenient_v1),
            ),
        )?
    };
    let opts = TargetOptions {
        bar_region_offset: 0,
        mdev_type: mdev_type.to_string(),
        irq_sink_base: 500,
        factory,
        fail_at,
        peer_timeout,
        stop_self_at,
        log: log.clone(),
    };
    // With the RAM size known, the VM and its memory are ready before anyone is told
    // this target listens.
    let prepared = args
        .ram_mib
        .map(|mib| {
            let size = mib.checked_mul(1 << 20).ok_or_else(|| CliError::Usage {
                msg: format!("--ram-mib {mib} is too large"),
            })?;
            migration::prepare(&opts, size).map_err(|e| CliError::Check {
                msg: format!("cannot prepare the target VM: {e}"),
            })
        })
        .transpose()?;
    if let Some(path) = &args.ready_file {
        let url = migration::transport::local_url(&listener)
            .map_err(|e| CliError::Check { msg: e.to_string() })?;
        write_ready(path, &url)?;
    }
    let (mut vm, rep, mut link) = migration::incoming_prepared(&listener, &opts, prepared)
        .map_err(|e| CliError::Check {
            msg: format!("incoming migration failed: {e}"),
        })?;
    // The source's figures follow its acknowledgement.
    let summary: Option<control::Summary> = link.input.recv_control("source's summary").ok();
    if idle {
        return finish_idle(&mut vm, &mut link, json);
    }
    let params = vm.params().ok_or_else(|| CliError::Check {
        msg: "the migrated guest has no workload parameters".into(),
    })?;
    let frames = frames.unwrap_or(params.frame_limit);
    if frames < vm.completed_frames() {
        return Err(CliError::Usage {
            msg: format!(
                "--frames {frames} is below the {} frames already rendered",
                vm.completed_frames()
            ),
        });
    }
    vm.set_frame_limit(frames)?;
    if let Some(p) = png_after {
        let next = vm.completed_frames() + 1;
        if next <= frames {
            vm.run_guest(StopAt::Frame(next))?;
        }
        write_png(&mut vm, p)?;
    }
    vm.run_guest(StopAt::Done)?;
    let ran = RunReport::collect(&mut vm, frames);
    let (verified, detail) = if no_verify {
        (None, String::new())
    } else {
        let got = verify::fingerprint(&mut vm, frames);
        let ram = vmm::memory::size(vm.memory());
        let want = verify::reference(mdev_type, ram, &params, frames, log)?;
        let (ok, d) = verify::compare(&got, &want);
        (Some(ok), d)
    };
    // Tell the source how it ended (it may be gone; that is fine).
    {
        let _ = link
            .ctrl
            .send(&control::FromTarget::Outcome(control::Outcome {
                frames,
                final_checksum: ran.final_checksum.clone(),
                verified: verified.unwrap_or(false),
                detail: detail.clone(),
            }));
    }
    let report = IncomingReport {
        verified,
        detail,
        frames,
        final_checksum: ran.final_checksum.clone(),
        checksums: ran.checksums.clone(),
        protocol: rep.protocol.clone(),
        rounds: summary.as_ref().map(|s| s.rounds),
        total_ms: summary.as_ref().map(|s| s.total_ms),
        breakdown: summary
            .as_ref()
            .map(|s| s.breakdown.clone())
            .unwrap_or_else(|| {
                serde_json::json!({
                    "target_load_ms": rep.load_ms,
                    "target_config_ms": rep.config_ms,
                    "target_resume_ms": rep.resume_ms,
                })
            }),
        bytes_total: rep.bytes,
        vcpu: ran.vcpu,
        downtime_ms: summary.as_ref().map_or(0.0, |s| s.downtime_ms),
        load_ms: rep.load_ms,
        config_ms: rep.config_ms,
        resume_ms: rep.resume_ms,
        prefault_ms: rep.prefault_ms,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", report.final_checksum);
    }
    if verified == Some(false) {
        return Err(CliError::Check {
            msg: format!("verification failed: {}", report.detail),
        });
    }
    Ok(())
}

/// The idle workload's end on the target: the guest runs on (it stays idle), and the
/// source is told the digest of our device's full state, which it compares with its own.
fn finish_idle(
    vm: &mut vmm::Vm,
    link: &mut migration::target::SourceLink,
    json: bool,
) -> Result<()> {
    vm.run_guest(StopAt::Done)?;
    let digest = vgpu_platform::device_digest(vm)?;
    vmm::snapshot::resume_source(vm)?;
    let _ = link
        .ctrl
        .send(&control::FromTarget::Outcome(control::Outcome {
            frames: 0,
            final_checksum: digest.clone(),
            // Nothing is verified here: an idle source compares the digests itself; a
            // source that ran the vGPU workload must not read this as a pass.
            verified: false,
            detail: "the target ran --workload idle: it checks no workload; an idle source compares device-state digests".into(),
        }));
    if json {
        let v = serde_json::json!({ "workload": "idle", "device_state_sha256": digest });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("device state sha256 {digest}");
    }
    Ok(())
}

/// Write `url` to `path` whole or not at all (a temporary file beside it, renamed), so
/// that whoever waits for the file never reads half an address.
fn write_ready(path: &Path, url: &str) -> Result<()> {
    use snafu::ResultExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{url}\n")).context(FileSnafu {
        what: "cannot write the ready file",
        path: &tmp,
    })?;
    std::fs::rename(&tmp, path).context(FileSnafu {
        what: "cannot write the ready file",
        path,
    })
}
