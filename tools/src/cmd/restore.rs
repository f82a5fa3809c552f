//! `restore`: a fresh VM loads a snapshot and continues.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use vgpu_platform::VgpuVm;

use slog::Logger;
use snafu::ResultExt;
use vmm::StopAt;

use super::{CliError, FileSnafu, Result};
use crate::output::{write_png, RunReport};

pub fn run(file: &Path, frames: u64, png: Option<&Path>, json: bool, log: &Logger) -> Result<()> {
    let f = File::open(file).context(FileSnafu {
        what: "cannot open",
        path: file,
    })?;
    let mut vm =
        vgpu_platform::restore(BufReader::new(f), log, Default::default(), 200).map_err(|e| {
            CliError::BadFile {
                path: file.to_path_buf(),
                msg: e.to_string(),
            }
        })?;
    let done = vm.completed_frames();
    if frames < done {
        return Err(CliError::Usage {
            msg: format!(
                "--frames {frames} is below the {done} frames the snapshot already rendered"
            ),
        });
    }
    vm.set_frame_limit(frames)?;
    // The snapshot says which vCPU the guest was on: a KVM vCPU's state goes on on KVM.
    let kvm = if vm.on_kvm() {
        Some(vm.run_kvm(StopAt::Done)?)
    } else {
        vm.run(StopAt::Done)?;
        None
    };
    if let Some(p) = png {
        write_png(&mut vm, p)?;
    }
    let mut report = RunReport::collect(&mut vm, frames);
    if kvm.is_some() {
        report.vcpu = "kvm";
    }
    report.kvm = kvm;
    report.print(json);
    Ok(())
}
