//! `run`: render N frames.

use std::path::Path;

use slog::Logger;
use vmm::StopAt;

use super::{boot, Result};
use crate::cli::{Vcpu, WorkloadArgs};
use crate::output::{write_png, RunReport};

pub fn run(
    w: &WorkloadArgs,
    frames: u64,
    vcpu: Vcpu,
    png: Option<&Path>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let mut vm = boot(w, frames, log)?;
    let kvm = match vcpu {
        Vcpu::Sim => {
            vm.run(StopAt::Done)?;
            None
        }
        Vcpu::Kvm => Some(vm.run_kvm(StopAt::Done)?),
    };
    if let Some(p) = png {
        write_png(&mut vm, p)?;
    }
    let mut report = RunReport::collect(&mut vm, frames);
    report.vcpu = vcpu.name();
    report.kvm = kvm;
    report.print(json);
    Ok(())
}
