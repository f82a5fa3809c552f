//! `vgpu-migrate`: run the vGPU workload, dump, inspect and restore its context, and
//! migrate it live between two processes.

mod cli;
mod cmd;
mod logging;
mod output;
mod verify;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let log = logging::logger(cli.log_level);
    match cmd::dispatch(cli.command, cli.log_level, &log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Flush async log records before the one-line error.
            drop(log);
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
