//! Every class of bad input: one `error:` line naming what is wrong, a non-zero exit,
//! never a panic.

use super::*;

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
fn bench_options_that_do_not_go_together_are_refused_before_any_run() {
    vgpu(&["bench", "--what", "context", "--vcpu", "kvm"]).error_naming(&[
        "--vcpu kvm goes with --what migration or pipeline",
        "context",
    ]);
    vgpu(&["bench", "--what", "context", "--peer", "qemu"])
        .error_naming(&["--peer qemu goes with --what pipeline", "context"]);
    vgpu(&["bench", "--what", "pipeline", "--peer", "xen"]).error_naming(&["--peer 'xen'"]);
    vgpu(&["bench", "--what", "render", "--timeline", "/tmp/never.png"])
        .error_naming(&["--timeline goes with", "render"]);
    vgpu(&["bench", "--what", "everything"]).error_naming(&["--what 'everything' is not"]);
    vgpu(&["bench", "--what", "context", "--channels", "2"])
        .error_naming(&["--channels goes with --what migration or pipeline"]);
    vgpu(&["bench", "--what", "pipeline", "--channels", "9"])
        .error_naming(&["--channels 9: at most 8 RAM channels"]);
    vgpu(&[
        "migrate",
        "--to",
        "tcp://127.0.0.1:9",
        "--frames",
        "4",
        "--migrate-at",
        "2",
        "--channels",
        "9",
    ])
    .error_naming(&["--channels 9: at most 8 RAM channels"]);
}
