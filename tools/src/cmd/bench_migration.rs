//! `bench --what migration`: the reference scenario of the published GVT-g figures, the
//! stream against raw loopback TCP and against its own integrity checks, and shadow-pt
//! against pinned tracking. Everything side by side in one run; medians over `runs`.

use std::net::TcpListener;
use std::time::Duration;
use vgpu_platform::VgpuVm;

use serde::Serialize;
use slog::Logger;
use vgpu_sim::workload::Params;
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, Progress, Protocol, SourceOptions, SourceReport, TargetOptions};
use vmm::{StopAt, Vm};

use snafu::ResultExt;
use std::path::Path;

use super::cpu::own_seconds;
use super::{CliError, Result, TimelineSnafu};
use crate::cli::Vcpu;
use crate::timeline::Recorder;

/// Fill the guest RAM above the workload's layout and the graphics memory above its
/// framebuffers and textures with pseudo-random data, as a guest that uses its memory
/// would have (the published figures move all of RAM and graphics memory). Returns bytes.
fn fill(vm: &mut Vm, params: &Params, seed: u64) -> Result<u64> {
    use vfio_bindings::bindings::vfio::VFIO_PCI_BAR2_REGION_INDEX;
    use vgpu_sim::workload::layout::MIN_GUEST_RAM;
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut refill = |chunk: &mut [u8]| {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
    };
    let ram = vmm::memory::size(vm.memory());
    let mut n = 0;
    let mut a = MIN_GUEST_RAM.next_multiple_of(1 << 20);
    while a + (1 << 20) <= ram {
        refill(&mut chunk);
        vmm::memory::write(vm.memory(), a, &chunk)
            .map_err(|e| CliError::Check { msg: e.to_string() })?;
        a += 1 << 20;
        n += 1 << 20;
    }
    let gsize = vm.gmem_size();
    let mut o = params.plan().end.next_multiple_of(1 << 20);
    while o + (1 << 20) <= gsize {
        refill(&mut chunk);
        vm.device()
            .region_write(VFIO_PCI_BAR2_REGION_INDEX, o, &chunk)
            .map_err(|e| CliError::Check { msg: e.to_string() })?;
        o += 1 << 20;
        n += 1 << 20;
    }
    Ok(n)
}

/// How the bench's migrations run: the source guest's vCPU and the RAM channels.
#[derive(Debug, Clone, Copy)]
pub struct How {
    /// The source guest's vCPU.
    pub vcpu: Vcpu,
    /// RAM channels beside the main stream (`SourceOptions::channels`).
    pub channels: u32,
}

/// What one benchmark migration runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Setup<'a> {
    pub(super) mdev_type: &'a str,
    pub(super) ram: u64,
    pub(super) params: Params,
    /// Frame to migrate at; `u64::MAX`: after the workload ended (the guest idles).
    pub(super) migrate_at: u64,
    pub(super) tracking: DirtyTracking,
    /// Guest RAM and graphics memory filled with non-zero bytes.
    pub(super) filled: bool,
    /// The target prepares its VM before the source connects.
    pub(super) prefault: bool,
    /// The source guest's vCPU.
    pub(super) vcpu: Vcpu,
}

/// One migration of a scenario, source and target in this process (target on a thread).
pub(super) fn one(setup: &Setup, opts: &SourceOptions, log: &Logger) -> Result<Run> {
    let Setup {
        mdev_type,
        ram,
        ref params,
        migrate_at,
        tracking,
        filled,
        prefault,
        vcpu,
    } = *setup;
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| CliError::Check { msg: e.to_string() })?;
    let url = format!(
        "tcp://{}",
        listener
            .local_addr()
            .map_err(|e| CliError::Check { msg: e.to_string() })?
    );
    let topts = TargetOptions {
        bar_region_offset: 0,
        peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
        stop_self_at: None,
        mdev_type: mdev_type.into(),
        irq_sink_base: 900,
        factory: if prefault {
            vgpu_platform::target_factory(
                tracking,
                vgpu_sim::device::MIGRATION_FEATURES,
                state_region::V1Checks::Strict,
            )
        } else {
            vgpu_platform::factory(tracking)
        },
        fail_at: None,
        log: log.clone(),
    };
    // With `prefault`, the target makes its VM and faults in its RAM and its device's
    // resume staging before the source connects (as `incoming --ram-mib` does); else it
    // makes them at the stream's header.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let target = std::thread::Builder::new()
        .name("target".into())
        .spawn(move || {
            let prepared = match prefault.then(|| migration::prepare(&topts, ram)) {
                Some(Err(e)) => {
                    let _ = ready_tx.send(());
                    return Err(e);
                }
                Some(Ok(p)) => Some(p),
                None => None,
            };
            let _ = ready_tx.send(());
            migration::incoming_prepared(&listener, &topts, prepared).map(|(_, r, _)| r)
        })
        .map_err(|e| CliError::Check { msg: e.to_string() })?;
    let mut cfg = vgpu_platform::vm_config(mdev_type, log.clone());
    cfg.ram_size = ram;
    cfg.factory = vgpu_platform::factory(tracking);
    let mut vm = Vm::new(&cfg)?;
    vm.boot(params)?;
    if filled {
        fill(&mut vm, params, 0x9e37_79b9_7f4a_7c15)?;
    }
    // The pipeline alone: the workload has finished, the guest idles.
    let at = match migrate_at {
        u64::MAX => StopAt::Done,
        f => StopAt::Frame(f),
    };
    match vcpu {
        Vcpu::Sim => {
            vm.run(at)?;
        }
        // The KVM vCPU pauses at `at` and runs on its own thread again once the migration
        // starts pre-copy.
        Vcpu::Kvm => {
            vm.run_kvm(at)?;
        }
    }
    // A hang guard, not a speed check: a target that fails says so through the join.
    let _ = ready_rx.recv_timeout(Duration::from_secs(300));
    let mut rec = Recorder::new(false);
    rec.start();
    let cpu0 = own_seconds();
    let res = migration::migrate(&mut vm, &url, opts, &mut |p| rec.progress(p));
    let t = target.join().map_err(|_| CliError::Check {
        msg: "the target thread panicked".into(),
    })?;
    let cpu_s = own_seconds() - cpu0;
    let (rep, _) = res.map_err(|e| CliError::Check {
        msg: format!("benchmark migration failed: {e}"),
    })?;
    let t = t.map_err(|e| CliError::Check {
        msg: format!("benchmark target failed: {e}"),
    })?;
    Ok((rep, rec.rounds().to_vec(), t.prefault_ms, cpu_s))
}

/// One migration: the source's report, its rounds' live figures, the target's preparation
/// time before the stream (ms; 0 without `prefault`), and the CPU seconds both ends spent
/// from the source's start to the target's end (this process, every thread).
type Run = (SourceReport, Vec<Progress>, f64, f64);

/// The last migration a bench ran, for `--timeline`.
pub(super) type Last = Option<(SourceReport, Vec<Progress>)>;

/// Draw `last` at `path` when both are there.
pub(super) fn draw_last(
    path: Option<&Path>,
    title: &str,
    last: &Last,
    limit_ms: f64,
) -> Result<()> {
    if let (Some(path), Some((rep, rounds))) = (path, last) {
        crate::timeline::draw(path, title, rep, rounds, Some(limit_ms)).context(TimelineSnafu)?;
    }
    Ok(())
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Debug, Serialize)]
struct Scenario {
    downtime_ms: f64,
    total_ms: f64,
    floor_ms: f64,
    total_over_floor: f64,
    bytes_total: u64,
    bytes_ram: u64,
    bytes_dma_ram: u64,
    bytes_device_precopy: u64,
    bytes_device_stopcopy: u64,
    rounds: usize,
    runs_downtime_ms: Vec<f64>,
    runs_total_ms: Vec<f64>,
}

fn summarize(reps: &[SourceReport], bw: u64) -> Scenario {
    let dt = median(reps.iter().map(|r| r.downtime_ms).collect());
    let tt = median(reps.iter().map(|r| r.total_ms).collect());
    let mid = &reps[reps.len() / 2];
    let floor_ms = mid.bytes.total as f64 / bw as f64 * 1e3;
    Scenario {
        downtime_ms: dt,
        total_ms: tt,
        floor_ms,
        total_over_floor: tt / floor_ms,
        bytes_total: mid.bytes.total,
        bytes_ram: mid.bytes.ram,
        bytes_dma_ram: mid.bytes.dma_ram,
        bytes_device_precopy: mid.bytes.device_precopy,
        bytes_device_stopcopy: mid.bytes.device_stopcopy,
        rounds: mid.rounds.len(),
        runs_downtime_ms: reps.iter().map(|r| r.downtime_ms).collect(),
        runs_total_ms: reps.iter().map(|r| r.total_ms).collect(),
    }
}

/// Guest RAM of the reference scenario and of the pipeline bench.
pub(super) const REFERENCE_RAM: u64 = 2 << 30;

/// The reference scenario's setup: vgpu-512, `ram` of guest RAM, migrated at frame 8.
pub(super) fn reference(ram: u64, params: &Params, filled: bool, vcpu: Vcpu) -> Setup<'static> {
    Setup {
        mdev_type: "vgpu-512",
        ram,
        params: *params,
        migrate_at: 8,
        tracking: DirtyTracking::ShadowPt,
        filled,
        prefault: true,
        vcpu,
    }
}

fn scenario(
    runs: usize,
    setup: &Setup,
    opts: &SourceOptions,
    last: &mut Last,
    log: &Logger,
) -> Result<Scenario> {
    let mut reps = Vec::new();
    for _ in 0..runs {
        let (rep, rounds, _, _) = one(setup, opts, log)?;
        *last = Some((rep.clone(), rounds));
        reps.push(rep);
    }
    Ok(summarize(&reps, opts.bandwidth.unwrap_or(1)))
}

pub fn run(runs: usize, how: How, timeline: Option<&Path>, json: bool, log: &Logger) -> Result<()> {
    let runs = runs.max(1);
    let params = Params {
        frame_limit: 1_000,
        ..Params::default()
    };
    let ram = REFERENCE_RAM;
    let bw = 1_250_000_000u64; // 10 Gbit/s

    // 1. The reference scenario at 10 Gbit/s.
    let capped = SourceOptions {
        protocol: Protocol::Region,
        bandwidth: Some(bw),
        channels: how.channels,
        ..SourceOptions::default()
    };
    let vcpu = how.vcpu;
    let mut last = None;
    let capped_run = scenario(
        runs,
        &reference(ram, &params, true, vcpu),
        &capped,
        &mut last,
        log,
    )?;
    let limit = capped.downtime_limit.as_secs_f64() * 1e3;
    draw_last(
        timeline,
        "bench reference scenario (10 Gbit/s)",
        &last,
        limit,
    )?;
    let idle = scenario(
        runs,
        &reference(ram, &params, false, vcpu),
        &capped,
        &mut None,
        log,
    )?;

    let p = super::bench_pipeline::figures(runs, &params, how, None, false, &mut None, log)?;
    let (s, t, h) = (p.stream, p.tcp, p.checks);

    // 3. shadow-pt against pinned: guest RAM bytes the DMA log made us send.
    let mut dma = Vec::new();
    for tracking in [DirtyTracking::ShadowPt, DirtyTracking::Pinned] {
        let small = Params {
            width: 640,
            height: 360,
            ..params
        };
        let setup = Setup {
            mdev_type: "vgpu-64",
            migrate_at: 6,
            tracking,
            ..reference(256 << 20, &small, false, vcpu)
        };
        let (r, _, _, _) = one(&setup, &capped, log)?;
        let pages: u64 = r.rounds.iter().map(|x| x.dma_only_pages).sum();
        dma.push((tracking, r.bytes.dma_ram, r.bytes.ram, pages));
    }

    if json {
        let v = serde_json::json!({
            "reference_scenario": capped_run,
            "idle_memory_scenario": idle,
            "uncapped": {
                "stream_mbps": s / 1e6, "raw_tcp_mbps": t / 1e6, "checks_mbps": h / 1e6,
                "stream_over_slower": s / t.min(h),
            },
            "dma_tracking": dma.iter().map(|(k, d, r, p)| serde_json::json!({
                "tracking": format!("{k:?}"), "dma_ram_bytes": d, "ram_bytes": r, "dma_only_pages_reported": p
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let p = Params::default();
        println!(
            "live migration, vgpu-512, 2 GiB guest RAM and graphics memory in use, the {} profile at {}x{}, {} vCPU, 10 Gbit/s, medians of {runs} runs",
            p.profile.name(),
            p.width,
            p.height,
            vcpu.name()
        );
        println!(
            "  downtime            {:>9.2} ms   (GVT-g: 300-500 ms; aim <= 30 ms)",
            capped_run.downtime_ms
        );
        println!("  total               {:>9.1} ms", capped_run.total_ms);
        println!(
            "  floor (bytes/bw)    {:>9.1} ms   total/floor {:.2} (aim <= 1.3)",
            capped_run.floor_ms, capped_run.total_over_floor
        );
        println!(
            "  bytes: {:.1} MiB total, RAM {:.1} MiB (DMA-found {:.2}), device pre-copy {:.1} MiB, stop-copy {:.2} MiB, {} rounds",
            capped_run.bytes_total as f64 / 1048576.0,
            capped_run.bytes_ram as f64 / 1048576.0,
            capped_run.bytes_dma_ram as f64 / 1048576.0,
            capped_run.bytes_device_precopy as f64 / 1048576.0,
            capped_run.bytes_device_stopcopy as f64 / 1048576.0,
            capped_run.rounds
        );
        println!("the same with guest RAM and graphics memory left zero (zero pages compacted):");
        println!(
            "  downtime {:.2} ms, total {:.1} ms, floor {:.1} ms, {:.1} MiB moved",
            idle.downtime_ms,
            idle.total_ms,
            idle.floor_ms,
            idle.bytes_total as f64 / 1048576.0
        );
        println!("uncapped on loopback, the pipeline alone (memory in use, guest idle):");
        println!("  migration stream    {:>9.0} MB/s", s / 1e6);
        println!("  raw loopback TCP    {:>9.0} MB/s", t / 1e6);
        println!("  integrity checks    {:>9.0} MB/s   (XXH3-128 on RAM pages, SHA-256 on the rest, 1 core)", h / 1e6);
        println!(
            "  stream / slower     {:>9.2}      (aim >= 0.7)",
            s / t.min(h)
        );
        println!("DMA dirty tracking (vgpu-64, 640x360):");
        for (k, d, r, p) in &dma {
            println!(
                "  {:<10?} pages reported by the DMA log only: {:>6}; their non-zero bytes sent {:>8.3} MiB of {:>7.2} MiB RAM sent",
                k,
                p,
                *d as f64 / 1048576.0,
                *r as f64 / 1048576.0
            );
        }
    }
    let _ = Duration::ZERO;
    Ok(())
}
