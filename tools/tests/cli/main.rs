//! The `vgpu-migrate` binary, run as a user would: every subcommand's output, and every
//! class of bad input answered with one `error:` line and a non-zero exit, never a panic.
//!
//! All runs use the small workload (320x200, 600 triangles, 64 MiB guest RAM) and a few
//! frames; every run has a time limit.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use vmm::stream::{Header, Record, StreamReader, StreamWriter, TrailerCheck};

const BIN: &str = env!("CARGO_BIN_EXE_vgpu-migrate");
const SMALL: [&str; 10] = vgpu_migrate_tests::SMALL_ARGS;
const TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Running the binary

/// What a finished run printed.
#[derive(Debug)]
struct Out {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "vgpu-migrate {:?} failed:\n{}",
            self.args,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "{:?}: stdout is not JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }

    /// The run failed cleanly: non-zero exit that is not a panic's (101), no panic message,
    /// and stderr is exactly one line, `error: ...`. Returns that line.
    fn one_error_line(&self) -> &str {
        vgpu_migrate_tests::one_error_line(&format!("{:?}", self.args), self.code, &self.stderr)
    }

    /// [`Out::one_error_line`], and it contains every one of `words`.
    fn error_naming(&self, words: &[&str]) -> &str {
        let line = self.one_error_line();
        for w in words {
            assert!(
                line.contains(w),
                "{:?}: {line:?} does not say {w:?}",
                self.args
            );
        }
        line
    }
}

/// Kills the child if the test fails while it runs.
struct Running {
    child: Child,
    readers: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Run `vgpu-migrate --log-level critical ARGS`, at most [`TIMEOUT`].
fn vgpu<S: AsRef<str>>(args: &[S]) -> Out {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let mut child = Command::new(BIN)
        .args(["--log-level", "critical"])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vgpu-migrate");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let mut run = Running {
        child,
        readers: Some((out, err)),
    };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.child.try_wait().expect("wait for vgpu-migrate") {
            break s;
        }
        assert!(start.elapsed() < TIMEOUT, "vgpu-migrate {args:?} timed out");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = run.readers.take().unwrap();
    Out {
        args,
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `vgpu` with the small workload appended.
fn vgpu_small(args: &[&str]) -> Out {
    let mut a: Vec<&str> = args.to_vec();
    a.extend(SMALL);
    vgpu(&a)
}

// ---------------------------------------------------------------------------------------
// Files

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "cli-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `bytes` to `name`; its path as a string.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path(name);
        fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A snapshot and a device-only context after `SNAP_FRAMES` frames of seed 1, made once
/// with `dump` and held in memory.
const SNAP_FRAMES: u64 = 2;

struct Fixture {
    snapshot: Vec<u8>,
    context: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let d = TempDir::new("fixture");
        let (snap, ctx) = (s(&d.path("a.vgm")), s(&d.path("a.ctx")));
        let frames = SNAP_FRAMES.to_string();
        vgpu_small(&["dump", "--frames", &frames, "--out", &snap]).ok();
        vgpu_small(&["dump", "--frames", &frames, "--out", &ctx, "--device-only"]).ok();
        Fixture {
            snapshot: fs::read(&snap).unwrap(),
            context: fs::read(&ctx).unwrap(),
        }
    })
}

/// (offset, kind, length) of every record of a valid stream.
fn layout(bytes: &[u8]) -> Vec<(usize, u32, usize)> {
    let name_len = u16::from_le_bytes([bytes[28], bytes[29]]) as usize;
    let mut off = 30 + name_len;
    let mut out = Vec::new();
    while off < bytes.len() {
        let kind = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        out.push((off, kind, len));
        off += 8 + len;
    }
    assert_eq!(off, bytes.len());
    out
}

fn first(bytes: &[u8], kind: u32) -> (usize, usize) {
    layout(bytes)
        .into_iter()
        .find(|r| r.1 == kind)
        .map(|(o, _, l)| (o, l))
        .unwrap()
}

const RAM_PAGES: u32 = 1;
const DEVICE_DATA: u32 = 3;
const DEVICE_END: u32 = 4;
const CONFIG: u32 = 5;
const VCPU: u32 = 6;
const END: u32 = 0xff;

/// `run --json`'s output without its `workload` figures (speed: not reproducible).
fn run_json(frames: u64, seed: u64) -> Value {
    let v = vgpu_small(&[
        "run",
        "--frames",
        &frames.to_string(),
        "--seed",
        &seed.to_string(),
        "--json",
    ])
    .ok()
    .json();
    without_workload(v)
}

fn without_workload(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("workload");
    }
    v
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

mod bad_input;
mod subcommands;
