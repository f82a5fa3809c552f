//! `vgpu-migrate`: run the vGPU workload, dump, inspect and restore its context, and
//! migrate it live between two processes.

mod cli;
mod cmd;
mod logging;
mod output;
mod timeline;
mod verify;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Like every Unix filter: a closed pipe downstream (`inspect F | head`) ends the program
    // quietly instead of making `println!` panic.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists; no
    // handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
