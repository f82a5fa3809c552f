//! `dump`: run to a point and save.

use std::path::Path;

use slog::Logger;
use snafu::ResultExt;
use vmm::StopAt;

use super::{boot, Result, SnapshotFileSnafu};
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
    // Written under a temporary name and renamed when complete: a full disk or an
    // interrupted dump never leaves a file that restores.
    vmm::snapshot::save_file(&mut vm, out, device_only).context(SnapshotFileSnafu)?;
    Ok(())
}
