//! `run`: render N frames.

use std::path::Path;
use std::time::Instant;

use slog::Logger;
use vmm::StopAt;

use super::{boot, Result};
use crate::cli::{Vcpu, WorkloadArgs};
use crate::output::{write_png, RunReport, WorkloadFigures};

pub fn run(
    w: &WorkloadArgs,
    frames: u64,
    vcpu: Vcpu,
    png: Option<&Path>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let mut vm = boot(w, frames, log)?;
    let started = Instant::now();
    let kvm = match vcpu {
        Vcpu::Sim => {
            vm.run(StopAt::Done)?;
            None
        }
        Vcpu::Kvm => Some(vm.run_kvm(StopAt::Done)?),
    };
    let secs = started.elapsed().as_secs_f64();
    if let Some(p) = png {
        write_png(&mut vm, p)?;
    }
    let mut report = RunReport::collect(&mut vm, frames);
    report.vcpu = vcpu.name();
    report.kvm = kvm;
    report.workload = Some(figures(w, frames, secs));
    report.print(json);
    Ok(())
}

/// The workload's figures for a run of `frames` frames that took `secs`.
pub fn figures(w: &WorkloadArgs, frames: u64, secs: f64) -> WorkloadFigures {
    let p = w.params(frames);
    let dirty = p.gmem_dirty_per_frame();
    let fps = if secs > 0.0 {
        frames as f64 / secs
    } else {
        0.0
    };
    WorkloadFigures {
        profile: p.profile.name(),
        width: p.width,
        height: p.height,
        triangles_per_frame: p.triangles_per_frame(),
        gmem_dirty_bytes_per_frame: dirty,
        fps,
        gmem_dirty_mb_per_s: dirty as f64 * fps / 1e6,
    }
}
