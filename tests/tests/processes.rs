//! Two real processes: `vgpu-migrate incoming` and `vgpu-migrate migrate`, over loopback
//! TCP. A migration verifies on the target and ends with a plain run's checksum; a failed
//! migration or an incompatible target leaves the source finishing the workload itself.
//!
//! The binary is the workspace's `vgpu-migrate` ([`vgpu_migrate_tests::process`]). Every
//! child is killed if a test fails, and every wait has a time limit; the target listens on a
//! port of its own choosing and reports it.

use std::sync::OnceLock;

use serde_json::Value;
use vgpu_migrate_tests::process::{self, Out, Proc};

const SMALL: [&str; 10] = vgpu_migrate_tests::SMALL_ARGS;
const FRAMES: &str = "6";
const MIGRATE_AT: &str = "2";

/// A finished process's stdout as JSON.
fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", out.what, out.stdout))
}

/// `incoming` on a port of its choosing; its URL.
fn incoming(mdev_type: &str) -> (Proc, String) {
    process::incoming(&["--type", mdev_type, "--json"])
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
        let v = json(&Proc::start("run", &args).wait().ok());
        assert_eq!(v["checksums"].as_array().map(Vec::len), Some(6), "{v}");
        v
    })
}

fn migrate_and_verify(protocol: &str, extra: &[&str]) {
    let (target, url) = incoming("vgpu-64");
    let mut args = vec!["--protocol", protocol];
    args.extend(extra);
    let source = json(&migrate(&url, &args).wait().ok());
    let target = json(&target.wait().ok());
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
    migrate_and_verify("region", &[]);
}

#[test]
fn migrate_between_two_processes_over_v2() {
    migrate_and_verify("v2", &[]);
}

#[test]
fn migrate_between_two_processes_with_ram_channels() {
    migrate_and_verify("v2", &["--channels", "2"]);
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
    let v = json(&source);
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
    let v = json(&source);
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
