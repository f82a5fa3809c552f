//! Output helpers: the run summary (text or JSON) and PNG frames.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use vgpu_platform::VgpuVm;

use serde::Serialize;
use snafu::{ResultExt, Snafu};
use vmm::Vm;

/// Errors writing output files.
#[derive(Debug, Snafu)]
pub enum OutputError {
    /// The file could not be created.
    #[snafu(display("cannot write {}: {source}", path.display()))]
    Create {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[snafu(display("cannot encode PNG {}: {source}", path.display()))]
    Encode {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: png::EncodingError,
    },
    /// Nothing is displayed.
    #[snafu(display("cannot write {}: the display plane is off", path.display()))]
    NoDisplay {
        /// Path.
        path: std::path::PathBuf,
    },
}

/// What `run` and `restore` print.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Frames rendered.
    pub frames: u64,
    /// Checksum of the last frame, hex.
    pub final_checksum: String,
    /// Every frame's checksum, hex.
    pub checksums: Vec<String>,
    /// SHA-256 of guest RAM at the end.
    pub ram_digest: String,
    /// SHA-256 of graphics memory at the end.
    pub gmem_digest: String,
    /// The vCPU the guest ran on: "sim" (the driver as host code) or "kvm" (the driver's
    /// x86-64 image on a KVM vCPU).
    pub vcpu: &'static str,
    /// What the KVM run did (exits, interrupts, device work), with `--vcpu kvm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm: Option<vmm::KvmRunReport>,
    /// The workload's profile, size and cost, and how fast it ran (`run`; not part of
    /// the run's output that another run must reproduce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadFigures>,
}

/// What a run's workload asks of each frame, and its speed.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadFigures {
    /// Profile name.
    pub profile: &'static str,
    /// Render width.
    pub width: u32,
    /// Render height.
    pub height: u32,
    /// Triangles submitted per frame (every pass).
    pub triangles_per_frame: u64,
    /// Bytes of graphics memory each frame rewrites (page granular: colour buffer, depth
    /// buffer, render-to-texture targets and their depth, uploaded texture slots).
    pub gmem_dirty_bytes_per_frame: u64,
    /// Frames per second: frames over the wall time of the run (boot excluded).
    pub fps: f64,
    /// `gmem_dirty_bytes_per_frame * fps`, in MB/s.
    pub gmem_dirty_mb_per_s: f64,
}

impl RunReport {
    /// Collect from a VM that has finished `frames` frames.
    pub fn collect(vm: &mut Vm, frames: u64) -> Self {
        let log = vm.checksums(frames);
        Self {
            frames,
            final_checksum: log.last().map(|c| format!("{c:016x}")).unwrap_or_default(),
            checksums: log.iter().map(|c| format!("{c:016x}")).collect(),
            ram_digest: vmm::memory::hex(&vm.ram_digest()),
            gmem_digest: vmm::memory::hex(&vm.gmem_digest()),
            vcpu: if vm.on_kvm() { "kvm" } else { "sim" },
            kvm: None,
            workload: None,
        }
    }

    /// Print as JSON or as the bare final checksum.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
        } else {
            println!("{}", self.final_checksum);
        }
    }
}

/// Write the displayed frame as PNG.
pub fn write_png(vm: &mut Vm, path: &Path) -> Result<(), OutputError> {
    let (w, h, rgba) = vm.display_frame().ok_or_else(|| OutputError::NoDisplay {
        path: path.to_path_buf(),
    })?;
    write_rgba(path, w, h, &rgba)
}

/// Write RGBA pixels as PNG.
pub fn write_rgba(path: &Path, w: u32, h: u32, rgba: &[u8]) -> Result<(), OutputError> {
    let file = File::create(path).context(CreateSnafu { path })?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context(EncodeSnafu { path })?;
    writer
        .write_image_data(rgba)
        .context(EncodeSnafu { path })?;
    writer.finish().context(EncodeSnafu { path })?;
    Ok(())
}
