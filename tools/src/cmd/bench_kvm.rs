//! `bench --what kvm`: the guest on a KVM vCPU beside the simulated vCPU, measured in one
//! run: live-migration downtime (with its breakdown) and total, and the cost of harvesting
//! KVM's dirty log per GiB of guest RAM.
//!
//! The scenario is smaller than the reference one (`bench --what migration`): on hosts
//! where KVM itself runs nested and emulates the guest (this project's CI machines), the
//! image's boot (the GTT programmed through BAR0, one MMIO exit per entry) and each
//! 1280x720 frame take seconds. Both vCPUs run the same scenario, so the ratio is fair.

use std::net::TcpListener;
use std::time::Instant;

use serde::Serialize;
use slog::Logger;
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::Params;
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, Protocol, SourceOptions, SourceReport, TargetOptions};
use vmm::{StopAt, Vm};

use super::{CliError, Result};
use crate::cli::Vcpu;

/// Guest RAM of the KVM scenario.
const RAM: u64 = 1 << 30;
/// 10 Gbit/s.
const BANDWIDTH: u64 = 1_250_000_000;

#[derive(Debug, Serialize)]
struct Row {
    vcpu: &'static str,
    downtime_ms: f64,
    total_ms: f64,
    resume_ms: f64,
    stop_ms: f64,
    runs_downtime_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: String,
    rows: Vec<Row>,
    harvest_clean_ms_per_gib: f64,
    harvest_dirty_ms_per_gib: f64,
    dirty_pages_per_harvest: u64,
}

fn check(e: impl std::fmt::Display) -> CliError {
    CliError::Check { msg: e.to_string() }
}

fn params() -> Params {
    Params {
        width: 320,
        height: 200,
        triangles: 600,
        frame_limit: 100_000,
        seed: 7,
        profile: vgpu_sim::workload::Profile::Light,
    }
}

fn source(vcpu: Vcpu, log: &Logger) -> Result<Vm> {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", log.clone());
    cfg.ram_size = RAM;
    let mut vm = Vm::new(&cfg)?;
    vm.boot(&params())?;
    match vcpu {
        Vcpu::Sim => {
            vm.run(StopAt::Frame(3))?;
        }
        Vcpu::Kvm => {
            vm.run_kvm(StopAt::Frame(3))?;
        }
    }
    Ok(vm)
}

/// One live migration at 10 Gbit/s, target on a thread.
fn migrate_once(vcpu: Vcpu, log: &Logger) -> Result<SourceReport> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(check)?;
    let url = format!("tcp://{}", l.local_addr().map_err(check)?);
    let topts = TargetOptions {
        bar_region_offset: 0,
        peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
        stop_self_at: None,
        mdev_type: "vgpu-64".into(),
        irq_sink_base: 900,
        factory: vgpu_platform::factory(DirtyTracking::ShadowPt),
        fail_at: None,
        log: log.clone(),
    };
    let target = std::thread::spawn(move || migration::incoming(&l, &topts).map(|_| ()));
    let mut vm = source(vcpu, log)?;
    let opts = SourceOptions {
        protocol: Protocol::V2,
        bandwidth: Some(BANDWIDTH),
        ..SourceOptions::default()
    };
    let res = migration::migrate(&mut vm, &url, &opts, &mut |_| {});
    let t = target
        .join()
        .map_err(|_| check("the target thread panicked"))?;
    let (rep, _) = res.map_err(|e| check(format!("benchmark migration failed: {e}")))?;
    t.map_err(|e| check(format!("benchmark target failed: {e}")))?;
    Ok(rep)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// KVM dirty-log harvest cost, ms per GiB: with nothing dirty, and after the guest ran.
fn harvest(runs: usize, log: &Logger) -> Result<(f64, f64, u64)> {
    let mut vm = source(Vcpu::Kvm, log)?;
    let gib = RAM as f64 / f64::from(1u32 << 30);
    let mut clean = Vec::new();
    let mut dirty = Vec::new();
    let mut pages = 0;
    let _ = vm.harvest_cpu_dirty()?;
    for _ in 0..runs {
        let t = Instant::now();
        let _ = vm.harvest_cpu_dirty()?;
        clean.push(t.elapsed().as_secs_f64() * 1e3 / gib);
        let next = vm.completed_frames() + 1;
        vm.run_kvm(StopAt::Frame(next))?;
        let mut bm = mdev_core::DirtyBitmap::new(0, RAM, 4096).map_err(check)?;
        let t = Instant::now();
        pages = vm.harvest_kvm_dirty(&mut bm)?;
        dirty.push(t.elapsed().as_secs_f64() * 1e3 / gib);
    }
    Ok((median(clean), median(dirty), pages))
}

/// `bench --what kvm`.
pub fn run(runs: usize, json: bool, log: &Logger) -> Result<()> {
    if let Err(e) = vmm::kvm::available() {
        println!("bench --what kvm: skipped, KVM is not usable here: {e}");
        return Ok(());
    }
    let runs = runs.max(1);
    let mut rows = Vec::new();
    for vcpu in [Vcpu::Sim, Vcpu::Kvm] {
        let reps = (0..runs)
            .map(|_| migrate_once(vcpu, log))
            .collect::<Result<Vec<_>>>()?;
        rows.push(Row {
            vcpu: vcpu.name(),
            downtime_ms: median(reps.iter().map(|r| r.downtime_ms).collect()),
            total_ms: median(reps.iter().map(|r| r.total_ms).collect()),
            resume_ms: median(reps.iter().map(|r| r.breakdown.target_resume_ms).collect()),
            stop_ms: median(reps.iter().map(|r| r.breakdown.stop_ms).collect()),
            runs_downtime_ms: reps.iter().map(|r| r.downtime_ms).collect(),
        });
    }
    let (clean, dirty, pages) = harvest(runs, log)?;
    let report = Report {
        scenario: "vgpu-64, 1 GiB guest RAM, 320x200, 600 triangles, v2, 10 Gbit/s".into(),
        rows,
        harvest_clean_ms_per_gib: clean,
        harvest_dirty_ms_per_gib: dirty,
        dirty_pages_per_harvest: pages,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "live migration, {}, medians of {runs} runs",
        report.scenario
    );
    for r in &report.rows {
        println!(
            "  {:<3} vCPU: downtime {:>7.2} ms (stop {:.2}, target resume {:.2}; aim <= 30 ms), total {:>8.1} ms",
            r.vcpu, r.downtime_ms, r.stop_ms, r.resume_ms, r.total_ms
        );
    }
    if let [sim, kvm] = &report.rows[..] {
        println!(
            "  KVM / sim downtime  {:.2}",
            kvm.downtime_ms / sim.downtime_ms
        );
    }
    println!(
        "KVM dirty-log harvest: {:.3} ms/GiB clean, {:.3} ms/GiB after a frame ({} pages dirty) (aim <= 0.5 ms/GiB)",
        report.harvest_clean_ms_per_gib, report.harvest_dirty_ms_per_gib, report.dirty_pages_per_harvest
    );
    Ok(())
}
