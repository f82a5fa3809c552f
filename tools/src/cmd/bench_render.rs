//! `bench --what render`: the 3D workload per profile on one core (guest and device on one
//! thread): frames, triangles and target pixels per second, and graphics memory dirtied.

use std::time::Instant;

use slog::Logger;
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::{Params, Profile, PROFILES};
use vmm::{StopAt, Vm};

use super::Result;

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

/// Run the render bench over every profile.
pub fn run(runs: usize, json: bool, log: &Logger) -> Result<()> {
    let mut all = Vec::new();
    for p in PROFILES {
        all.push(figures(p, runs, log)?);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "render": all })).unwrap_or_default()
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
    Ok(())
}
