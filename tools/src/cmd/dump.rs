//! `dump`: run to a point and save.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use slog::Logger;
use snafu::ResultExt;
use vmm::StopAt;

use super::{boot, FileSnafu, Result};
use crate::cli::WorkloadArgs;

pub fn run(
    w: &WorkloadArgs,
    frames: u64,
    at_command: Option<u64>,
    out: &Path,
    device_only: bool,
    log: &Logger,
) -> Result<()> {
    let mut vm = boot(w, frames, log)?;
    vm.run(at_command.map_or(StopAt::Done, StopAt::Command))?;
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
