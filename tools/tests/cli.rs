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

// ---------------------------------------------------------------------------------------
// Subcommands

#[test]
fn types_lists_both_types_with_available_instances() {
    let out = vgpu(&["types"]).ok();
    for t in ["vgpu-64", "vgpu-512"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_else(|| panic!("no row for {t}:\n{}", out.stdout));
        let avail: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(avail > 0, "{line}");
    }
    let v = vgpu(&["types", "--json"]).ok().json();
    let rows = v.as_array().unwrap();
    let mut names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["vgpu-512", "vgpu-64"]);
    for r in rows {
        assert!(r["available_instances"].as_u64().unwrap() > 0, "{r}");
        assert!(r["description"].as_str().unwrap().contains("MiB"), "{r}");
    }
}

#[test]
fn run_json_has_every_frame_and_the_final_checksum_is_the_last() {
    let v = run_json(4, 1);
    assert_eq!(v["frames"], 4);
    let sums: Vec<&str> = v["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(sums.len(), 4);
    assert!(sums.iter().all(|c| is_hex(c, 16)), "{sums:?}");
    assert_eq!(v["final_checksum"].as_str().unwrap(), sums[3]);
    assert!(
        sums.windows(2).all(|w| w[0] != w[1]),
        "frames differ: {sums:?}"
    );
    assert!(is_hex(v["ram_digest"].as_str().unwrap(), 64));
    assert!(is_hex(v["gmem_digest"].as_str().unwrap(), 64));
    // The workload's figures: the small light profile, its cost and speed.
    let full = vgpu_small(&["run", "--frames", "4", "--json"]).ok().json();
    let w = &full["workload"];
    assert_eq!(w["profile"], "light");
    assert_eq!(
        (w["width"].as_u64(), w["height"].as_u64()),
        (Some(320), Some(200))
    );
    assert!(w["fps"].as_f64().is_some_and(|f| f > 0.0), "{w}");
    assert!(
        w["triangles_per_frame"].as_u64().is_some_and(|t| t > 600),
        "{w}"
    );
    // Colour and depth buffer (whole pages), one render target and its depth, one upload.
    let dirty = w["gmem_dirty_bytes_per_frame"].as_u64().unwrap_or(0);
    let fb = (320u64 * 200 * 4).next_multiple_of(4096);
    assert_eq!(dirty, 2 * fb + 3 * 256 * 256 * 4, "{w}");
    // Without --json: the final checksum alone.
    let text = vgpu_small(&["run", "--frames", "4"]).ok();
    assert_eq!(text.stdout.trim(), sums[3]);
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let a = vgpu_small(&["run", "--frames", "3", "--seed", "5", "--json"]).ok();
    let b = vgpu_small(&["run", "--frames", "3", "--seed", "5", "--json"]).ok();
    assert_eq!(without_workload(a.json()), without_workload(b.json()));
    let (a, c) = (a.json(), run_json(3, 6));
    assert_ne!(a["final_checksum"], c["final_checksum"]);
    assert_ne!(a["checksums"][0], c["checksums"][0]);
    assert_ne!(a["gmem_digest"], c["gmem_digest"]);
}

#[test]
fn png_is_a_valid_png_of_the_render_size() {
    let d = TempDir::new("png");
    let p = d.path("frame.png");
    vgpu_small(&["run", "--frames", "2", "--png", &s(&p)]).ok();
    let b = fs::read(&p).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[8..16], b"\0\0\0\x0dIHDR", "IHDR first, 13 bytes");
    let be = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (320, 200), "IHDR width x height");
    assert_eq!((b[24], b[25]), (8, 6), "8-bit RGBA");
    assert_eq!(
        &b[b.len() - 12..b.len() - 4],
        b"\0\0\0\0IEND",
        "ends with IEND"
    );
    // It decodes, and shows a rendered frame, not a blank one.
    let dec = png::Decoder::new(std::io::Cursor::new(&b));
    let mut r = dec.read_info().unwrap();
    let mut px = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut px).unwrap();
    assert_eq!((info.width, info.height), (320, 200));
    let px = &px[..info.buffer_size()];
    assert!(
        px.chunks(4).any(|p| p != &px[..4]),
        "the frame is not one colour"
    );
}

#[test]
fn dump_then_restore_equals_run() {
    let d = TempDir::new("restore");
    let snap = s(&d.path("k2.vgm"));
    vgpu_small(&["dump", "--frames", "2", "--out", &snap]).ok();
    let got = vgpu(&["restore", &snap, "--frames", "5", "--json"])
        .ok()
        .json();
    let want = run_json(5, 1);
    assert_eq!(got, want, "checksums, final checksum, RAM and gmem digests");
    // Restoring to exactly the frames already rendered is fine, and shows them.
    let got = vgpu(&["restore", &snap, "--frames", "2", "--json"])
        .ok()
        .json();
    assert_eq!(got["checksums"], run_json(2, 1)["checksums"]);
}

fn engine_summary(file: &str) -> String {
    let v = vgpu(&["inspect", file, "--json"]).ok().json();
    v["device"]["summary"]["engine"]
        .as_str()
        .unwrap_or_else(|| panic!("no engine summary: {v}"))
        .to_string()
}

fn commands_executed(engine: &str) -> u64 {
    let words: Vec<&str> = engine.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "commands")
        .unwrap_or_else(|| panic!("{engine}"));
    words[i - 1].parse().unwrap()
}

#[test]
fn dump_mid_batch_then_restore_equals_run() {
    let d = TempDir::new("midbatch");
    // Commands the device executed for two whole frames.
    let at_frame = s(&d.path("k2.vgm"));
    vgpu_small(&["dump", "--frames", "2", "--out", &at_frame]).ok();
    let engine = engine_summary(&at_frame);
    assert!(engine.starts_with("not in a batch"), "{engine}");
    let c = commands_executed(&engine) + 5;
    // Stop five commands later: inside frame 3's batch.
    let mid = s(&d.path("mid.vgm"));
    vgpu_small(&[
        "dump",
        "--frames",
        "5",
        "--at-command",
        &c.to_string(),
        "--out",
        &mid,
    ])
    .ok();
    let engine = engine_summary(&mid);
    assert!(engine.starts_with("in batch "), "{engine}");
    assert_eq!(commands_executed(&engine), c, "{engine}");
    let text = vgpu(&["inspect", &mid]).ok();
    assert!(text.stdout.contains("engine: in batch "), "{}", text.stdout);
    let got = vgpu(&["restore", &mid, "--frames", "5", "--json"])
        .ok()
        .json();
    assert_eq!(got, run_json(5, 1));
}

/// Every section's digest as `inspect` shows it is SHA-256 over the section's header and
/// payload in the context bytes.
fn check_section_digests(v: &Value, context: &[u8]) {
    let sections = v["device"]["sections"].as_array().unwrap();
    let names: Vec<&str> = sections
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in ["GMEM", "MMIO", "GTT", "ENGINE", "IRQ", "DISPLAY"] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert_eq!(names.last(), Some(&"END"));
    for s in &sections[..sections.len() - 1] {
        let off = s["offset"].as_u64().unwrap() as usize;
        let len = s["length"].as_u64().unwrap() as usize;
        let digest = Sha256::digest(&context[off..off + 16 + len]);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s["sha256"].as_str().unwrap(), hex, "{}", s["name"]);
        // And the section's digest is stored right after it.
        assert!(context[off + 16 + len..off + 48 + len] == digest[..]);
    }
}

#[test]
fn device_only_dump_inspects_with_verified_sections() {
    let f = fixture();
    let d = TempDir::new("devonly");
    let ctx = d.file("a.ctx", &f.context);
    assert_eq!(&f.context[..8], b"VGPUCTX\0");
    let text = vgpu(&["inspect", &ctx]).ok();
    assert!(
        text.stdout
            .contains("device context: format 1.0, mdev type vgpu-64"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("sections (digests verified)"));
    assert!(
        !text.stdout.contains("stream:"),
        "no stream in a device-only file"
    );
    for name in ["GMEM", "MMIO", "GTT", "ENGINE", "IRQ", "DISPLAY", "END"] {
        assert!(
            text.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(name)),
            "{name}:\n{}",
            text.stdout
        );
    }
    let v = vgpu(&["inspect", &ctx, "--json"]).ok().json();
    assert_eq!(v["bytes"].as_u64(), Some(f.context.len() as u64));
    assert_eq!(v["device"]["bytes"].as_u64(), Some(f.context.len() as u64));
    assert_eq!(v["device"]["mdev_type"], "vgpu-64");
    assert!(
        v.get("stream").is_none() && v.get("config").is_none(),
        "{v}"
    );
    check_section_digests(&v, &f.context);
    // The same context is what a full snapshot carries.
    let snap = d.file("a.vgm", &f.snapshot);
    let vs = vgpu(&["inspect", &snap, "--json"]).ok().json();
    assert_eq!(vs["device"]["sections"], v["device"]["sections"]);
    // There is no config space to show.
    vgpu(&["inspect", &ctx, "--config"]).error_naming(&["no config space"]);
}

#[test]
fn inspect_a_snapshot_as_text_json_and_config() {
    let f = fixture();
    let d = TempDir::new("inspect");
    let snap = d.file("a.vgm", &f.snapshot);
    let text = vgpu(&["inspect", &snap]).ok().stdout;
    assert!(
        text.contains("stream: format 1.0, mdev type vgpu-64, guest RAM 64 MiB"),
        "{text}"
    );
    assert!(text.contains("stream digest verified"), "{text}");
    assert!(text.contains("sections (digests verified)"), "{text}");
    assert!(!text.contains("00: 86 80"), "config only with --config");

    let v = vgpu(&["inspect", &snap, "--json"]).ok().json();
    assert_eq!(v["stream"]["mdev_type"], "vgpu-64");
    assert_eq!(v["stream"]["ram_size"].as_u64(), Some(64 << 20));
    assert_eq!(v["stream"]["digest"], "verified");
    assert!(v["stream"]["ram_pages"].as_u64().unwrap() > 0);
    assert_eq!(v["bytes"].as_u64(), Some(f.snapshot.len() as u64));
    assert_eq!(v["device"]["bytes"].as_u64(), Some(f.context.len() as u64));
    assert!(v["config"]["lspci"]
        .as_str()
        .unwrap()
        .starts_with("00: 86 80 "));
    let engine = v["device"]["summary"]["engine"].as_str().unwrap();
    assert!(engine.contains("seqno 2"), "two frames: {engine}");

    let cfg = vgpu(&["inspect", &snap, "--config"]).ok().stdout;
    let hex: Vec<&str> = cfg
        .lines()
        .filter(|l| {
            l.len() == 3 + 16 * 3
                && l.as_bytes()[2] == b':'
                && l[..2].bytes().all(|b| b.is_ascii_hexdigit())
                && l[3..]
                    .split(' ')
                    .skip(1)
                    .all(|x| x.len() == 2 && x.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    assert!(hex.len() >= 16, "{cfg}");
    for (i, l) in hex.iter().take(16).enumerate() {
        assert!(l.starts_with(&format!("{:02x}: ", i * 16)), "{l}");
    }
    assert!(
        hex[0].starts_with("00: 86 80 "),
        "Intel vendor ID: {}",
        hex[0]
    );
    for want in [
        "Region 0: Memory at",
        "Region 2: Memory at",
        "MSI-X: Enable+",
        "Vector table: BAR=0",
        "Capabilities:",
    ] {
        assert!(cfg.contains(want), "{want}:\n{cfg}");
    }
}

#[test]
fn snapshot_demo_verifies() {
    let d = TempDir::new("sdemo");
    let out = vgpu_small(&[
        "snapshot-demo",
        "--frames",
        "5",
        "--dump-at",
        "2",
        "--dir",
        &s(&d.0),
    ])
    .ok();
    assert!(
        out.stdout.contains("VERIFIED: the restored run"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("mid-batch"), "{}", out.stdout);
    for f in ["snapshot.vgm", "before.png", "after.png"] {
        assert!(d.path(f).exists(), "{f}");
    }
}

#[test]
fn live_demo_verifies() {
    let d = TempDir::new("demo");
    let out = vgpu_small(&[
        "demo",
        "--frames",
        "6",
        "--migrate-at",
        "2",
        "--dir",
        &s(&d.0),
    ])
    .ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("VERIFIED:")),
        "{}",
        out.stdout
    );
    for f in ["before.png", "after.png"] {
        let b = fs::read(d.path(f)).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{f}");
    }
    // JSON, and the v2 protocol: the final checksum is a plain run's.
    let v = vgpu_small(&[
        "demo",
        "--frames",
        "6",
        "--migrate-at",
        "2",
        "--protocol",
        "v2",
        "--json",
        "--dir",
        &s(&d.0),
    ])
    .ok()
    .json();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["migration"]["protocol"], "v2", "{v}");
    assert_eq!(v["final_checksum"], run_json(6, 1)["final_checksum"]);
    assert!(v["downtime_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn live_demo_without_dma_tracking_does_not_verify() {
    // The negative control: pages the device writes by DMA during pre-copy are never
    // re-sent, so the target stalls or computes other frames. (`live_demo_verifies` runs
    // the same migration with tracking on.)
    let d = TempDir::new("demo-off");
    let out = vgpu_small(&[
        "demo",
        "--frames",
        "6",
        "--migrate-at",
        "2",
        "--dirty-tracking",
        "off",
        "--dir",
        &s(&d.0),
    ]);
    assert!(
        out.code.is_some_and(|c| c != 0 && c != 101),
        "exit {:?}\n{}\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!out.stdout.contains("VERIFIED:"), "{}", out.stdout);
    // The target's error (its stderr is the demo's) and the demo's own: the last line is
    // the demo's verdict.
    let last = out
        .stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(last.starts_with("error: "), "{}", out.stderr);
    assert!(
        ["differs", "stalled", "failed"]
            .iter()
            .any(|w| last.contains(w)),
        "{last}"
    );
}

// ---------------------------------------------------------------------------------------
// Bad input

/// `restore` and `inspect` on `bytes` both fail with one error line naming `words`.
fn both_refuse(d: &TempDir, name: &str, bytes: &[u8], words: &[&str]) {
    let p = d.file(name, bytes);
    vgpu(&["restore", &p, "--frames", "4"]).error_naming(words);
    vgpu(&["inspect", &p]).error_naming(words);
}

#[test]
fn truncated_files_are_refused() {
    let f = &fixture().snapshot;
    let d = TempDir::new("trunc");
    let (ram, _) = first(f, RAM_PAGES);
    let (dev, _) = first(f, DEVICE_DATA);
    let (end, _) = first(f, END);
    // inside the header, inside a RAM record, inside device data, before the end record
    for n in [20, ram + 8 + 100, dev + 8 + 4096, end] {
        let msg = format!("stream truncated at byte {n}");
        both_refuse(&d, "t.vgm", &f[..n], &[&msg]);
    }
    // An empty file is no stream, and no device context either.
    let p = d.file("empty.vgm", &[]);
    vgpu(&["restore", &p, "--frames", "4"]).error_naming(&["stream truncated at byte 0"]);
    vgpu(&["inspect", &p]).error_naming(&["empty.vgm", "stream ends"]);
}

#[test]
fn bit_flipped_files_are_refused() {
    let f = &fixture().snapshot;
    let l = layout(f);
    let (ram, _) = first(f, RAM_PAGES);
    let dev: Vec<_> = l.iter().filter(|r| r.1 == DEVICE_DATA).collect();
    let (dev_end, _) = first(f, DEVICE_END);
    let (config, clen) = first(f, CONFIG);
    let (vcpu, _) = first(f, VCPU);
    let (end, _) = first(f, END);
    let positions = [
        0,                                                    // magic
        8,                                                    // major version
        19,                                                   // RAM size
        33,                                                   // mdev type name
        ram + 1,                                              // record kind
        ram + 8 + 2,                                          // RAM address
        ram + 8 + 8 + 300,                                    // RAM page
        dev[0].0 + 5,                                         // device chunk length
        dev[0].0 + 8 + 3,                                     // device context header
        dev[0].0 + 8 + 100,                                   // graphics memory
        dev[dev.len() - 1].0 + 8 + dev[dev.len() - 1].2 - 20, // end section digest
        dev_end,                                              // DEVICE_END kind
        config + 8 + clen / 2,                                // config space
        vcpu + 8 + 4,                                         // vCPU state
        end + 4,                                              // END length
        end + 8 + 16,                                         // stream digest
    ];
    // Two workers: each run reads up to the whole file.
    std::thread::scope(|scope| {
        for w in 0..2 {
            let positions = &positions;
            scope.spawn(move || {
                let d = TempDir::new("flip");
                for (i, &pos) in positions.iter().enumerate().skip(w).step_by(2) {
                    let mut b = f.clone();
                    b[pos] ^= [0x01, 0x80, 0xff][i % 3];
                    let p = d.file("f.vgm", &b);
                    for args in [vec!["restore", &p, "--frames", "4"], vec!["inspect", &p]] {
                        let out = vgpu(&args);
                        let line = out.one_error_line();
                        // Names what is wrong, not only that something is.
                        assert!(line.len() > "error: ".len() + 20, "byte {pos}: {line}");
                    }
                }
            });
        }
    });
}

#[test]
fn wrong_stream_version_is_refused() {
    let mut b = fixture().snapshot.clone();
    b[8] = 2;
    both_refuse(
        &TempDir::new("version"),
        "v.vgm",
        &b,
        &["stream format version 2.0 is not supported"],
    );
}

#[test]
fn wrong_mdev_type_is_refused() {
    // The header says vgpu-512, the device context vgpu-64: re-encoded with a correct
    // stream digest, so only the type check can catch it.
    let f = &fixture().snapshot;
    let mut r = StreamReader::new(&f[..], TrailerCheck::Enforce).unwrap();
    let h = Header {
        mdev_type: "vgpu-512".into(),
        ..r.header().clone()
    };
    let mut w = StreamWriter::new(Vec::new(), &h).unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        match rec {
            Record::RamPages { gpa, data } => w.ram_pages(gpa, &data),
            Record::RamZero { gpa, pages } => w.ram_zero(gpa, pages),
            Record::DeviceData(c) => w.device_data(&c),
            Record::DeviceEnd => w.device_end(),
            Record::Config(c) => w.config(&c),
            Record::Vcpu(v) => w.vcpu(&v),
            Record::Sync { seq } => w.sync(seq),
            Record::Switchover { stopped_ns } => w.switchover(stopped_ns),
        }
        .unwrap();
    }
    let bytes = w.finish().unwrap().0;
    both_refuse(
        &TempDir::new("type"),
        "t.vgm",
        &bytes,
        &["vgpu-512", "vgpu-64"],
    );
}

#[test]
fn oversized_record_length_is_refused() {
    let mut b = fixture().snapshot.clone();
    let (ram, _) = first(&b, RAM_PAGES);
    b[ram + 4..ram + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    both_refuse(
        &TempDir::new("len"),
        "l.vgm",
        &b,
        &["length 4294967295", "16777216-byte cap"],
    );
}

#[test]
fn unknown_record_kind_is_refused() {
    let mut b = fixture().snapshot.clone();
    let (ram, _) = first(&b, RAM_PAGES);
    b[ram..ram + 4].copy_from_slice(&0x42u32.to_le_bytes());
    both_refuse(
        &TempDir::new("kind"),
        "k.vgm",
        &b,
        &[&format!("unknown record kind 0x42 at byte {ram}")],
    );
}

#[test]
fn bad_device_only_contexts_are_refused() {
    let ctx = &fixture().context;
    let d = TempDir::new("badctx");
    // A flipped byte in graphics memory, and one in the last (display) section.
    for pos in [5000, ctx.len() - 60] {
        let mut b = ctx.clone();
        b[pos] ^= 0x10;
        let p = d.file("f.ctx", &b);
        vgpu(&["inspect", &p]).error_naming(&["device context: byte", "digest"]);
    }
    // The end cut off: inside the end section, and the whole end section.
    for cut in [1, 48] {
        let p = d.file("t.ctx", &ctx[..ctx.len() - cut]);
        vgpu(&["inspect", &p]).error_naming(&["device context: byte", "stream ends"]);
    }
    // `restore` takes snapshots only.
    let p = d.file("ok.ctx", ctx);
    vgpu(&["restore", &p, "--frames", "4"]).error_naming(&["not a vgpu-migrate stream"]);
}

#[test]
fn a_nonexistent_file_is_refused() {
    let d = TempDir::new("missing");
    let p = s(&d.path("nothing-here.vgm"));
    for args in [vec!["restore", &p, "--frames", "4"], vec!["inspect", &p]] {
        vgpu(&args).error_naming(&["cannot open", "nothing-here.vgm"]);
    }
}

#[test]
fn frames_below_the_snapshot_are_refused() {
    let d = TempDir::new("frames");
    let p = d.file("a.vgm", &fixture().snapshot);
    vgpu(&["restore", &p, "--frames", "1"]).error_naming(&["--frames 1", "2 frames"]);
    vgpu(&["restore", &p, "--frames", "0"]).error_naming(&["--frames 0"]);
}

#[test]
fn run_on_kvm_prints_the_same_checksums_as_the_simulated_vcpu() {
    if let Err(e) = vmm::kvm::available() {
        println!("skipped: KVM is not usable here: {e}");
        return;
    }
    let sim = run_json(3, 9);
    let kvm = vgpu_small(&[
        "run", "--frames", "3", "--seed", "9", "--vcpu", "kvm", "--json",
    ])
    .ok()
    .json();
    assert_eq!(sim["vcpu"], "sim");
    assert_eq!(kvm["vcpu"], "kvm", "the command says which vCPU it used");
    assert_eq!(kvm["checksums"], sim["checksums"]);
    assert_eq!(kvm["gmem_digest"], sim["gmem_digest"]);
    assert!(kvm["kvm"]["mmio_exits"].as_u64().unwrap() > 0);
}
