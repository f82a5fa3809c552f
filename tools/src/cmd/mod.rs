//! The subcommands.

mod bench;
mod bench_floors;
mod bench_kvm;
mod bench_migration;
mod bench_pipeline;
mod bench_qemu;
mod bench_render;
mod bench_vfio_user;
mod cpu;
mod demo;
mod dump;
mod incoming;
mod inspect;
mod migrate;
mod restore;
mod run;
mod serve;
mod snapshot_demo;
mod soak;
mod types;

use slog::Logger;
use snafu::Snafu;
use vgpu_platform::VgpuVm;

use crate::cli::{Command, WorkloadArgs};

/// Errors of the CLI: each prints as one line.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum CliError {
    /// The VMM failed.
    #[snafu(display("{source}"))]
    Vmm {
        /// Cause.
        source: vmm::VmmError,
    },
    /// Output failed.
    #[snafu(display("{source}"))]
    Output {
        /// Cause.
        source: crate::output::OutputError,
    },
    /// A file could not be read or written.
    #[snafu(display("{what} {}: {source}", path.display()))]
    File {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A snapshot file could not be saved (the final path is left as it was).
    #[snafu(display("{source}"))]
    SnapshotFile {
        /// Cause.
        source: vmm::snapshot::SaveFileError,
    },
    /// A bad argument combination or value.
    #[snafu(display("{msg}"))]
    Usage {
        /// What is wrong.
        msg: String,
    },
    /// A file's content is bad.
    #[snafu(display("{}: {msg}", path.display()))]
    BadFile {
        /// Path.
        path: std::path::PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The timeline could not be drawn.
    #[snafu(display("{source}"))]
    Timeline {
        /// Cause.
        source: crate::timeline::TimelineError,
    },
    /// A check failed (demo verification).
    #[snafu(display("{msg}"))]
    Check {
        /// What failed.
        msg: String,
    },
}

/// `Result` with a [`CliError`].
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl From<vmm::VmmError> for CliError {
    fn from(source: vmm::VmmError) -> Self {
        CliError::Vmm { source }
    }
}

impl From<crate::output::OutputError> for CliError {
    fn from(source: crate::output::OutputError) -> Self {
        CliError::Output { source }
    }
}

/// Run a subcommand.
pub fn dispatch(cmd: Command, log_level: slog::Level, log: &Logger) -> Result<()> {
    match cmd {
        Command::Types { json } => types::run(json),
        Command::Soak { w, a, json } => soak::run(&a, &w, json, log),
        Command::Run {
            w,
            frames,
            vcpu,
            png,
            json,
        } => run::run(&w, frames, vcpu, png.as_deref(), json, log),
        Command::Dump {
            w,
            frames,
            at_command,
            vcpu,
            out,
            device_only,
        } => dump::run(&w, frames, at_command, vcpu, &out, device_only, log),
        Command::Restore {
            file,
            frames,
            png,
            json,
        } => restore::run(&file, frames, png.as_deref(), json, log),
        Command::Inspect { file, json, config } => inspect::run(&file, json, config),
        Command::Demo {
            w,
            m,
            frames,
            migrate_at,
            dir,
            device_process,
            json,
        } => demo::run(
            &w,
            &m,
            frames,
            migrate_at,
            &dir,
            device_process,
            json,
            log_level,
            log,
        ),
        Command::Incoming {
            listen,
            link,
            mdev_type,
            frames,
            dirty_tracking,
            png_after,
            no_verify,
            inject_failure,
            json,
        } => incoming::run(
            &listen,
            &link,
            &mdev_type,
            frames,
            &dirty_tracking,
            png_after.as_deref(),
            no_verify,
            inject_failure.as_deref(),
            json,
            log,
        ),
        Command::Migrate {
            to,
            w,
            m,
            frames,
            migrate_at,
            png_before,
            json,
        } => migrate::run(
            &to,
            &w,
            &m,
            migrate::frames_given(&m, frames, migrate_at)?,
            png_before.as_deref(),
            json,
            log,
        ),
        Command::SnapshotDemo {
            w,
            frames,
            dump_at,
            dir,
            json,
        } => snapshot_demo::run(&w, frames, dump_at, &dir, json, log),
        Command::Bench {
            mdev_type,
            what,
            runs,
            timeline,
            peer,
            vcpu,
            channels,
            json,
        } => bench::run(
            bench::BenchArgs {
                mdev_type: &mdev_type,
                what: &what,
                runs,
                vcpu,
                channels,
                peer: peer.as_deref(),
                timeline: timeline.as_deref(),
                json,
            },
            log,
        ),
        Command::Serve {
            socket,
            device_type,
            dirty_tracking,
            migration_features,
            deadline_ms,
            max_data_xfer_size,
            exit_at,
        } => serve::run(
            &socket,
            &device_type,
            &dirty_tracking,
            &migration_features,
            deadline_ms,
            max_data_xfer_size,
            exit_at.as_deref(),
            log,
        ),
    }
}

/// Parse a `--dirty-tracking` value.
pub fn parse_tracking(s: &str) -> Result<vgpu_sim::DirtyTracking> {
    vgpu_sim::DirtyTracking::parse(s).ok_or_else(|| CliError::Usage {
        msg: format!("--dirty-tracking '{s}' is not shadow-pt, pinned or off"),
    })
}

/// Boot a VM with the workload, frame limit `frames`.
pub fn boot(w: &WorkloadArgs, frames: u64, log: &Logger) -> Result<vmm::Vm> {
    boot_with(w, frames, vgpu_sim::DirtyTracking::ShadowPt, log)
}

/// Boot a VM with the workload and a DMA tracking mode.
/// `--lenient-v1` as the v1 region's checks.
pub fn v1_checks(lenient: bool) -> state_region::V1Checks {
    if lenient {
        state_region::V1Checks::Lenient
    } else {
        state_region::V1Checks::Strict
    }
}

/// `--migration-features` as `VFIO_MIGRATION_*` bits.
pub fn parse_features(s: &str) -> Result<u32> {
    vgpu_platform::parse_migration_features(s).map_err(|msg| CliError::Usage {
        msg: format!("--migration-features: {msg}"),
    })
}

pub fn boot_with(
    w: &WorkloadArgs,
    frames: u64,
    tracking: vgpu_sim::DirtyTracking,
    log: &Logger,
) -> Result<vmm::Vm> {
    let mut cfg = vgpu_platform::vm_config(&w.mdev_type, log.clone());
    cfg.ram_size = ram_size(w)?;
    cfg.factory = serve::attach(
        &w.device,
        w.dma_by_message,
        vgpu_platform::factory_checked(
            tracking,
            parse_features(&w.migration_features)?,
            v1_checks(w.lenient_v1),
        ),
    )?;
    let mut vm = vmm::Vm::new(&cfg)?;
    vm.boot(&w.params(frames))?;
    Ok(vm)
}

fn ram_size(w: &WorkloadArgs) -> Result<u64> {
    w.ram_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| CliError::Usage {
            msg: format!("--ram-mib {} is too large", w.ram_mib),
        })
}

/// The factory of a VM that runs no workload (`--workload idle`): the device of
/// `device_type` (the serial device's type, or a vGPU type), in process or at `device`,
/// with a guest that stays idle.
pub fn idle_factory(
    device: &str,
    device_type: &str,
    tracking: &str,
    features: &str,
) -> Result<std::sync::Arc<dyn vmm::VmFactory>> {
    let inner = serve::factory_for(device_type, tracking, features)?;
    serve::attach(
        device,
        false,
        std::sync::Arc::new(vgpu_platform::IdleFactory::new(inner)),
    )
}

/// Boot a VM that runs no workload: the firmware places the BARs, the guest idles.
pub fn boot_idle(w: &WorkloadArgs, tracking: &str, log: &Logger) -> Result<vmm::Vm> {
    let mut cfg = vgpu_platform::vm_config(&w.mdev_type, log.clone());
    cfg.ram_size = ram_size(w)?;
    cfg.factory = idle_factory(&w.device, &w.mdev_type, tracking, &w.migration_features)?;
    let mut vm = vmm::Vm::new(&cfg)?;
    vm.firmware()?;
    vm.run(vmm::StopAt::Done)?;
    Ok(vm)
}
