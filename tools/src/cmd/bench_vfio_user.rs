//! `bench --what vfio-user`: the device in its own process against the device in process.
//!
//! 1. MMIO round trip: one 4-byte read of a BAR0 register through the VFIO contract,
//!    median and p99, in process and through the socket.
//! 2. `MIG_DATA_READ` throughput: the stop-copy stream of a vgpu-512 whose graphics memory
//!    is all in use, read through `read_data` in process and over vfio-user with several
//!    `max_data_xfer_size` values (the larger transfer is the protocol's fast path here).
//! 3. The reference live migration (vgpu-512, 2 GiB, 10 Gbit/s): in process on both sides,
//!    and with a device process on each side; downtime with its breakdown, and total.
//! 4. Device DMA: the workload's run time in process, with guest RAM mapped into the device
//!    process by descriptor (DMA is a memory copy), and reached by `DMA_READ`/`DMA_WRITE`
//!    messages (every DMA a round trip); runs interleaved, medians, checksums compared.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mdev_core::MigState;
use serde::Serialize;
use slog::Logger;
use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX};
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::Params;
use vgpu_sim::DirtyTracking;
use vmm::migration::source::Breakdown;
use vmm::migration::{self, SourceOptions, SourceReport, TargetOptions};
use vmm::{StopAt, Vm, VmConfig, VmFactory};

use super::serve::DeviceProcess;
use super::{CliError, Result};

/// 10 Gbit/s.
const BANDWIDTH: u64 = 1_250_000_000;
/// MMIO reads per measurement.
const MMIO_READS: usize = 20_000;

#[derive(Debug, Serialize)]
struct Mmio {
    where_: &'static str,
    median_us: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct MigRead {
    where_: String,
    max_data_xfer_size: u32,
    bytes: u64,
    mb_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Live {
    where_: &'static str,
    downtime_ms: f64,
    total_ms: f64,
    breakdown: Breakdown,
    runs_downtime_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Dma {
    where_: &'static str,
    frames: u64,
    median_ms: f64,
    frames_per_s: f64,
    runs_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    mmio: Vec<Mmio>,
    mig_data_read: Vec<MigRead>,
    live: Vec<Live>,
    downtime_ratio: f64,
    dma: Vec<Dma>,
    /// Run time with DMA by message / with descriptor maps.
    dma_by_message_ratio: f64,
}

fn check(e: impl std::fmt::Display) -> CliError {
    CliError::Check { msg: e.to_string() }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

fn small() -> Params {
    Params {
        width: 320,
        height: 200,
        triangles: 600,
        frame_limit: 2,
        seed: 7,
        ..Params::for_profile(vgpu_sim::workload::Profile::Light)
    }
}

fn vm(mdev_type: &str, ram: u64, factory: Arc<dyn VmFactory>, log: &Logger) -> Result<Vm> {
    let mut cfg = VmConfig::new(mdev_type, factory, log.clone());
    cfg.ram_size = ram;
    Ok(Vm::new(&cfg)?)
}

fn remote(dev: &DeviceProcess, xfer: u32) -> Arc<dyn VmFactory> {
    remote_with(dev, xfer, false)
}

fn remote_with(dev: &DeviceProcess, xfer: u32, dma_by_message: bool) -> Arc<dyn VmFactory> {
    let mut f = vgpu_platform::RemoteFactory::new(
        vgpu_platform::factory(DirtyTracking::ShadowPt),
        dev.socket().into(),
    );
    f.client.max_data_xfer_size = xfer;
    f.client.dma_by_message = dma_by_message;
    Arc::new(f)
}

/// Frames of the DMA measurement's workload.
const DMA_FRAMES: u64 = 6;

/// Run the DMA measurement's workload to its end; (milliseconds, checksum log).
fn dma_run(mut vm: Vm) -> Result<(f64, Vec<u64>)> {
    let params = Params {
        frame_limit: DMA_FRAMES,
        seed: 11,
        ..Params::for_profile(vgpu_sim::workload::Profile::Medium)
    };
    vm.boot(&params)?;
    let s = Instant::now();
    vm.run(StopAt::Done)?;
    let ms = s.elapsed().as_secs_f64() * 1e3;
    Ok((ms, vm.checksums(DMA_FRAMES)))
}

/// 4. The workload in process, over descriptor maps and by message, interleaved.
fn dma(runs: usize, sock: &dyn Fn(&str) -> std::path::PathBuf, log: &Logger) -> Result<Vec<Dma>> {
    let inproc = vgpu_platform::factory(DirtyTracking::ShadowPt);
    let fd_dev = DeviceProcess::start(&sock("dma-fd"), "vgpu-64", &[])?;
    let msg_dev = DeviceProcess::start(&sock("dma-msg"), "vgpu-64", &[])?;
    let ram = 64 << 20;
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut logs: [Vec<u64>; 3] = Default::default();
    for _ in 0..runs {
        let factories = [
            inproc.clone(),
            remote_with(&fd_dev, 1 << 20, false),
            remote_with(&msg_dev, 1 << 20, true),
        ];
        for (i, f) in factories.into_iter().enumerate() {
            let (ms, log_i) = dma_run(vm("vgpu-64", ram, f, log)?)?;
            times[i].push(ms);
            logs[i] = log_i;
        }
    }
    if logs[1] != logs[0] || logs[2] != logs[0] {
        return Err(check("the checksum logs of the DMA runs differ"));
    }
    let names = [
        "in process",
        "vfio-user, fd maps",
        "vfio-user, DMA by message",
    ];
    Ok(names
        .into_iter()
        .zip(times)
        .map(|(where_, t)| {
            let m = median(t.clone());
            Dma {
                where_,
                frames: DMA_FRAMES,
                median_ms: m,
                frames_per_s: DMA_FRAMES as f64 / (m / 1e3).max(1e-9),
                runs_ms: t,
            }
        })
        .collect())
}

fn mmio(mut vm: Vm) -> Result<(f64, f64)> {
    vm.boot(&small())?;
    let reg = u64::from(vgpu_sim::regs::REG_CMD_COUNT);
    let mut t = Vec::with_capacity(MMIO_READS);
    let mut b = [0u8; 4];
    for _ in 0..MMIO_READS {
        let s = Instant::now();
        vm.device()
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, reg, &mut b)
            .map_err(check)?;
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let med = median(t.clone());
    Ok((med, pct(&mut t, 0.99)))
}

/// Fill graphics memory with pseudo-random bytes through BAR2 (all of it in use).
fn fill_gmem(vm: &mut Vm) -> Result<()> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let size = vm.gmem_size();
    let mut o = 0;
    while o + (1 << 20) <= size {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        vm.device()
            .region_write(VFIO_PCI_BAR2_REGION_INDEX, o, &chunk)
            .map_err(check)?;
        o += 1 << 20;
    }
    Ok(())
}

/// Read the whole stop-copy stream; (bytes, seconds).
fn stop_copy_read(mut vm: Vm) -> Result<(u64, f64)> {
    vm.boot(&small())?;
    vm.run(StopAt::Done)?;
    fill_gmem(&mut vm)?;
    let mig = vm
        .device()
        .migration()
        .ok_or_else(|| check("no v2 migration"))?;
    let t = mig.set_mig_state(MigState::StopCopy).map_err(check)?;
    let stream = t
        .stream
        .ok_or_else(|| check("STOP_COPY opened no stream"))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut bytes = 0u64;
    let s = Instant::now();
    loop {
        let n = mig.read_data(stream, &mut buf).map_err(check)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Ok((bytes, s.elapsed().as_secs_f64()))
}

/// Fill guest RAM above the workload's layout with pseudo-random bytes.
fn fill_ram(vm: &Vm) -> Result<()> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    let ram = vmm::memory::size(vm.memory());
    let mut a = vgpu_sim::workload::layout::MIN_GUEST_RAM.next_multiple_of(1 << 20);
    while a + (1 << 20) <= ram {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        vmm::memory::write(vm.memory(), a, &chunk).map_err(check)?;
        a += 1 << 20;
    }
    Ok(())
}

/// One reference migration with `src`/`dst` factories.
fn live_one(
    src: Arc<dyn VmFactory>,
    dst: Arc<dyn VmFactory>,
    log: &Logger,
) -> Result<SourceReport> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(check)?;
    let url = format!("tcp://{}", listener.local_addr().map_err(check)?);
    let topts = TargetOptions {
        bar_region_offset: 0,
        peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
        stop_self_at: None,
        mdev_type: "vgpu-512".into(),
        irq_sink_base: 900,
        factory: dst,
        fail_at: None,
        log: log.clone(),
    };
    let target = std::thread::spawn(move || migration::incoming(&listener, &topts).map(|_| ()));
    let mut v = vm("vgpu-512", 2 << 30, src, log)?;
    let params = Params {
        frame_limit: 100_000,
        ..Params::for_profile(vgpu_sim::workload::Profile::Medium)
    };
    v.boot(&params)?;
    fill_ram(&v)?;
    fill_gmem(&mut v)?;
    v.run(StopAt::Frame(8))?;
    let opts = SourceOptions {
        protocol: vmm::migration::Protocol::V2,
        bandwidth: Some(BANDWIDTH),
        ..SourceOptions::default()
    };
    let res = migration::migrate(&mut v, &url, &opts, &mut |_| {});
    let t = target
        .join()
        .map_err(|_| check("the target thread panicked"))?;
    let (rep, _) = res.map_err(|e| check(format!("benchmark migration failed: {e}")))?;
    t.map_err(|e| check(format!("benchmark target failed: {e}")))?;
    Ok(rep)
}

fn live(where_: &'static str, reps: Vec<SourceReport>) -> Live {
    let mid = {
        let mut r = reps.clone();
        r.sort_by(|a, b| a.downtime_ms.total_cmp(&b.downtime_ms));
        r[r.len() / 2].clone()
    };
    Live {
        where_,
        downtime_ms: mid.downtime_ms,
        total_ms: median(reps.iter().map(|r| r.total_ms).collect()),
        breakdown: mid.breakdown.clone(),
        runs_downtime_ms: reps.iter().map(|r| r.downtime_ms).collect(),
    }
}

/// `bench --what vfio-user`.
pub fn run(runs: usize, json: bool, log: &Logger) -> Result<()> {
    let runs = runs.max(1);
    let dir = std::env::temp_dir().join(format!("vgpu-migrate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(check)?;
    let sock = |n: &str| dir.join(format!("{n}.sock"));
    let inproc = vgpu_platform::factory(DirtyTracking::ShadowPt);

    // 1. MMIO round trip.
    let (im, ip) = mmio(vm("vgpu-64", 64 << 20, inproc.clone(), log)?)?;
    let dev = DeviceProcess::start(&sock("mmio"), "vgpu-64", &[])?;
    let (rm, rp) = mmio(vm("vgpu-64", 64 << 20, remote(&dev, 1 << 20), log)?)?;
    drop(dev);
    let mmio = vec![
        Mmio {
            where_: "in process",
            median_us: im,
            p99_us: ip,
        },
        Mmio {
            where_: "vfio-user",
            median_us: rm,
            p99_us: rp,
        },
    ];

    // 2. MIG_DATA_READ against in-process save.
    let mut reads = Vec::new();
    let mut rate = |where_: String, xfer: u32, f: &dyn Fn() -> Result<Vm>| -> Result<()> {
        let mut rates = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let (b, s) = stop_copy_read(f()?)?;
            bytes = b;
            rates.push(b as f64 / s / 1e6);
        }
        reads.push(MigRead {
            where_,
            max_data_xfer_size: xfer,
            bytes,
            mb_per_s: median(rates),
        });
        Ok(())
    };
    rate("in process".into(), 4 << 20, &|| {
        vm("vgpu-512", 64 << 20, inproc.clone(), log)
    })?;
    for xfer in [64 << 10, 1 << 20, 4 << 20] {
        let x = xfer.to_string();
        let dev = DeviceProcess::start(&sock("read"), "vgpu-512", &["--max-data-xfer-size", &x])?;
        rate("vfio-user".into(), xfer, &|| {
            vm("vgpu-512", 64 << 20, remote(&dev, xfer), log)
        })?;
    }

    // 3. The reference live migration, in process and with device processes.
    let mut a = Vec::new();
    for _ in 0..runs {
        a.push(live_one(inproc.clone(), inproc.clone(), log)?);
    }
    let mut b = Vec::new();
    for _ in 0..runs {
        let s = DeviceProcess::start(
            &sock("live-src"),
            "vgpu-512",
            &["--max-data-xfer-size", "4194304"],
        )?;
        let d = DeviceProcess::start(
            &sock("live-dst"),
            "vgpu-512",
            &["--max-data-xfer-size", "4194304"],
        )?;
        b.push(live_one(remote(&s, 4 << 20), remote(&d, 4 << 20), log)?);
    }
    let live = vec![
        live("in process", a),
        live("device processes (vfio-user)", b),
    ];

    // 4. Device DMA through descriptor maps and by message.
    let dma = dma(runs, &sock, log)?;
    let _ = std::fs::remove_dir_all(&dir);
    let report = Report {
        downtime_ratio: live[1].downtime_ms / live[0].downtime_ms.max(1e-9),
        dma_by_message_ratio: dma[2].median_ms / dma[1].median_ms.max(1e-9),
        mmio,
        mig_data_read: reads,
        live,
        dma,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    print(&report, runs, &dir);
    Ok(())
}

fn print(r: &Report, runs: usize, _dir: &Path) {
    println!(
        "vfio-user: the device in its own process against in process (medians of {runs} runs)"
    );
    for m in &r.mmio {
        println!(
            "  MMIO read round trip {:<12} median {:>7.2} us   p99 {:>7.2} us",
            m.where_, m.median_us, m.p99_us
        );
    }
    for m in &r.mig_data_read {
        println!(
            "  stop-copy read {:<12} max_data_xfer_size {:>8}  {:>7.1} MiB  {:>8.0} MB/s",
            m.where_,
            m.max_data_xfer_size,
            m.bytes as f64 / 1048576.0,
            m.mb_per_s
        );
    }
    println!(
        "  live migration, vgpu-512, 2 GiB guest RAM and graphics memory in use, 10 Gbit/s, v2:"
    );
    for l in &r.live {
        let d = &l.breakdown;
        println!(
            "    {:<30} downtime {:>7.1} ms (stop {:.1} + drain {:.1} + wire {:.1} + receive {:.1} + load {:.1} + config {:.1} + resume {:.1}), total {:>7.0} ms",
            l.where_, l.downtime_ms, d.stop_ms, d.drain_ms, d.wire_ms, d.target_receive_ms, d.target_load_ms,
            d.target_config_ms, d.target_resume_ms, l.total_ms
        );
    }
    println!(
        "  downtime out of process / in process: {:.2}x",
        r.downtime_ratio
    );
    println!("  device DMA, vgpu-64, medium workload, same checksum log in each:");
    for d in &r.dma {
        println!(
            "    {:<26} {} frames in {:>8.1} ms  {:>7.1} frames/s",
            d.where_, d.frames, d.median_ms, d.frames_per_s
        );
    }
    println!(
        "  run time with DMA by message / with fd maps: {:.2}x",
        r.dma_by_message_ratio
    );
}
