//! What `bench --what pipeline --peer qemu` reports of QEMU: each run of ours is followed
//! by QEMU's own migration of as much non-zero memory, on one channel and with multifd.

use std::path::PathBuf;

use serde::Serialize;
use slog::Logger;

use super::{find_qemu, QemuError, QemuPeer, QemuRun};

/// QEMU's multifd channels in the second configuration.
pub const MULTIFD_CHANNELS: u32 = 2;

/// What the bench reports of its peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSummary {
    /// Always "qemu".
    pub peer: &'static str,
    /// `qemu-system-x86_64` was found on `PATH`.
    pub installed: bool,
    /// `qemu-system-x86_64` was found and every run completed.
    pub measured: bool,
    /// Why there is no figure (not installed, or how it failed).
    pub note: Option<String>,
    /// QEMU's version, from its QMP greeting.
    pub qemu_version: Option<String>,
    /// kvm or tcg.
    pub accel: Option<&'static str>,
    /// The guest's RAM, MiB (all of it non-zero).
    pub guest_mib: u64,
    /// Median of the single-channel runs: RAM transferred / total time, MB/s.
    pub mbps: Option<f64>,
    /// Each single-channel run, MB/s.
    pub runs_mbps: Vec<f64>,
    /// Median of the single-channel runs: CPU seconds per GB transferred, both QEMUs.
    pub cpu_per_gb: Option<f64>,
    /// Each single-channel run, QEMU's figures.
    pub runs: Vec<QemuRun>,
    /// Channels of the multifd configuration.
    pub multifd_channels: u32,
    /// Median of the multifd runs, MB/s.
    pub multifd_mbps: Option<f64>,
    /// Median of the multifd runs: CPU seconds per GB transferred, both QEMUs.
    pub multifd_cpu_per_gb: Option<f64>,
    /// Each multifd run, QEMU's figures.
    pub multifd_runs: Vec<QemuRun>,
}

/// The median of `v` (`None` if empty).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

/// Median MB/s and CPU seconds per GB of `runs`.
fn figures(runs: &[QemuRun]) -> (Option<f64>, Option<f64>) {
    (
        median(runs.iter().map(|r| r.rate / 1e6).collect()),
        median(
            runs.iter()
                .filter_map(|r| r.cpu_s.map(|c| c / (r.ram_transferred as f64 / 1e9)))
                .collect(),
        ),
    )
}

/// The peer across a bench's runs: each run of ours is followed by one of QEMU's, on a
/// guest as large as the bytes our run moved (set up at the first run).
#[derive(Debug)]
pub struct PeerBench {
    qemu: Option<PathBuf>,
    peer: Option<QemuPeer>,
    version: Option<String>,
    runs: Vec<QemuRun>,
    multifd: Vec<QemuRun>,
    error: Option<String>,
    log: Logger,
}

impl PeerBench {
    /// A peer bench; `qemu-system-x86_64` is looked up on `PATH`.
    pub fn new(log: &Logger) -> Self {
        Self {
            qemu: find_qemu(),
            peer: None,
            version: None,
            runs: Vec::new(),
            multifd: Vec::new(),
            error: None,
            log: log.clone(),
        }
    }

    /// Two QEMU migrations of a guest with `bytes` of non-zero memory (rounded up to whole
    /// MiB; the first call fixes the size): one channel, then multifd on
    /// [`MULTIFD_CHANNELS`]. After a failure, later calls do nothing.
    pub fn run(&mut self, bytes: u64) {
        let Some(qemu) = self.qemu.clone() else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        let res = (|| {
            if self.peer.is_none() {
                let mib = bytes.div_ceil(1 << 20).max(2);
                self.peer = Some(QemuPeer::new(qemu, mib, &self.log)?);
            }
            let Some(peer) = self.peer.as_ref() else {
                return Ok(());
            };
            let (run, version) = peer.migrate(1)?;
            self.runs.push(run);
            self.version = Some(version);
            let (run, _) = peer.migrate(MULTIFD_CHANNELS)?;
            self.multifd.push(run);
            Ok::<(), QemuError>(())
        })();
        if let Err(e) = res {
            self.error = Some(e.to_string());
        }
    }

    /// The figures, or why there are none.
    pub fn summary(&self) -> PeerSummary {
        let runs_mbps: Vec<f64> = self.runs.iter().map(|r| r.rate / 1e6).collect();
        let (mbps, cpu_per_gb) = figures(&self.runs);
        let (multifd_mbps, multifd_cpu_per_gb) = figures(&self.multifd);
        let note = match (&self.qemu, &self.error) {
            (None, _) => Some(
                "qemu-system-x86_64 is not installed (scripts/install-qemu.sh installs it); no QEMU figure"
                    .to_string(),
            ),
            (Some(_), Some(e)) => Some(format!("the QEMU peer failed: {e}")),
            _ => None,
        };
        PeerSummary {
            peer: "qemu",
            installed: self.qemu.is_some(),
            measured: self.qemu.is_some() && self.error.is_none() && !self.runs.is_empty(),
            note,
            qemu_version: self.version.clone(),
            accel: self.peer.as_ref().map(QemuPeer::accel),
            guest_mib: self.peer.as_ref().map_or(0, QemuPeer::guest_mib),
            mbps,
            runs_mbps,
            cpu_per_gb,
            runs: self.runs.clone(),
            multifd_channels: MULTIFD_CHANNELS,
            multifd_mbps,
            multifd_cpu_per_gb,
            multifd_runs: self.multifd.clone(),
        }
    }
}
