//! `bench --what pipeline --peer qemu`: a QEMU-to-QEMU live migration over loopback with
//! unlimited bandwidth, of a paused guest with as much non-zero memory as our own stream
//! moved, measured in the same bench run as our figures.
//!
//! The source guest's RAM is a private mapping of a file of pseudo-random bytes
//! (`memory-backend-file,share=off`), so every page is non-zero and QEMU's zero-page
//! detection skips nothing; the target's RAM is anonymous, as ours is. Both QEMUs are
//! driven over QMP on UNIX sockets ([`Qmp`]); every wait has a deadline, and both processes
//! are killed when a run ends, however it ends (`QemuProcess`'s `Drop`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use self::qmp::Qmp;

pub mod qmp;
mod summary;
use slog::{info, Logger};
use snafu::{ResultExt, Snafu};
pub use summary::PeerBench;

/// How long QEMU may take to start and open its QMP socket.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a QMP command may take to answer.
const COMMAND_DEADLINE: Duration = qmp::COMMAND_DEADLINE;
/// The migration's own deadline: generous against any plausible loopback rate.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(600);
/// `max-bandwidth` for an unlimited link: 1 TB/s.
const UNLIMITED: u64 = 1_000_000_000_000;

/// Errors of the QEMU peer.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum QemuError {
    /// A file or socket could not be set up.
    #[snafu(display("{what}: {source}"))]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// QEMU did not start, died, or failed a command.
    #[snafu(display("qemu ({role}) {what}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") }))]
    Process {
        /// Source or target.
        role: &'static str,
        /// What happened.
        what: String,
        /// The last line QEMU wrote on its stderr.
        stderr: String,
    },
    /// The migration did not complete in time.
    #[snafu(display("the QEMU migration did not complete within {} s", within.as_secs()))]
    Deadline {
        /// The deadline.
        within: Duration,
    },
    /// `query-migrate` lacks the figures.
    #[snafu(display("query-migrate has no transfer figures: {info}"))]
    Figures {
        /// What it said.
        info: String,
    },
    /// The migration ended badly.
    #[snafu(display("the QEMU migration ended as '{status}'{}", error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()))]
    Migration {
        /// Final status.
        status: String,
        /// QEMU's error description.
        error: Option<String>,
    },
}

type Result<T, E = QemuError> = std::result::Result<T, E>;

/// `qemu-system-x86_64` on `PATH`, if any.
pub fn find_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// Whether `/dev/kvm` opens for reading and writing (QEMU then runs with `-accel kvm`).
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A QEMU process, killed and reaped on drop.
#[derive(Debug)]
struct QemuProcess {
    role: &'static str,
    child: Child,
    stderr: PathBuf,
}

impl QemuProcess {
    fn spawn(qemu: &Path, role: &'static str, args: &[String], dir: &Path) -> Result<Self> {
        let stderr = dir.join(format!("{role}.stderr"));
        let err = std::fs::File::create(&stderr).context(IoSnafu {
            what: format!("create {}", stderr.display()),
        })?;
        let child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context(IoSnafu {
                what: format!("start {}", qemu.display()),
            })?;
        Ok(Self {
            role,
            child,
            stderr,
        })
    }

    /// A process error with the last line of QEMU's stderr.
    fn failed(&mut self, what: impl std::fmt::Display) -> QemuError {
        let exited = match self.child.try_wait() {
            Ok(Some(st)) => format!(" (exited: {st})"),
            _ => String::new(),
        };
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        QemuError::Process {
            role: self.role,
            what: format!("{what}{exited}"),
            stderr: text
                .lines()
                .rfind(|l| !l.contains("warning:"))
                .unwrap_or_default()
                .to_string(),
        }
    }

    fn qmp(&mut self, sock: &Path) -> Result<Qmp> {
        Qmp::connect(sock, Instant::now() + START_DEADLINE).map_err(|e| self.failed(e))
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        // tmpfs where there is one: the random file then never waits on a disk.
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "vgpu-migrate-qemu-{}-{}",
            std::process::id(),
            vmm::migration::clock::monotonic_ns()
        ));
        std::fs::create_dir_all(&dir).context(IoSnafu {
            what: format!("create {}", dir.display()),
        })?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write `bytes` of pseudo-random (xorshift) bytes to `path`.
fn random_file(path: &Path, bytes: u64) -> Result<()> {
    let f = std::fs::File::create(path).context(IoSnafu {
        what: format!("create {}", path.display()),
    })?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for c in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let k = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..k]).context(IoSnafu {
            what: format!("write {}", path.display()),
        })?;
        left -= k as u64;
    }
    w.flush().context(IoSnafu {
        what: format!("write {}", path.display()),
    })
}

/// One QEMU migration's figures, from the source's `query-migrate`.
#[derive(Debug, Clone, Serialize)]
pub struct QemuRun {
    /// RAM bytes transferred.
    pub ram_transferred: u64,
    /// Total time, ms (QEMU's `total-time`: from `migrate` to completion).
    pub total_ms: f64,
    /// Downtime, ms.
    pub downtime_ms: f64,
    /// Transferred bytes / total time, bytes/s.
    pub rate: f64,
    /// CPU seconds both QEMUs spent from `migrate` to its completion (user + system, every
    /// thread; `/proc` counts in 10 ms ticks), if `/proc` could be read.
    pub cpu_s: Option<f64>,
}

/// The QEMU peer: a guest of `guest_mib` MiB, all of it non-zero, and what was learned
/// setting it up.
#[derive(Debug)]
pub struct QemuPeer {
    qemu: PathBuf,
    accel: &'static str,
    guest_mib: u64,
    dir: Scratch,
    ram_file: PathBuf,
    log: Logger,
}

impl QemuPeer {
    /// Prepare a peer at `qemu` whose guest has `guest_mib` MiB of non-zero RAM (writes the
    /// file of random bytes once; each [`QemuPeer::migrate`] reuses it).
    pub fn new(qemu: PathBuf, guest_mib: u64, log: &Logger) -> Result<Self> {
        let dir = Scratch::new()?;
        let ram_file = dir.0.join("ram.bin");
        random_file(&ram_file, guest_mib << 20)?;
        Ok(Self {
            qemu,
            accel: if kvm_usable() { "kvm" } else { "tcg" },
            guest_mib,
            dir,
            ram_file,
            log: log.clone(),
        })
    }

    /// The accelerator QEMU runs with: kvm or tcg.
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    /// The guest's RAM, MiB.
    pub fn guest_mib(&self) -> u64 {
        self.guest_mib
    }

    /// The command line both QEMUs share; `backend` is the RAM's `-object`.
    fn common(&self, role: &str, backend: String) -> Vec<String> {
        let m = self.guest_mib;
        [
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-accel",
            self.accel,
            "-m",
            &format!("{m}M"),
            "-object",
            &backend,
            "-machine",
            "memory-backend=m",
            "-qmp",
            &format!(
                "unix:{},server=on,wait=off",
                self.dir.0.join(format!("{role}.qmp")).display()
            ),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// One migration, source to target over loopback TCP, `max-bandwidth` unlimited, on
    /// one channel or (`channels` > 1) with QEMU's multifd on that many. Returns the
    /// figures and QEMU's version.
    pub fn migrate(&self, channels: u32) -> Result<(QemuRun, String)> {
        let m = self.guest_mib;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context(IoSnafu {
                what: "find a free loopback port",
            })?
            .port();
        let uri = format!("tcp:127.0.0.1:{port}");
        // The target's RAM is faulted in when it starts (`prealloc=on`), before the source
        // connects, as ours is (`migration::prepare`): the two streams then do the same work.
        let mut targs = self.common(
            "target",
            format!("memory-backend-ram,id=m,size={m}M,prealloc=on"),
        );
        targs.extend(["-incoming".to_string(), "defer".to_string()]);
        let sargs = self.common(
            "source",
            format!(
                "memory-backend-file,id=m,size={m}M,mem-path={},share=off",
                self.ram_file.display()
            ),
        );
        let mut target = QemuProcess::spawn(&self.qemu, "target", &targs, &self.dir.0)?;
        let mut source = QemuProcess::spawn(&self.qemu, "source", &sargs, &self.dir.0)?;
        let mut tq = target.qmp(&self.dir.0.join("target.qmp"))?;
        let mut sq = source.qmp(&self.dir.0.join("source.qmp"))?;
        let version = sq
            .greeting
            .pointer("/version/qemu")
            .map(|v| format!("{}.{}.{}", v["major"], v["minor"], v["micro"]))
            .unwrap_or_else(|| "?".into());
        if channels > 1 {
            // Both ends: the capability, then the channel count, before the stream starts.
            for (q, p) in [(&mut tq, &mut target), (&mut sq, &mut source)] {
                q.execute(
                    "migrate-set-capabilities",
                    Some(json!({ "capabilities": [{ "capability": "multifd", "state": true }] })),
                    COMMAND_DEADLINE,
                )
                .map_err(|e| p.failed(e))?;
                q.execute(
                    "migrate-set-parameters",
                    Some(json!({ "multifd-channels": channels })),
                    COMMAND_DEADLINE,
                )
                .map_err(|e| p.failed(e))?;
            }
        }
        tq.execute(
            "migrate-incoming",
            Some(json!({ "uri": uri })),
            COMMAND_DEADLINE,
        )
        .map_err(|e| target.failed(e))?;
        sq.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": UNLIMITED })),
            COMMAND_DEADLINE,
        )
        .map_err(|e| source.failed(e))?;
        let pids = [source.child.id(), target.child.id()];
        let cpu = || -> Option<f64> {
            pids.iter()
                .map(|p| super::cpu::process_seconds(*p))
                .sum::<Option<f64>>()
        };
        let cpu0 = cpu();
        sq.execute("migrate", Some(json!({ "uri": uri })), COMMAND_DEADLINE)
            .map_err(|e| source.failed(e))?;
        let deadline = Instant::now() + MIGRATION_DEADLINE;
        let info = loop {
            let info = sq
                .execute("query-migrate", None, COMMAND_DEADLINE)
                .map_err(|e| source.failed(e))?;
            match info.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => break info,
                s @ ("failed" | "cancelled") => {
                    return Err(QemuError::Migration {
                        status: s.into(),
                        error: info
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .map(String::from),
                    })
                }
                _ if Instant::now() >= deadline => {
                    return Err(QemuError::Deadline {
                        within: MIGRATION_DEADLINE,
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let cpu_s = cpu0.zip(cpu()).map(|(a, b)| b - a);
        let ram_transferred = info
            .pointer("/ram/transferred")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let total_ms = info
            .get("total-time")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let downtime_ms = info.get("downtime").and_then(Value::as_f64).unwrap_or(0.0);
        if ram_transferred == 0 || total_ms <= 0.0 {
            return Err(QemuError::Figures {
                info: info.to_string(),
            });
        }
        info!(self.log, "qemu migration"; "ram_transferred" => ram_transferred, "total_ms" => total_ms);
        let _ = sq.execute("quit", None, COMMAND_DEADLINE);
        let _ = tq.execute("quit", None, COMMAND_DEADLINE);
        Ok((
            QemuRun {
                ram_transferred,
                total_ms,
                downtime_ms,
                rate: ram_transferred as f64 / (total_ms / 1e3),
                cpu_s,
            },
            version,
        ))
    }
}
