//! `bench --what render`: the 3D workload per profile on one core (guest and device on one
//! thread): frames, triangles and target pixels per second, and graphics memory dirtied.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use slog::Logger;
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::{Params, Profile, PROFILES};
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

use super::{CliError, Result};

/// Frames before timing starts (the first frame also fills every texture slot).
const WARMUP: u64 = 2;

/// One profile's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct RenderFigures {
    profile: &'static str,
    mdev_type: &'static str,
    width: u32,
    height: u32,
    frames: u64,
    fps: f64,
    triangles_per_frame: u64,
    triangles_per_s: f64,
    /// Colour-buffer pixels of every pass (main target and render-to-texture targets).
    target_pixels_per_s: f64,
    gmem_dirty_bytes_per_frame: u64,
    gmem_dirty_mb_per_s: f64,
    /// What a 10 Gbit/s link carries, in MB/s, for comparison.
    link_10gbit_mb_per_s: f64,
}

/// The smallest type whose graphics memory holds `p` at its own size.
fn mdev_type(p: Profile) -> &'static str {
    match p {
        Profile::Heavy => "vgpu-512",
        _ => "vgpu-64",
    }
}

/// Frames timed per run.
fn frames(p: Profile) -> u64 {
    match p {
        Profile::Light => 60,
        Profile::Medium => 30,
        Profile::Heavy => 12,
    }
}

/// Seconds to render `frames` frames of `params` after the warm-up.
fn timed(params: &Params, ty: &str, log: &Logger) -> Result<f64> {
    let mut cfg = vgpu_platform::vm_config(ty, log.clone());
    cfg.ram_size = 64 << 20;
    let mut vm = Vm::new(&cfg)?;
    vm.boot(params)?;
    vm.run(StopAt::Frame(WARMUP))?;
    let t = Instant::now();
    vm.run(StopAt::Done)?;
    Ok(t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn figures(p: Profile, runs: usize, log: &Logger) -> Result<RenderFigures> {
    let n = frames(p);
    let params = Params {
        frame_limit: WARMUP + n,
        ..Params::for_profile(p)
    };
    let ty = mdev_type(p);
    let mut secs = Vec::new();
    for _ in 0..runs.max(1) {
        secs.push(timed(&params, ty, log)?);
    }
    let fps = n as f64 / median(secs);
    let spec = p.spec();
    let tris = params.triangles_per_frame();
    let dirty = params.gmem_dirty_per_frame();
    let pixels = u64::from(params.width) * u64::from(params.height)
        + u64::from(spec.passes) * u64::from(spec.rtt_size) * u64::from(spec.rtt_size);
    Ok(RenderFigures {
        profile: p.name(),
        mdev_type: ty,
        width: params.width,
        height: params.height,
        frames: n,
        fps,
        triangles_per_frame: tris,
        triangles_per_s: tris as f64 * fps,
        target_pixels_per_s: pixels as f64 * fps,
        gmem_dirty_bytes_per_frame: dirty,
        gmem_dirty_mb_per_s: dirty as f64 * fps / 1e6,
        link_10gbit_mb_per_s: 1250.0,
    })
}

/// How `heavy` fared through one live migration.
#[derive(Debug, Clone, serde::Serialize)]
struct HeavyMigration {
    auto_converge: bool,
    converged: bool,
    /// Why it did not, if it did not.
    error: Option<String>,
    rounds: usize,
    downtime_ms: f64,
    total_ms: f64,
    throttle_pct: u32,
    device_precopy_mib: f64,
}

/// The downtime limit of the `heavy` migrations.
const HEAVY_DOWNTIME_LIMIT: Duration = Duration::from_millis(30);

/// Migrate `heavy` (vgpu-512, 320x200 so that the uploads dominate) over a 10 Gbit/s
/// link with a 30 ms downtime limit, source and target in this process.
fn heavy_migration(auto_converge: bool, log: &Logger) -> Result<HeavyMigration> {
    let err = |e: std::io::Error| CliError::Check { msg: e.to_string() };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let url = format!("tcp://{}", listener.local_addr().map_err(err)?);
    let topts = TargetOptions {
        bar_region_offset: 0,
        peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
        stop_self_at: None,
        mdev_type: "vgpu-512".into(),
        irq_sink_base: 900,
        factory: vgpu_platform::factory(DirtyTracking::ShadowPt),
        fail_at: None,
        log: log.clone(),
    };
    let target = std::thread::Builder::new()
        .name("target".into())
        .spawn(move || migration::incoming(&listener, &topts).map(|_| ()))
        .map_err(err)?;
    let mut cfg = vgpu_platform::vm_config("vgpu-512", log.clone());
    cfg.ram_size = 256 << 20;
    let mut vm = Vm::new(&cfg)?;
    vm.boot(&Params {
        width: 320,
        height: 200,
        frame_limit: 100_000,
        ..Params::for_profile(Profile::Heavy)
    })?;
    vm.run(StopAt::Frame(2))?;
    let opts = SourceOptions {
        protocol: Protocol::V2,
        bandwidth: Some(1_250_000_000),
        downtime_limit: HEAVY_DOWNTIME_LIMIT,
        max_rounds: 8,
        auto_converge,
        ..SourceOptions::default()
    };
    let res = migration::migrate(&mut vm, &url, &opts, &mut |_| {});
    // A refused migration makes the target discard: its error is expected then.
    let _ = target.join();
    Ok(match res {
        Ok((r, _)) => HeavyMigration {
            auto_converge,
            converged: true,
            error: None,
            rounds: r.rounds.len(),
            downtime_ms: r.downtime_ms,
            total_ms: r.total_ms,
            throttle_pct: r.throttle_pct,
            device_precopy_mib: r.bytes.device_precopy as f64 / 1048576.0,
        },
        Err(e) => HeavyMigration {
            auto_converge,
            converged: false,
            error: Some(e.to_string()),
            rounds: 0,
            downtime_ms: 0.0,
            total_ms: 0.0,
            throttle_pct: 0,
            device_precopy_mib: 0.0,
        },
    })
}

/// Run the render bench over every profile, then `heavy` through a migration.
pub fn run(runs: usize, json: bool, log: &Logger) -> Result<()> {
    let mut all = Vec::new();
    for p in PROFILES {
        all.push(figures(p, runs, log)?);
    }
    let heavy = [heavy_migration(false, log)?, heavy_migration(true, log)?];
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "render": all, "heavy_migration_10gbit_30ms": heavy })
            )
            .unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "render, one core (guest and device on one thread), median of {} runs:",
        runs.max(1)
    );
    println!(
        "  {:<7} {:<9} {:>10} {:>7} {:>11} {:>10} {:>11} {:>14} {:>12}",
        "profile",
        "type",
        "size",
        "fps",
        "tris/frame",
        "Mtris/s",
        "Mpixels/s",
        "dirty MB/frame",
        "dirty MB/s"
    );
    for f in &all {
        println!(
            "  {:<7} {:<9} {:>10} {:>7.1} {:>11} {:>10.2} {:>11.1} {:>14.1} {:>12.0}{}",
            f.profile,
            f.mdev_type,
            format!("{}x{}", f.width, f.height),
            f.fps,
            f.triangles_per_frame,
            f.triangles_per_s / 1e6,
            f.target_pixels_per_s / 1e6,
            f.gmem_dirty_bytes_per_frame as f64 / 1e6,
            f.gmem_dirty_mb_per_s,
            if f.gmem_dirty_mb_per_s > f.link_10gbit_mb_per_s {
                "  > 10 Gbit/s"
            } else {
                ""
            }
        );
    }
    println!("heavy (vgpu-512, 320x200) live-migrated over 10 Gbit/s, downtime limit 30 ms, v2:");
    for h in &heavy {
        let how = if h.auto_converge {
            "with auto-converge   "
        } else {
            "without auto-converge"
        };
        match &h.error {
            None => println!(
                "  {how}: converged in {} rounds, downtime {:.1} ms, total {:.0} ms, throttle {}%, {:.0} MiB device pre-copy",
                h.rounds, h.downtime_ms, h.total_ms, h.throttle_pct, h.device_precopy_mib
            ),
            Some(e) => println!("  {how}: {e}"),
        }
    }
    Ok(())
}
