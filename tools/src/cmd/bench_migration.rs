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

use super::bench_floors::{check_rate, raw_tcp};
use super::bench_qemu::PeerBench;
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
struct Setup<'a> {
    mdev_type: &'a str,
    ram: u64,
    params: Params,
    /// Frame to migrate at; `u64::MAX`: after the workload ended (the guest idles).
    migrate_at: u64,
    tracking: DirtyTracking,
    /// Guest RAM and graphics memory filled with non-zero bytes.
    filled: bool,
    /// The target prepares its VM before the source connects.
    prefault: bool,
    /// The source guest's vCPU.
    vcpu: Vcpu,
}

/// One migration of a scenario, source and target in this process (target on a thread).
fn one(setup: &Setup, opts: &SourceOptions, log: &Logger) -> Result<Run> {
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
type Last = Option<(SourceReport, Vec<Progress>)>;

/// Draw `last` at `path` when both are there.
fn draw_last(path: Option<&Path>, title: &str, last: &Last, limit_ms: f64) -> Result<()> {
    if let (Some(path), Some((rep, rounds))) = (path, last) {
        crate::timeline::draw(path, title, rep, rounds, Some(limit_ms)).context(TimelineSnafu)?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
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
const REFERENCE_RAM: u64 = 2 << 30;

/// The reference scenario's setup: vgpu-512, `ram` of guest RAM, migrated at frame 8.
fn reference(ram: u64, params: &Params, filled: bool, vcpu: Vcpu) -> Setup<'static> {
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

/// Stream, raw TCP and integrity-check throughput (bytes/s, medians) on the same bytes: the
/// migration pipeline alone, with guest memory in use and the guest idle.
fn pipeline_figures(
    runs: usize,
    params: &Params,
    how: How,
    mut peer: Option<&mut PeerBench>,
    compare_lazy: bool,
    last: &mut Last,
    log: &Logger,
) -> Result<Pipeline> {
    let params = *params;
    // 2. Uncapped: our stream against raw TCP and its own checks on as many bytes.
    let free = SourceOptions {
        protocol: Protocol::Region,
        channels: how.channels,
        ..SourceOptions::default()
    };
    let vcpu = how.vcpu;
    let mut stream = Vec::new();
    let mut lazy = Vec::new();
    let mut prefault = Vec::new();
    let mut tcp = Vec::new();
    let mut sha = Vec::new();
    let (mut cpu, mut tcp_cpu) = (Vec::new(), Vec::new());
    let idle = Params {
        frame_limit: 4,
        ..params
    };
    let once = |prefault: bool| {
        let setup = Setup {
            migrate_at: u64::MAX,
            prefault,
            ..reference(REFERENCE_RAM, &idle, true, vcpu)
        };
        one(&setup, &free, log)
    };
    let rate = |r: &SourceReport| r.bytes.total as f64 / (r.total_ms / 1e3);
    for _ in 0..runs {
        let (r, rounds, pf, c) = once(true)?;
        *last = Some((r.clone(), rounds));
        stream.push(rate(&r));
        cpu.push(c / (r.bytes.total as f64 / 1e9));
        prefault.push(pf);
        if compare_lazy {
            // The same with the target faulting its RAM in while the stream arrives.
            lazy.push(rate(&once(false)?.0));
        }
        let (t, c) = raw_tcp(r.bytes.total)?;
        tcp.push(t);
        tcp_cpu.push(c / (r.bytes.total as f64 / 1e9));
        sha.push(check_rate(r.bytes.ram, r.bytes.total - r.bytes.ram));
        if let Some(p) = peer.as_deref_mut() {
            // QEMU's guest holds as many non-zero bytes as our stream moved.
            p.run(r.bytes.total);
        }
    }
    Ok(Pipeline {
        stream: median(stream),
        lazy: (!lazy.is_empty()).then(|| median(lazy)),
        prefault_ms: median(prefault),
        tcp: median(tcp),
        checks: median(sha),
        cpu_per_gb: median(cpu),
        tcp_cpu_per_gb: median(tcp_cpu),
    })
}

/// The uncapped pipeline's figures, medians; rates in bytes/s.
#[derive(Debug)]
struct Pipeline {
    /// Our stream into a target whose RAM was faulted in before it accepted.
    stream: f64,
    /// Our stream into a target that makes its VM at the stream's header.
    lazy: Option<f64>,
    /// The target's preparation before the stream, ms.
    prefault_ms: f64,
    /// Raw loopback TCP on as many bytes.
    tcp: f64,
    /// The stream's integrity checks on one core.
    checks: f64,
    /// CPU seconds per GB (10^9 bytes) moved, both ends of our stream.
    cpu_per_gb: f64,
    /// CPU seconds per GB moved, both ends of raw loopback TCP.
    tcp_cpu_per_gb: f64,
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The fastest a pipeline costing `cpu_per_gb` CPU seconds per GB can run when both its
/// ends share this machine's cores, bytes/s.
fn bound(cpu_per_gb: f64) -> f64 {
    cores() as f64 / cpu_per_gb.max(1e-9) * 1e9
}

/// `bench --what pipeline`: only the uncapped pipeline figures; with `qemu`, QEMU's own
/// migration of as much non-zero memory beside them (when QEMU is installed).
pub fn pipeline(
    runs: usize,
    how: How,
    qemu: bool,
    timeline: Option<&Path>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let params = Params {
        frame_limit: 1_000,
        ..Params::default()
    };
    let mut peer = qemu.then(|| PeerBench::new(log));
    let mut last = None;
    let main = How { channels: 0, ..how };
    let p = pipeline_figures(
        runs.max(1),
        &params,
        main,
        peer.as_mut(),
        true,
        &mut last,
        log,
    )?;
    // With RAM channels, the same again on them, beside.
    let multi = (how.channels > 0)
        .then(|| pipeline_figures(runs.max(1), &params, how, None, false, &mut last, log))
        .transpose()?;
    let (s, t, h) = (p.stream, p.tcp, p.checks);
    let limit = SourceOptions::default().downtime_limit.as_secs_f64() * 1e3;
    draw_last(timeline, "bench pipeline (uncapped)", &last, limit)?;
    let peer = peer.as_ref().map(PeerBench::summary);
    if json {
        let mut v = serde_json::json!({"stream_mbps": s / 1e6, "raw_tcp_mbps": t / 1e6, "checks_mbps": h / 1e6, "stream_over_slower": s / t.min(h),
            "target_prefault_ms": p.prefault_ms, "stream_target_not_prefaulted_mbps": p.lazy.map(|l| l / 1e6),
            "stream_cpu_s_per_gb": p.cpu_per_gb, "raw_tcp_cpu_s_per_gb": p.tcp_cpu_per_gb,
            "stream_bound_on_machine_mbps": bound(p.cpu_per_gb) / 1e6});
        if let Some(m) = &multi {
            v["channels"] = serde_json::json!(how.channels);
            v["channels_stream_mbps"] = serde_json::json!(m.stream / 1e6);
            v["channels_cpu_s_per_gb"] = serde_json::json!(m.cpu_per_gb);
            v["channels_stream_over_slower"] = serde_json::json!(m.stream / m.tcp.min(m.checks));
        }
        if let Some(p) = &peer {
            v["peer"] = serde_json::to_value(p).unwrap_or_default();
            if let Some(q) = p.mbps {
                v["stream_over_qemu"] = serde_json::json!(s / 1e6 / q);
            }
        }
        println!("{v}");
    } else {
        println!("migration stream {:.0} MB/s, raw loopback TCP {:.0} MB/s, integrity checks {:.0} MB/s, stream/slower {:.2}", s / 1e6, t / 1e6, h / 1e6, s / t.min(h));
        println!(
            "  the target made its VM and faulted in its RAM before accepting: {:.0} ms, outside the stream's time",
            p.prefault_ms
        );
        if let Some((r, _)) = &last {
            let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{:.0} ms", x.ms)).collect();
            println!(
                "  the last run: {} MiB ({} MiB guest pages, {} MiB device data), total {:.0} ms: rounds {}, downtime {:.1} ms (target load {:.1} ms)",
                r.bytes.total >> 20,
                r.bytes.ram >> 20,
                (r.bytes.device_precopy + r.bytes.device_stopcopy) >> 20,
                r.total_ms,
                rounds.join(" + "),
                r.downtime_ms,
                r.breakdown.target_load_ms
            );
        }
        if let Some(l) = p.lazy {
            println!(
                "  the same stream into a target that makes its VM at the stream's header: {:.0} MB/s (prefaulted/not {:.2})",
                l / 1e6,
                s / l
            );
        }
        println!(
            "  CPU per GB moved (user + system, both ends): ours {:.2} s, raw loopback TCP {:.2} s{}; on this machine's {} cores ours cannot pass {:.0} MB/s",
            p.cpu_per_gb,
            p.tcp_cpu_per_gb,
            peer.as_ref()
                .and_then(|q| q.cpu_per_gb)
                .map(|c| format!(", QEMU {c:.2} s"))
                .unwrap_or_default(),
            cores(),
            bound(p.cpu_per_gb) / 1e6
        );
        if let Some(m) = &multi {
            println!(
                "  with {} RAM channels: {:.0} MB/s, CPU per GB {:.2} s (on this machine's {} cores it cannot pass {:.0} MB/s), stream/slower {:.2}{}",
                how.channels,
                m.stream / 1e6,
                m.cpu_per_gb,
                cores(),
                bound(m.cpu_per_gb) / 1e6,
                m.stream / m.tcp.min(m.checks),
                peer.as_ref()
                    .and_then(|q| q.mbps)
                    .map(|q| format!(", ours/QEMU one channel {:.2}", m.stream / 1e6 / q))
                    .unwrap_or_default()
            );
        }
        if let Some(p) = &peer {
            match p.mbps {
                Some(q) => println!(
                    "QEMU {} ({}, one channel, max-bandwidth unlimited, target RAM preallocated, {} MiB non-zero guest RAM) {:.0} MB/s; ours/QEMU {:.2} (aim >= 2)",
                    p.qemu_version.as_deref().unwrap_or("?"),
                    p.accel.unwrap_or("?"),
                    p.guest_mib,
                    q,
                    s / 1e6 / q
                ),
                None => println!(
                    "QEMU: {}",
                    p.note.as_deref().unwrap_or("no figure")
                ),
            }
            if let Some(m) = p.multifd_mbps {
                println!(
                    "QEMU multifd, {} channels (same guest): {:.0} MB/s, CPU per GB {}",
                    p.multifd_channels,
                    m,
                    p.multifd_cpu_per_gb
                        .map_or_else(|| "?".into(), |c| format!("{c:.2} s"))
                );
            }
        }
    }
    // QEMU installed but its migration failed: our figures are printed, the run fails.
    match peer {
        Some(p) if p.installed && !p.measured => Err(CliError::Check {
            msg: p
                .note
                .unwrap_or_else(|| "the QEMU peer gave no figure".into()),
        }),
        _ => Ok(()),
    }
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

    let p = pipeline_figures(runs, &params, how, None, false, &mut None, log)?;
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
