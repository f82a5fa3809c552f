//! Two real processes: `vgpu-migrate incoming` and `vgpu-migrate migrate`, over loopback
//! TCP. A migration verifies on the target and ends with a plain run's checksum; a failed
//! migration or an incompatible target leaves the source finishing the workload itself.
//!
//! The binary is the workspace's `vgpu-migrate`, found next to this test's own directory
//! (`target/<profile>/deps/..`) and built there once if it is missing. Every child is killed
//! if a test fails, and every wait has a time limit.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
const SMALL: [&str; 8] = vgpu_migrate_tests::SMALL_ARGS;
const FRAMES: &str = "6";
const MIGRATE_AT: &str = "2";

/// The `vgpu-migrate` binary of this build profile.
fn binary() -> &'static Path {
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

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// What a finished process printed.
#[derive(Debug)]
struct Out {
    what: &'static str,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{} failed:\n{}", self.what, self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", self.what, self.stdout))
    }

    /// Failed cleanly: non-zero, not a panic, one `error:` line on stderr.
    fn one_error_line(&self) -> &str {
        vgpu_migrate_tests::one_error_line(self.what, self.code, &self.stderr)
    }
}

/// A running child; killed on drop unless it was waited for.
struct Proc {
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
    fn start(what: &'static str, args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["--log-level", "critical"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        Self {
            what,
            child,
            readers: Some((out, err)),
        }
    }

    /// Wait at most [`TIMEOUT`] (the guard kills it on the way out of a failed wait).
    fn wait(mut self) -> Out {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for a child") {
                break s;
            }
            assert!(start.elapsed() < TIMEOUT, "{} timed out", self.what);
            std::thread::sleep(Duration::from_millis(10));
        };
        let (out, err) = self.readers.take().unwrap();
        Out {
            what: self.what,
            code: status.code(),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
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

/// `incoming` on a free port; its URL.
fn incoming(mdev_type: &str) -> (Proc, String) {
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let p = Proc::start(
        "incoming",
        &["incoming", "--listen", &url, "--type", mdev_type, "--json"],
    );
    (p, url)
}

/// `migrate` of the small workload to `url` (it retries the connection until the target
/// listens).
fn migrate(url: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "migrate",
        "--to",
        url,
        "--type",
        "vgpu-64",
        "--frames",
        FRAMES,
        "--migrate-at",
        MIGRATE_AT,
        "--json",
    ];
    args.extend(SMALL);
    args.extend(extra);
    Proc::start("migrate", &args)
}

/// `run --frames 6 --json` of the same workload: what every verified run must end with.
fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let mut args = vec!["run", "--frames", FRAMES, "--json"];
        args.extend(SMALL);
        let v = Proc::start("run", &args).wait().ok().json();
        assert_eq!(v["checksums"].as_array().map(Vec::len), Some(6), "{v}");
        v
    })
}

fn migrate_and_verify(protocol: &str) {
    let (target, url) = incoming("vgpu-64");
    let source = migrate(&url, &["--protocol", protocol]).wait().ok().json();
    let target = target.wait().ok().json();
    let want = reference();

    assert_eq!(source["migrated"], true, "{source}");
    assert_eq!(source["error"], Value::Null, "{source}");
    assert_eq!(source["verified"], true, "{source}");
    let downtime = source["downtime_ms"].as_f64().unwrap();
    let total = source["total_ms"].as_f64().unwrap();
    assert!(downtime > 0.0, "{source}");
    assert!(total >= downtime, "{source}");
    assert!(source["rounds"].as_u64().unwrap() >= 1, "{source}");
    let bytes = source["bytes_total"].as_u64().unwrap();
    assert!(bytes > 0, "{source}");
    assert_eq!(source["migration"]["protocol"], protocol, "{source}");

    assert_eq!(target["verified"], true, "{target}");
    assert_eq!(target["detail"], "", "{target}");
    assert_eq!(target["protocol"], protocol, "{target}");
    assert_eq!(target["frames"], 6, "{target}");
    assert_eq!(target["final_checksum"], want["final_checksum"], "{target}");
    assert_eq!(target["checksums"], want["checksums"], "{target}");
    assert_eq!(
        target["bytes_total"].as_u64(),
        Some(bytes),
        "what was sent arrived"
    );
    // The source learned the target's result.
    assert_eq!(source["final_checksum"], want["final_checksum"], "{source}");
}

#[test]
fn migrate_between_two_processes_over_the_region_protocol() {
    migrate_and_verify("region");
}

#[test]
fn migrate_between_two_processes_over_v2() {
    migrate_and_verify("v2");
}

#[test]
fn a_failed_stop_copy_leaves_the_source_finishing_with_the_reference() {
    let (target, url) = incoming("vgpu-64");
    let source = migrate(&url, &["--inject-failure", "stop-copy"]).wait();
    let target = target.wait();

    let line = source.one_error_line();
    assert!(line.contains("migration failed"), "{line}");
    assert!(line.contains("stop-and-copy"), "names the phase: {line}");
    assert!(
        line.contains("finished frame 6") && line.contains("checksum log equals the reference"),
        "{line}"
    );
    let v = source.json();
    assert_eq!(v["migrated"], false, "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["final_checksum"], reference()["final_checksum"], "{v}");

    let line = target.one_error_line();
    assert!(line.contains("incoming migration failed"), "{line}");
    assert_eq!(target.stdout, "", "the target reports no result");
}

#[test]
fn an_incompatible_target_is_refused_and_the_source_finishes() {
    let (target, url) = incoming("vgpu-512");
    let source = migrate(&url, &[]).wait();
    let target = target.wait();

    let line = source.one_error_line();
    assert!(
        line.contains("'vgpu-512'") && line.contains("'vgpu-64'"),
        "names both types: {line}"
    );
    assert!(line.contains("checksum log equals the reference"), "{line}");
    let v = source.json();
    assert_eq!(v["migrated"], false, "{v}");
    assert_eq!(v["bytes_total"], 0, "{v}");
    assert_eq!(v["final_checksum"], reference()["final_checksum"], "{v}");

    let line = target.one_error_line();
    assert!(line.contains("incompatible"), "{line}");
    assert!(
        line.contains("vgpu-512") && line.contains("vgpu-64"),
        "{line}"
    );
}
