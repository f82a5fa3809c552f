//! `run`: render N frames.

use std::path::Path;

use slog::Logger;
use vmm::StopAt;

use super::{boot, Result};
use crate::cli::WorkloadArgs;
use crate::output::{write_png, RunReport};

pub fn run(
    w: &WorkloadArgs,
    frames: u64,
    png: Option<&Path>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let mut vm = boot(w, frames, log)?;
    vm.run(StopAt::Done)?;
    if let Some(p) = png {
        write_png(&mut vm, p)?;
    }
    RunReport::collect(&mut vm, frames).print(json);
    Ok(())
}
