//! `soak`: guests migrated back and forth between two processes, several at once, each
//! with its own vGPU instance from one parent; the checksum log is checked after every
//! round trip. README gives a long run.

use serde_json::Value;
use vgpu_migrate_tests::process::{Out, Proc};

const SMALL: [&str; 10] = vgpu_migrate_tests::SMALL_ARGS;

fn soak(extra: &[&str]) -> Out {
    let mut args = vec!["soak"];
    args.extend(SMALL);
    args.extend(extra);
    Proc::start("soak", &args).wait()
}

#[test]
fn two_guests_make_round_trips_between_two_processes_and_verify() {
    let out = soak(&["--round-trips", "3", "--vms", "2", "--json"]).ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["migrations"], 12, "{v}");
    // vgpu-64 on the default parent: 32 instances; two guests take two; all come back.
    assert_eq!(
        v["available_instances"],
        serde_json::json!([32, 30, 32]),
        "{v}"
    );
    for f in v["frames"].as_array().expect("frames") {
        assert!(f.as_u64().is_some_and(|f| f >= 3 + 2), "{v}");
    }
}

#[test]
fn both_protocols_soak() {
    soak(&["--round-trips", "2", "--protocol", "region"]).ok();
}

// The soak's checks can fail: without DMA tracking the guest's DMA writes are lost in
// migration and the checksum log parts from the reference.
#[test]
fn without_dma_tracking_the_soak_fails() {
    let out = soak(&["--round-trips", "3", "--dirty-tracking", "off"]);
    let line = out.one_error_line();
    assert!(line.contains("differs"), "{line}");
}

// The parent offers four vgpu-512 instances: a fifth guest is refused before anything
// moves.
#[test]
fn a_type_with_no_instance_left_is_refused() {
    let out = soak(&["--type", "vgpu-512", "--vms", "5", "--round-trips", "1"]);
    let line = out.one_error_line();
    assert!(
        line.contains("guest 5") && line.contains("no available instances of mdev type 'vgpu-512'"),
        "{line}"
    );
}
