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
    s.parse::<Level>().map_err(|_| {
        format!("'{s}' is not a log level (critical, error, warning, info, debug, trace)")
    })
}

/// Which vCPU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Vcpu {
    /// The simulated vCPU: the driver as host code.
    Sim,
    /// A KVM vCPU running the driver's x86-64 image.
    Kvm,
}

impl Vcpu {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::Kvm => "kvm",
        }
    }
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
    /// Workload profile: light, medium or heavy (resolution, triangles, texture uploads
    /// and render-to-texture passes per frame; see README).
    #[arg(long, default_value = "medium", value_parser = parse_profile)]
    pub profile: vgpu_sim::workload::Profile,
    /// Render width in pixels (default: the profile's).
    #[arg(long)]
    pub width: Option<u32>,
    /// Render height in pixels (default: the profile's).
    #[arg(long)]
    pub height: Option<u32>,
    /// Triangles per pass (default: the profile's).
    #[arg(long)]
    pub triangles: Option<u32>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub ram_mib: u64,
    /// The vGPU's v2 migration features: a comma-separated set of stop-copy (mandatory),
    /// p2p, pre-copy. Without pre-copy the device's data moves in stop-copy alone.
    #[arg(long, default_value = "stop-copy,p2p,pre-copy")]
    pub migration_features: String,
    /// Where the device runs: `in-process`, or `vfio-user:PATH` (a device process serving
    /// it on the socket PATH, see `serve`; guest RAM is then shared memory).
    #[arg(long, default_value = "in-process")]
    pub device: String,
    /// With `--device vfio-user:PATH`: map guest RAM to the device process without its
    /// file descriptors; the device reaches it by DMA_READ/DMA_WRITE messages (guest RAM
    /// is then private memory; every device DMA is a round trip).
    #[arg(long, hide = true)]
    pub dma_by_message: bool,
    /// Let the vGPU's v1 migration region accept the out-of-order steps it refuses by
    /// default to catch VMM bugs (`data_size` or data read before `data_offset`, a
    /// `data_size` above what was written); see docs/UAPI.md.
    #[arg(long)]
    pub lenient_v1: bool,
}

fn parse_profile(s: &str) -> Result<vgpu_sim::workload::Profile, String> {
    vgpu_sim::workload::Profile::by_name(s)
        .ok_or_else(|| format!("'{s}' is not a profile (light, medium, heavy)"))
}

impl WorkloadArgs {
    /// The workload parameters: the profile's, with the size and triangles given.
    pub fn params(&self, frames: u64) -> vgpu_sim::workload::Params {
        let p = vgpu_sim::workload::Params::for_profile(self.profile);
        vgpu_sim::workload::Params {
            seed: self.seed,
            width: self.width.unwrap_or(p.width),
            height: self.height.unwrap_or(p.height),
            triangles: self.triangles.unwrap_or(p.triangles),
            frame_limit: frames,
            ..p
        }
    }
}

/// What a migrated guest runs (`--workload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// The 3D workload on the vGPU, checked frame by frame.
    Vgpu,
    /// No workload: only the device's state, RAM and config move.
    Idle,
}

/// Options of a live migration's source.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The source guest's vCPU (see `run --vcpu`). A KVM guest keeps running on its own
    /// vCPU thread while pre-copy works; the target goes on on KVM.
    #[arg(long, value_enum, default_value_t = Vcpu::Sim)]
    pub vcpu: Vcpu,
    /// How the VMM drives the device: region (v1 device-state region) or v2.
    #[arg(long, default_value = "region")]
    pub protocol: String,
    /// DMA dirty tracking: shadow-pt (precise), pinned (conservative) or off (negative control).
    #[arg(long, default_value = "shadow-pt")]
    pub dirty_tracking: String,
    /// Stream rate cap, e.g. 10Gbit, 1.25GB/s, 800MiB/s (default: uncapped).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// Downtime limit in ms.
    #[arg(long, default_value_t = 300.0)]
    pub downtime_limit: f64,
    /// Most pre-copy rounds.
    #[arg(long, default_value_t = 30)]
    pub max_rounds: u32,
    /// Throttle the vGPU engine when the dirty rate outruns the bandwidth.
    #[arg(long)]
    pub auto_converge: bool,
    /// Guest RAM on this many extra TCP connections beside the main stream, each with its
    /// own thread and XXH3-128 digest on both hosts (QEMU's multifd idea); 0: guest RAM
    /// goes on the main stream. At most 8.
    #[arg(long, default_value_t = 0)]
    pub channels: u32,
    /// Where to stop the source once converged: converged (at once), mid-batch,
    /// irq-pending, next-frame (after one more frame: its checksum and seqno then travel
    /// only through the DMA dirty log). Default: converged, or next-frame with
    /// `--dirty-tracking off` so that the negative control is decisive.
    #[arg(long)]
    pub switchover_at: Option<String>,
    /// Inject a failure (testing): setup, round:N, stop-copy.
    #[arg(long, hide = true)]
    pub inject_failure: Option<String>,
    /// Give up on a target that shows no sign of life (no byte, no keep-alive) for this
    /// many seconds, at any phase; the guest then runs on here. At least 1.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub peer_timeout: f64,
    /// Freeze this process with SIGSTOP (testing the peer timeout) at: handshake (after the
    /// target's hello), round:N (before round N's SYNC), switchover (vCPU stopped, the
    /// SWITCHOVER record on the wire), prepared (the target's PREPARED read), handover
    /// (HANDOVER sent).
    #[arg(long, hide = true, value_name = "PHASE")]
    pub stop_self_at: Option<String>,
    /// Kill this process with SIGKILL (testing faults) at one of the phases of
    /// --stop-self-at.
    #[arg(
        long,
        hide = true,
        value_name = "PHASE",
        conflicts_with = "stop_self_at"
    )]
    pub kill_self_at: Option<String>,
    /// Draw the migration as a PNG: bytes by kind per round, bandwidth and dirty rate,
    /// expected downtime against the limit, the throttle, and the downtime breakdown.
    #[arg(long, value_name = "FILE.png")]
    pub timeline: Option<PathBuf>,
    /// Print one JSON object per phase change ({"event":"phase",...}) and per pre-copy
    /// round ({"event":"round",...}) on stderr while the migration runs.
    #[arg(long)]
    pub events: bool,
    /// What the guest runs: `vgpu` (the 3D workload on the vGPU) or `idle` (no workload:
    /// the device, whatever it is, e.g. `serve --type serial-16` over `--device
    /// vfio-user:PATH`, only has its state moved; verified by comparing digests of the
    /// device's full state on both sides). Source and target must agree.
    #[arg(long, value_enum, default_value_t = Workload::Vgpu)]
    pub workload: Workload,
}

/// Options of `soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Round trips per guest (home -> peer -> home).
    #[arg(long, default_value_t = 10)]
    pub round_trips: u64,
    /// Guests migrating at the same time, each with its own vGPU instance from this
    /// process's parent device (a type with too few instances left is refused).
    #[arg(long, default_value_t = 1)]
    pub vms: usize,
    /// Frames a guest renders at the peer before it is sent home (it also renders while
    /// each migration's pre-copy runs).
    #[arg(long, default_value_t = 1)]
    pub hop_frames: u64,
    /// How the VMM drives the device: region or v2.
    #[arg(long, default_value = "v2")]
    pub protocol: String,
    /// DMA dirty tracking: shadow-pt, pinned or off.
    #[arg(long, default_value = "shadow-pt")]
    pub dirty_tracking: String,
    /// Run as the peer of the home process whose listeners are these URLs (comma-separated).
    #[arg(long, hide = true, value_name = "URLS")]
    pub peer_of: Option<String>,
    /// The peer writes its own listeners' URLs here (comma-separated).
    #[arg(long, hide = true, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Options of a live migration's target about its link to the source.
#[derive(Debug, Clone, Args)]
pub struct IncomingArgs {
    /// This target's vGPU's v2 migration features (see `run --migration-features`).
    #[arg(long, default_value = "stop-copy,p2p,pre-copy")]
    pub migration_features: String,
    /// Give up on a source that shows no sign of life (no byte, no keep-alive) for this
    /// many seconds, at any phase; what was received is then discarded. At least 1.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub peer_timeout: f64,
    /// Once listening, write the address (tcp://HOST:PORT, with the port chosen when
    /// --listen asks for port 0) to this file, whole or not at all.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// The guest's RAM in MiB: the VM is then made and all of its RAM faulted in before
    /// this target listens (reported as `prefault_ms`, outside the migration's figures),
    /// and a stream for a guest of another size is refused. Without it the VM is made
    /// when the stream's header arrives.
    #[arg(long)]
    pub ram_mib: Option<u64>,
    /// Freeze this process with SIGSTOP (testing the peer timeout) at: handshake (before
    /// the hello), round:N (at round N's SYNC, before answering), switchover (at the
    /// SWITCHOVER record: the source's vCPU is stopped), prepared (PREPARED sent), handover
    /// (HANDOVER read, before resuming), resumed (resumed, before telling the source).
    #[arg(long, hide = true, value_name = "PHASE")]
    pub stop_self_at: Option<String>,
    /// Kill this process with SIGKILL (testing faults) at one of the phases of
    /// --stop-self-at.
    #[arg(
        long,
        hide = true,
        value_name = "PHASE",
        conflicts_with = "stop_self_at"
    )]
    pub kill_self_at: Option<String>,
    /// Where this target's device runs: `in-process` or `vfio-user:PATH` (see `serve`).
    #[arg(long, default_value = "in-process")]
    pub device: String,
    /// What the guest runs: `vgpu` (the 3D workload on the vGPU) or `idle` (no workload:
    /// the device, whatever it is, e.g. `serve --type serial-16` over `--device
    /// vfio-user:PATH`, only has its state moved; verified by comparing digests of the
    /// device's full state on both sides). Source and target must agree.
    #[arg(long, value_enum, default_value_t = Workload::Vgpu)]
    pub workload: Workload,
    /// With `--device vfio-user:PATH`: DMA by message (see `run --dma-by-message`).
    #[arg(long, hide = true)]
    pub dma_by_message: bool,
    /// The target vGPU's v1 region accepts out-of-order steps (see `run --lenient-v1`).
    #[arg(long)]
    pub lenient_v1: bool,
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
        /// The vCPU: `sim` runs the driver as host code between device steps; `kvm` boots
        /// the driver's x86-64 image on a KVM vCPU, with the device on its own thread.
        #[arg(long, value_enum, default_value_t = Vcpu::Sim)]
        vcpu: Vcpu,
        /// Write the last displayed frame as PNG.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Print JSON: {"frames", "final_checksum", "checksums", "vcpu", ...}.
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
        /// Stop after the device has executed this many commands (may be mid-batch; on
        /// KVM, the first moment at or after it).
        #[arg(long)]
        at_command: Option<u64>,
        /// The vCPU (see `run --vcpu`); a KVM vCPU's whole state goes into the snapshot,
        /// and `restore` goes on on KVM.
        #[arg(long, value_enum, default_value_t = Vcpu::Sim)]
        vcpu: Vcpu,
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
    /// Migrate guests back and forth between this process and a peer process many times
    /// while they render, checking each checksum log after every round trip.
    Soak {
        /// Workload.
        #[command(flatten)]
        w: WorkloadArgs,
        /// Soak options.
        #[command(flatten)]
        a: SoakArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Live-migrate the running workload between two processes over loopback and check
    /// the result against a run that never migrated.
    Demo {
        /// Workload.
        #[command(flatten)]
        w: WorkloadArgs,
        /// Migration options.
        #[command(flatten)]
        m: MigrateArgs,
        /// Frames in all.
        #[arg(long, default_value_t = 40)]
        frames: u64,
        /// Frame at which migration starts.
        #[arg(long, default_value_t = 12)]
        migrate_at: u64,
        /// Directory for the PNGs.
        #[arg(long, default_value = "target/demo")]
        dir: PathBuf,
        /// Run the device of each side in its own device process (`serve`), reached over
        /// vfio-user: one for the source, one for the target.
        #[arg(long)]
        device_process: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Target of a live migration: wait, receive, resume, continue to frame N.
    Incoming {
        /// Address to listen on, tcp://HOST:PORT (port 0: any free port; see --ready-file).
        #[arg(long)]
        listen: String,
        /// Link options.
        #[command(flatten)]
        link: IncomingArgs,
        /// mdev type of this target's vGPU.
        #[arg(long = "type", default_value = "vgpu-64")]
        mdev_type: String,
        /// Frames to reach (default: the guest's own frame limit).
        #[arg(long)]
        frames: Option<u64>,
        /// DMA dirty tracking of this target's device (for a later migration onwards).
        #[arg(long, default_value = "shadow-pt")]
        dirty_tracking: String,
        /// Write the first frame displayed after resume as PNG.
        #[arg(long)]
        png_after: Option<PathBuf>,
        /// Do not run a reference to verify against (faster; `verified` is then null).
        #[arg(long)]
        no_verify: bool,
        /// Inject a failure (testing): before-resume.
        #[arg(long, hide = true)]
        inject_failure: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Source of a live migration: run the workload, migrate at frame K, hand over.
    Migrate {
        /// Target address, tcp://HOST:PORT.
        #[arg(long)]
        to: String,
        /// Workload.
        #[command(flatten)]
        w: WorkloadArgs,
        /// Migration options.
        #[command(flatten)]
        m: MigrateArgs,
        /// Frames in all (not with `--workload idle`).
        #[arg(long)]
        frames: Option<u64>,
        /// Frame at which migration starts (not with `--workload idle`).
        #[arg(long)]
        migrate_at: Option<u64>,
        /// Write the last frame displayed before switchover as PNG.
        #[arg(long)]
        png_before: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run, dump mid-frame, restore in a fresh VM, and check the checksum log.
    SnapshotDemo {
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
    /// Measure: device-context save/load against memcpy and SHA-256; live migration in the
    /// reference scenario; stream against raw loopback TCP; shadow-pt against pinned.
    Bench {
        /// mdev type.
        #[arg(long = "type", default_value = "vgpu-512")]
        mdev_type: String,
        /// Which parts: context, migration, pipeline, kvm, vfio-user, render (the 3D
        /// workload per profile), all (context, render and migration).
        #[arg(long, default_value = "all")]
        what: String,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Draw the last migration the bench ran (`migration`: the reference scenario;
        /// `pipeline`: the uncapped stream) as a PNG (see `migrate --timeline`).
        #[arg(long, value_name = "FILE.png")]
        timeline: Option<PathBuf>,
        /// A peer measured in the same run (`--what pipeline`): `qemu` migrates a QEMU
        /// guest with as much non-zero memory, QEMU to QEMU over loopback, when
        /// `qemu-system-x86_64` is installed (scripts/install-qemu.sh).
        #[arg(long, value_name = "PEER")]
        peer: Option<String>,
        /// The source guest's vCPU in `--what migration` and `pipeline`: the simulated one,
        /// or a KVM vCPU running the driver's x86-64 image.
        #[arg(long, value_enum, default_value = "sim")]
        vcpu: Vcpu,
        /// RAM channels in `--what migration` and `pipeline` (see `migrate --channels`);
        /// the pipeline then measures the main stream alone and with the channels, beside.
        #[arg(long, default_value_t = 0)]
        channels: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve one device as a vfio-user server on a UNIX socket (a device process): any
    /// vfio-user client can drive and migrate it; one client at a time.
    Serve {
        /// Socket path (created; a stale one is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Device type: a vGPU type (see `types`) or `serial-16`.
        #[arg(long = "type", default_value = "vgpu-64")]
        device_type: String,
        /// DMA dirty tracking of a vGPU: shadow-pt, pinned or off.
        #[arg(long, default_value = "shadow-pt")]
        dirty_tracking: String,
        /// v2 migration features of a vGPU: stop-copy, p2p, pre-copy (comma-separated).
        #[arg(long, default_value = "stop-copy,p2p,pre-copy")]
        migration_features: String,
        /// Deadline in ms for the rest of a message once it started, and for replies.
        #[arg(long, default_value_t = 5000)]
        deadline_ms: u64,
        /// Largest data transfer offered in VERSION (bytes; the client may ask for less).
        #[arg(long, default_value_t = 1 << 20)]
        max_data_xfer_size: u32,
        /// Exit on purpose (testing): stop-copy (asked to enter STOP_COPY) or resume-end
        /// (asked to leave RESUMING).
        #[arg(long, hide = true, value_name = "STEP")]
        exit_at: Option<String>,
    },
}
