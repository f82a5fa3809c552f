//! Every subcommand's output, run as a user would.

use super::*;

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
