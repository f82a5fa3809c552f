//! The `vgpu-migrate` binary as a child process: built once if missing, its output drained
//! on threads, killed if a test fails, every wait bounded by a hang guard.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any wait for a child lasts (a hang guard, not a speed check).
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// The `vgpu-migrate` binary of this build profile, found next to the test's own directory
/// (`target/<profile>/deps/..`) and built there once if it is missing.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in target/<profile>/deps");
        let bin = profile_dir.join(format!("vgpu-migrate{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            build(profile_dir);
        }
        assert!(bin.exists(), "{} is missing after a build", bin.display());
        bin
    })
}

/// `cargo build -p vgpu-migrate` into the target directory and profile this test runs from.
fn build(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir.parent().expect("target directory");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "vgpu-migrate", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => panic!("no profile directory in {}", profile_dir.display()),
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p vgpu-migrate failed");
}

/// What a finished process printed.
#[derive(Debug)]
pub struct Out {
    /// Which process (for assertion messages).
    pub what: &'static str,
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Out {
    /// Exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{} failed:\n{}", self.what, self.stderr);
        self
    }

    /// Failed cleanly: non-zero, not a panic, one `error:` line on stderr.
    pub fn one_error_line(&self) -> &str {
        crate::one_error_line(self.what, self.code, &self.stderr)
    }
}

/// A running child; killed (SIGKILL) on drop unless it was waited for.
#[derive(Debug)]
pub struct Proc {
    what: &'static str,
    child: Child,
    readers: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Proc {
    /// Start `vgpu-migrate --log-level critical ARGS`.
    pub fn start(what: &'static str, args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["--log-level", "critical"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let out = drain(child.stdout.take().expect("piped stdout"));
        let err = drain(child.stderr.take().expect("piped stderr"));
        Self {
            what,
            child,
            readers: Some((out, err)),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and was not reaped yet by a wait).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Its state letter in `/proc/PID/stat` (`T`: stopped by a signal).
    pub fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // pid (comm) STATE ...: comm may hold spaces, so look after its closing paren.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Wait at most [`HANG_GUARD`] (the guard kills it on the way out of a failed wait).
    pub fn wait(mut self) -> Out {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for a child") {
                break s;
            }
            assert!(start.elapsed() < HANG_GUARD, "{} timed out", self.what);
            std::thread::sleep(Duration::from_millis(5));
        };
        let (out, err) = self.readers.take().expect("readers taken once");
        Out {
            what: self.what,
            code: status.code(),
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `incoming ARGS` listening on a port of its own choosing; returns it and its URL, read
/// from its `--ready-file` once it listens (no port is picked here and reused).
pub fn incoming(args: &[&str]) -> (Proc, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ready = std::env::temp_dir().join(format!("vgpu-migrate-{}-{n}.url", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let ready_s = ready.to_str().expect("UTF-8 temp path").to_string();
    let mut all = vec![
        "incoming",
        "--listen",
        "tcp://127.0.0.1:0",
        "--ready-file",
        &ready_s,
    ];
    all.extend(args);
    let mut p = Proc::start("incoming", &all);
    let start = Instant::now();
    let url = loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            break s.trim().to_string();
        }
        assert!(!p.exited(), "incoming exited before it listened");
        assert!(start.elapsed() < HANG_GUARD, "incoming never listened");
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = std::fs::remove_file(&ready);
    (p, url)
}

/// A `vgpu-migrate serve` device process on a socket of its own; killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct DeviceProcess {
    child: Child,
    /// Where it serves.
    pub socket: PathBuf,
}

impl DeviceProcess {
    /// Start `serve --type device_type` with `extra` arguments on a socket named after
    /// `name` and wait (at most [`HANG_GUARD`]) until it listens.
    pub fn start(name: &str, device_type: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vgpu-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a socket directory");
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(binary())
            .args(["--log-level", "critical", "serve", "--type", device_type])
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the device process");
        let mut me = Self { child, socket };
        let started = Instant::now();
        while !me.socket.exists() {
            assert!(
                matches!(me.child.try_wait(), Ok(None)),
                "the device process exited before it listened"
            );
            assert!(started.elapsed() < HANG_GUARD, "the device never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        me
    }

    /// The `--device` argument that attaches it.
    pub fn device_arg(&self) -> String {
        format!("vfio-user:{}", self.socket.display())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill it now (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
