//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use slog::Level;

/// Live migration of a simulated mdev vGPU, and the tools around it.
#[derive(Debug, Parser)]
#[command(name = "vgpu-migrate", version, about)]
pub struct Cli {
    /// Log level on stderr: critical, error, warning, info, debug, trace.
    #[arg(long, global = true, default_value = "warning", value_parser = parse_level)]
    pub log_level: Level,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse::<Level>()
        .map_err(|_| format!("'{s}' is not a log level (critical, error, warning, info, debug, trace)"))
}

/// Workload options shared by the commands that boot a guest.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// mdev type of the vGPU (see `types`).
    #[arg(long = "type", default_value = "vgpu-64")]
    pub mdev_type: String,
    /// Scene seed: the same seed gives the same frames.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Render width in pixels.
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    /// Render height in pixels.
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    /// Triangles per frame.
    #[arg(long, default_value_t = 3000)]
    pub triangles: u32,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub ram_mib: u64,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List mdev types and available instances.
    Types {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the workload and print the final frame checksum.
    Run {
        /// Workload.
        #[command(flatten)]
        w: WorkloadArgs,
        /// Frames to render.
        #[arg(long)]
        frames: u64,
        /// Write the last displayed frame as PNG.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Print JSON: {"frames", "final_checksum", "checksums", ...}.
        #[arg(long)]
        json: bool,
    },
    /// Run to frame K (or to a command inside it) and save a snapshot.
    Dump {
        /// Workload.
        #[command(flatten)]
        w: WorkloadArgs,
        /// Frames to render before saving.
        #[arg(long)]
        frames: u64,
        /// Stop after the device has executed this many commands (may be mid-batch).
        #[arg(long)]
        at_command: Option<u64>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Write only the bytes the device-state region produced.
        #[arg(long)]
        device_only: bool,
    },
    /// Load a snapshot into a fresh VM and continue to frame N.
    Restore {
        /// Snapshot file.
        file: PathBuf,
        /// Frames to reach.
        #[arg(long)]
        frames: u64,
        /// Write the last displayed frame as PNG.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a snapshot or device context holds.
    Inspect {
        /// Snapshot (stream) or device-only context file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Show the PCI config space (lspci -xxx style and decoded).
        #[arg(long)]
        config: bool,
    },
    /// Run, dump mid-frame, restore in a fresh VM, and check the checksum log.
    Demo {
        /// Workload.
        #[command(flatten)]
        w: WorkloadArgs,
        /// Frames in all.
        #[arg(long, default_value_t = 24)]
        frames: u64,
        /// Frame at which to save.
        #[arg(long, default_value_t = 10)]
        dump_at: u64,
        /// Directory for the snapshot and PNGs.
        #[arg(long, default_value = "target/demo")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure save and load throughput of the device context.
    Bench {
        /// mdev type.
        #[arg(long = "type", default_value = "vgpu-512")]
        mdev_type: String,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
