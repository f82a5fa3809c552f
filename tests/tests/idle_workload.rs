//! `migrate --workload idle`: a guest that runs no vGPU workload, and a device that need not
//! be a vGPU. The serial device (no PRE_COPY, no DMA logging) served by `vgpu-migrate
//! serve` in a device process of its own on each side moves with v2 over vfio-user; the
//! source reports how the device moved and compares the digest of its device's full state
//! with the target's.

use vgpu_migrate_tests::process::{self, DeviceProcess, Proc};

fn migrate(url: &str, extra: &[&str]) -> process::Out {
    let mut args = vec![
        "migrate",
        "--to",
        url,
        "--workload",
        "idle",
        "--ram-mib",
        "64",
    ];
    args.extend(extra);
    Proc::start("migrate", &args).wait()
}

#[test]
fn a_serial_device_process_migrates_with_an_idle_guest_over_v2() {
    // Without PRE_COPY (and the serial device never offers DMA logging).
    let features = ["--migration-features", "stop-copy,p2p"];
    let src_dev = DeviceProcess::start("serial-src", "serial-16", &features);
    let dst_dev = DeviceProcess::start("serial-dst", "serial-16", &features);
    let (dst_device, src_device) = (dst_dev.device_arg(), src_dev.device_arg());
    let (target, url) = process::incoming(&[
        "--type",
        "serial-16",
        "--workload",
        "idle",
        "--device",
        &dst_device,
        "--json",
    ]);
    let src = migrate(
        &url,
        &[
            "--type",
            "serial-16",
            "--device",
            &src_device,
            "--protocol",
            "v2",
        ],
    )
    .ok();
    let t = target.wait().ok();
    let v: serde_json::Value = serde_json::from_str(&t.stdout).expect("incoming --json");
    let digest = v["device_state_sha256"].as_str().expect("a digest");
    assert_eq!(digest.len(), 64, "{v}");
    assert!(src.stdout.contains("verified: true"), "{}", src.stdout);
    // The device offers neither PRE_COPY nor DMA logging, and the source says so: its
    // state moved in stop-copy alone, and all backed guest RAM in the final pass.
    assert!(
        src.stdout.contains("no PRE_COPY") && src.stdout.contains("no DMA logging"),
        "{}",
        src.stdout
    );
}

#[test]
fn an_in_process_vgpu_with_an_idle_guest_migrates_over_the_v1_region() {
    let (target, url) = process::incoming(&["--type", "vgpu-64", "--workload", "idle"]);
    let src = migrate(&url, &["--type", "vgpu-64", "--protocol", "region"]).ok();
    let t = target.wait().ok();
    assert!(t.stdout.starts_with("device state sha256 "), "{}", t.stdout);
    assert!(src.stdout.contains("verified: true"), "{}", src.stdout);
    assert!(
        src.stdout.contains("pre-copy and stop-copy") && src.stdout.contains("dirty log"),
        "{}",
        src.stdout
    );
}

#[test]
fn the_target_must_run_the_same_device() {
    // A target that builds a vGPU refuses the serial device's stream; the source's device
    // runs on and the source says the migration failed.
    let src_dev = DeviceProcess::start("serial-alone", "serial-16", &[]);
    let src_device = src_dev.device_arg();
    let (target, url) = process::incoming(&["--type", "vgpu-64", "--workload", "idle"]);
    let src = migrate(
        &url,
        &[
            "--type",
            "serial-16",
            "--device",
            &src_device,
            "--protocol",
            "v2",
        ],
    );
    let line = src.one_error_line();
    assert!(line.contains("migration failed"), "{line}");
    let t = target.wait();
    let tl = t.one_error_line();
    assert!(tl.contains("serial-16"), "{tl}");
}

#[test]
fn an_idle_target_never_passes_a_source_that_ran_the_vgpu_workload() {
    let (target, url) = process::incoming(&["--type", "vgpu-64", "--workload", "idle"]);
    let mut args = vec![
        "migrate",
        "--to",
        &url,
        "--frames",
        "4",
        "--migrate-at",
        "2",
    ];
    args.extend(vgpu_migrate_tests::SMALL_ARGS);
    let src = Proc::start("migrate", &args).wait();
    let line = src.one_error_line();
    assert!(
        line.contains("differs") && line.contains("--workload idle"),
        "{line}"
    );
    target.wait().ok();
}
