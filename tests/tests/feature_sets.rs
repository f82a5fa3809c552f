//! Devices with fewer migration features (include/uapi/linux/vfio.h: STOP_COPY is the only
//! mandatory one): the same VMM migrates each feature set over v2 and the result verifies
//! against a run that never migrated. Without PRE_COPY, device data moves in stop-copy
//! alone; without P2P, the plain states are walked.

use std::net::TcpListener;
use std::thread::JoinHandle;

use vfio_bindings::bindings::vfio::{
    VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
};
use vgpu_migrate_tests::{outcome, quiet, reference, small_params};
use vgpu_platform::VgpuVm;
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

const SEED: u64 = 5;
const FRAMES: u64 = 6;
const OUT_OF_REACH: u64 = 100_000;

const SETS: [(&str, u32); 4] = [
    ("stop-copy", VFIO_MIGRATION_STOP_COPY),
    (
        "stop-copy,p2p",
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
    ),
    (
        "stop-copy,pre-copy",
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
    ),
    (
        "stop-copy,p2p,pre-copy",
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
    ),
];

fn spawn_target(
    tracking: DirtyTracking,
    features: u32,
) -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type: "vgpu-64".into(),
            irq_sink_base: 4000,
            factory: vgpu_platform::factory_with(tracking, features),
            fail_at: None,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|(vm, _, _)| vm)
            .map_err(|e| e.to_string())
    });
    (url, h)
}

fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

#[test]
fn the_feature_sets_parse_as_the_cli_takes_them() {
    for (name, bits) in SETS {
        assert_eq!(vgpu_platform::parse_migration_features(name), Ok(bits));
    }
    assert!(vgpu_platform::parse_migration_features("p2p,pre-copy").is_err());
    assert!(vgpu_platform::parse_migration_features("stop-copy,dirty").is_err());
}

// The full matrix: both protocols x every feature set x shadow-pt/pinned. Over the v1
// region a device without PRE_COPY still accepts 011 and reports no data there (vfio.h:
// "vendor drivers must support the pre-copy state even for implementations where no data
// is provided").
#[test]
fn every_feature_set_migrates_over_both_protocols_with_both_tracking_modes() {
    for protocol in [Protocol::V2, Protocol::Region] {
        every_feature_set_migrates(protocol);
    }
}

fn every_feature_set_migrates(protocol: Protocol) {
    for (name, features) in SETS {
        for tracking in [DirtyTracking::ShadowPt, DirtyTracking::Pinned] {
            let name = format!("{}/{name}", protocol.name());
            let (url, target) = spawn_target(tracking, features);
            let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
            cfg.ram_size = 64 << 20;
            cfg.factory = vgpu_platform::factory_with(tracking, features);
            let mut src = Vm::new(&cfg).unwrap();
            src.boot(&small_params(OUT_OF_REACH, SEED)).unwrap();
            src.run(StopAt::Frame(2)).unwrap();
            // Without PRE_COPY all 64 MiB of graphics memory move in the downtime; how
            // long that takes depends on the machine, so the limit is not what this tests.
            let o = SourceOptions {
                protocol,
                downtime_limit: std::time::Duration::from_secs(600),
                ..SourceOptions::default()
            };
            let res = migration::migrate(&mut src, &url, &o, &mut |_| {});
            let dst = target.join().unwrap();
            let (rep, _) = res.unwrap_or_else(|e| panic!("{name}/{tracking:?}: {e}"));
            let mut dst = dst.unwrap_or_else(|e| panic!("{name}/{tracking:?}: target: {e}"));
            // Over v1 the VMM always walks 011; the device decides whether data comes.
            let precopy = features & VFIO_MIGRATION_PRE_COPY != 0;
            if protocol == Protocol::V2 {
                assert_eq!(
                    rep.device_precopy, precopy,
                    "{name}: the report says whether the device had pre-copy"
                );
            }
            if !precopy {
                assert_eq!(
                    rep.bytes.device_precopy, 0,
                    "{name}: no device data before the stop"
                );
            } else {
                assert!(rep.bytes.device_precopy > 0, "{name}: device pre-copy");
            }
            assert!(rep.bytes.device_stopcopy > 0, "{name}: device stop-copy");
            let frames = submitted(&mut dst).max(FRAMES);
            dst.set_frame_limit(frames).unwrap();
            dst.run(StopAt::Done).unwrap();
            assert_eq!(
                outcome(&mut dst, frames),
                reference("vgpu-64", frames, SEED),
                "{name}/{tracking:?}"
            );
        }
    }
}

#[test]
fn a_device_without_stop_copy_cannot_be_created() {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    cfg.factory = vgpu_platform::factory_with(DirtyTracking::ShadowPt, VFIO_MIGRATION_P2P);
    let e = Vm::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("STOP_COPY is mandatory"), "{e}");
}
