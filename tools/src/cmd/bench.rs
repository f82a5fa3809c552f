//! `bench`: device-context save and load throughput, side by side with memcpy and SHA-256 of
//! the same bytes on one core, medians over several runs.

use std::hint::black_box;
use std::time::Instant;
use vgpu_platform::VgpuVm;

use mdev_core::MigState;
use serde::Serialize;
use sha2::{Digest, Sha256};
use slog::Logger;
use state_region::driver as v1;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_STATE_V1_RESUMING, VFIO_DEVICE_STATE_V1_RUNNING, VFIO_DEVICE_STATE_V1_SAVING,
};
use vgpu_sim::workload::Params;
use vmm::{StopAt, Vm};

use super::{CliError, Result};

#[derive(Debug, Serialize)]
struct Figure {
    name: &'static str,
    median_gbps: f64,
    runs_gbps: Vec<f64>,
    ratio_to_sha256: f64,
    /// Median over runs of the process's CPU time over wall time while timed: how many
    /// cores the path kept busy (the context paths hash on every core they get; on a
    /// shared machine they may get fewer than it has).
    median_cores: f64,
}

/// CPU time of the whole process (every thread), in seconds.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` that we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A timer of wall and process CPU time.
struct Timer {
    wall: Instant,
    cpu: f64,
}

impl Timer {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_secs(),
        }
    }

    /// Record `bytes` over the time since the start: GB/s in `gbps`, cores in `cores`.
    fn record(&self, bytes: u64, gbps_out: &mut Vec<f64>, cores: &mut Vec<f64>) {
        let secs = self.wall.elapsed().as_secs_f64();
        gbps_out.push(gbps(bytes, secs));
        cores.push((cpu_secs() - self.cpu) / secs);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn vm_for(mdev_type: &str, log: &Logger) -> Result<Vm> {
    let mut cfg = vgpu_platform::vm_config(mdev_type, log.clone());
    cfg.ram_size = 64 << 20;
    let mut vm = Vm::new(&cfg)?;
    vm.boot(&Params {
        frame_limit: 2,
        ..Params::default()
    })?;
    vm.run(StopAt::Done)?;
    Ok(vm)
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Check { msg: e.to_string() }
}

/// What `bench` was asked for (its command-line options).
#[derive(Debug, Clone, Copy)]
pub struct BenchArgs<'a> {
    /// mdev type of the context bench.
    pub mdev_type: &'a str,
    /// Which parts.
    pub what: &'a str,
    /// Repetitions.
    pub runs: usize,
    /// The source guest's vCPU (migration and pipeline).
    pub vcpu: crate::cli::Vcpu,
    /// RAM channels (migration and pipeline).
    pub channels: u32,
    /// A peer measured beside ours (pipeline).
    pub peer: Option<&'a str>,
    /// Where to draw the last migration.
    pub timeline: Option<&'a std::path::Path>,
    /// Print JSON.
    pub json: bool,
}

/// `vgpu-migrate bench`.
pub fn run(args: BenchArgs, log: &Logger) -> Result<()> {
    let BenchArgs {
        mdev_type,
        what,
        runs,
        vcpu,
        channels,
        peer,
        timeline,
        json,
    } = args;
    let how = super::bench_migration::How { vcpu, channels };
    if channels > vmm::migration::multifd::MAX_CHANNELS {
        return Err(CliError::Usage {
            msg: format!(
                "--channels {channels}: at most {} RAM channels",
                vmm::migration::multifd::MAX_CHANNELS
            ),
        });
    }
    if channels > 0 && !matches!(what, "migration" | "pipeline") {
        return Err(CliError::Usage {
            msg: format!("--channels goes with --what migration or pipeline, not '{what}'"),
        });
    }
    if timeline.is_some() && !matches!(what, "migration" | "pipeline" | "all") {
        return Err(CliError::Usage {
            msg: format!("--timeline goes with --what migration, pipeline or all, not '{what}'"),
        });
    }
    let qemu = match (peer, what) {
        (None, _) => false,
        (Some("qemu"), "pipeline") => true,
        (Some("qemu"), _) => {
            return Err(CliError::Usage {
                msg: format!("--peer qemu goes with --what pipeline, not '{what}'"),
            })
        }
        (Some(other), _) => {
            return Err(CliError::Usage {
                msg: format!("--peer '{other}' is not qemu"),
            })
        }
    };
    if vcpu == crate::cli::Vcpu::Kvm {
        if !matches!(what, "migration" | "pipeline") {
            return Err(CliError::Usage {
                msg: format!("--vcpu kvm goes with --what migration or pipeline, not '{what}'"),
            });
        }
        vmm::kvm::available().map_err(|e| CliError::Usage {
            msg: format!("--vcpu kvm: KVM is not usable here: {e}"),
        })?;
    }
    match what {
        "context" => context(mdev_type, runs, json, log),
        "migration" => super::bench_migration::run(runs, how, timeline, json, log),
        "pipeline" => super::bench_pipeline::pipeline(runs, how, qemu, timeline, json, log),
        "kvm" => super::bench_kvm::run(runs, json, log),
        "vfio-user" => super::bench_vfio_user::run(runs, json, log),
        "render" => super::bench_render::run(runs, json, log),
        "all" => {
            context(mdev_type, runs, json, log)?;
            super::bench_render::run(runs, json, log)?;
            super::bench_migration::run(runs, how, timeline, json, log)
        }
        other => Err(CliError::Usage {
            msg: format!(
                "--what '{other}' is not context, migration, pipeline, kvm, vfio-user, render or all"
            ),
        }),
    }
}

fn context(mdev_type: &str, runs: usize, json: bool, log: &Logger) -> Result<()> {
    let runs = runs.max(1);
    let mut src = vm_for(mdev_type, log)?;
    let index = vmm::snapshot::state_region_index(&src)?;

    let mut save_region = Vec::new();
    let mut save_v2 = Vec::new();
    let mut load_region = Vec::new();
    let mut memcpy = Vec::new();
    let mut sha = Vec::new();
    // Cores busy, per path, in the order of the figures.
    let mut cores: [Vec<f64>; 6] = Default::default();
    let mut context: Vec<u8> = Vec::new();

    for run in 0..=runs {
        // Save through the v1 region: the VMM reads each chunk out of the data window.
        // Run 0 keeps the bytes for the load runs and is not timed.
        let mut bytes = 0u64;
        let keep = run == 0;
        let t = Timer::start();
        v1::set_device_state(src.device(), index, VFIO_DEVICE_STATE_V1_SAVING).map_err(err)?;
        v1::save_chunks(src.device(), index, |c| {
            bytes += c.len() as u64;
            if keep {
                context.extend_from_slice(c);
            } else {
                black_box(c);
            }
            Ok::<(), std::io::Error>(())
        })
        .map_err(|e| err(format!("{e:?}")))?;
        if !keep {
            t.record(bytes, &mut save_region, &mut cores[0]);
        }
        v1::set_device_state(src.device(), index, VFIO_DEVICE_STATE_V1_RUNNING).map_err(err)?;

        // Save through the v2 data stream (no data window).
        let mig = src
            .device()
            .migration()
            .ok_or_else(|| err("no v2 migration"))?;
        let mut buf = vec![0u8; 1 << 20];
        let t = Timer::start();
        let stream = mig
            .set_mig_state(MigState::StopCopy)
            .map_err(err)?
            .stream
            .ok_or_else(|| err("STOP_COPY opened no data stream"))?;
        let mut n2 = 0u64;
        loop {
            let n = mig.read_data(stream, &mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            black_box(&buf[..n]);
            n2 += n as u64;
        }
        if !keep {
            t.record(n2, &mut save_v2, &mut cores[1]);
        }
        mig.set_mig_state(MigState::Running).map_err(err)?;
    }
    let total = context.len() as u64;

    // The memcpy floor writes into memory that is already mapped: page faults are not
    // copying.
    let mut copy = vec![0u8; context.len()];
    copy.fill(1);
    let mut load_v2 = Vec::new();
    // Run 0 loads through both paths untimed, as run 0 saved: the very first load of the
    // process also pays for the kernel finding memory for a second device (measured at half
    // the speed of the next ones), which would fall on whichever path went first.
    for run in 0..=runs {
        let warm = run == 0;
        // Both load paths, the first of them alternating between runs: the first load after
        // a VM was freed pays for the kernel's reclaim, which must not favour one path.
        for path in if run % 2 == 1 { [0, 1] } else { [1, 0] } {
            if path == 0 {
                // Load through the v1 region into a fresh device, as a target made ready before the
                // switchover: instance created and RESUMING entered outside the timing.
                let mut dst = vm_for(mdev_type, log)?;
                v1::set_device_state(dst.device(), index, VFIO_DEVICE_STATE_V1_RESUMING)
                    .map_err(err)?;
                let t = Timer::start();
                let window = state_region::DEFAULT_WINDOW;
                for c in context.chunks(window) {
                    v1::resume_chunk(dst.device(), index, c).map_err(err)?;
                }
                v1::set_device_state(dst.device(), index, 0).map_err(err)?;
                if !warm {
                    t.record(total, &mut load_region, &mut cores[2]);
                }
                drop(dst);
            } else {
                // Load through the v2 data stream.
                let mut dst = vm_for(mdev_type, log)?;
                let mig = dst
                    .device()
                    .migration()
                    .ok_or_else(|| err("no v2 migration"))?;
                let stream = mig
                    .set_mig_state(MigState::Resuming)
                    .map_err(err)?
                    .stream
                    .ok_or_else(|| err("RESUMING opened no data stream"))?;
                let t = Timer::start();
                for c in context.chunks(1 << 20) {
                    mdev_core::write_all_data(mig, stream, c).map_err(err)?;
                }
                mig.set_mig_state(MigState::Stop).map_err(err)?;
                if !warm {
                    t.record(total, &mut load_v2, &mut cores[3]);
                }
                drop(dst);
            }
        }

        if warm {
            continue;
        }
        // The floors, on the same bytes.
        let t = Timer::start();
        copy.copy_from_slice(&context);
        black_box(&copy);
        t.record(total, &mut memcpy, &mut cores[4]);
        let t = Timer::start();
        let d = Sha256::digest(&context);
        black_box(d);
        t.record(total, &mut sha, &mut cores[5]);
    }

    let sha_med = median(&mut sha.clone());
    let [c0, c1, c2, c3, c4, c5] = cores;
    let fig = |name, v: &mut Vec<f64>, mut c: Vec<f64>| {
        let m = median(&mut v.clone());
        Figure {
            name,
            median_gbps: m,
            runs_gbps: v.clone(),
            ratio_to_sha256: m / sha_med,
            median_cores: median(&mut c),
        }
    };
    let figures = vec![
        fig("save (v1 region)", &mut save_region, c0),
        fig("save (v2 stream)", &mut save_v2, c1),
        fig("load (v1 region)", &mut load_region, c2),
        fig("load (v2 stream)", &mut load_v2, c3),
        fig("memcpy", &mut memcpy, c4),
        fig("sha256 (1 core)", &mut sha, c5),
    ];
    if json {
        let v = serde_json::json!({
            "mdev_type": mdev_type,
            "context_bytes": total,
            "runs": runs,
            "figures": figures,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "device context of {mdev_type}: {} MiB, medians of {runs} runs",
            total >> 20
        );
        println!(
            "{:<20} {:>10} {:>12} {:>12}",
            "path", "GB/s", "x sha256", "cores busy"
        );
        for f in &figures {
            println!(
                "{:<20} {:>10.2} {:>12.2} {:>12.2}",
                f.name, f.median_gbps, f.ratio_to_sha256, f.median_cores
            );
        }
    }
    Ok(())
}
