//! `dump`: run to a point and save.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use slog::Logger;
use snafu::ResultExt;
use vmm::StopAt;

use super::{boot, FileSnafu, Result};
use crate::cli::{Vcpu, WorkloadArgs};

#[allow(clippy::too_many_arguments)]
pub fn run(
    w: &WorkloadArgs,
    frames: u64,
    at_command: Option<u64>,
    vcpu: Vcpu,
    out: &Path,
    device_only: bool,
    log: &Logger,
) -> Result<()> {
    let mut vm = boot(w, frames, log)?;
    let stop = at_command.map_or(StopAt::Done, StopAt::Command);
    match vcpu {
        Vcpu::Sim => {
            vm.run(stop)?;
        }
        // On KVM the stop is the first moment at or after it: the vCPU is kicked out of
        // the guest wherever it is, and its whole state goes into the snapshot.
        Vcpu::Kvm => {
            vm.run_kvm(stop)?;
        }
    }
    let file = File::create(out).context(FileSnafu {
        what: "cannot create",
        path: out,
    })?;
    let mut file = BufWriter::new(file);
    if device_only {
        vmm::snapshot::save_device_only(&mut vm, &mut file)?;
    } else {
        vmm::snapshot::save(&mut vm, &mut file)?;
    }
    std::io::Write::flush(&mut file).context(FileSnafu {
        what: "cannot write",
        path: out,
    })?;
    Ok(())
}
