//! `incoming --ram-mib N` makes its VM and faults in its RAM before it listens, reports the
//! time as `prefault_ms` outside the migration's figures, and refuses a guest of another
//! size with a clear error.

use vgpu_migrate_tests::process::{self, Proc};
use vgpu_migrate_tests::SMALL_ARGS;

fn migrate_args(url: &str) -> Vec<&str> {
    let mut args = vec!["migrate", "--to", url, "--frames", "6", "--migrate-at", "3"];
    args.extend(SMALL_ARGS);
    args
}

#[test]
fn a_prepared_target_reports_its_prefault_and_verifies() {
    // SMALL_ARGS give the guest 64 MiB.
    let (target, url) = process::incoming(&["--type", "vgpu-64", "--ram-mib", "64", "--json"]);
    let src = Proc::start("migrate", &migrate_args(&url)).wait().ok();
    let out = target.wait().ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("incoming --json");
    assert_eq!(v["verified"], true, "{v}");
    assert!(
        v["prefault_ms"].as_f64().is_some_and(|p| p > 0.0),
        "prefault_ms: {v}"
    );
    assert!(src.stdout.contains("migrated:"), "{}", src.stdout);
}

#[test]
fn a_prepared_target_refuses_a_guest_of_another_size() {
    let (target, url) = process::incoming(&["--type", "vgpu-64", "--ram-mib", "32"]);
    let src = Proc::start("migrate", &migrate_args(&url)).wait();
    let t = target.wait();
    let line = t.one_error_line();
    assert!(
        line.contains("64 MiB of RAM") && line.contains("prepared 32 MiB"),
        "{line}"
    );
    // The source was told, kept its guest, and finished it equal to the reference.
    let s = src.one_error_line();
    assert!(s.contains("migration failed"), "{s}");
    assert!(s.contains("checksum log equals the reference"), "{s}");
}

#[test]
fn a_bad_ram_size_is_a_usage_error() {
    let out = Proc::start(
        "incoming",
        &[
            "incoming",
            "--listen",
            "tcp://127.0.0.1:0",
            "--ram-mib",
            "18446744073709551615",
        ],
    )
    .wait();
    let line = out.one_error_line();
    assert!(line.contains("--ram-mib"), "{line}");
}
