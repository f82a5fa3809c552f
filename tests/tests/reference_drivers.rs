//! The VMM against devices that behave as the reference drivers do, not as our vGPU does
//! (see `vgpu_migrate_tests::doubles`): mlx5's `ENOMSG` while its next chunk is not staged,
//! a failed arc that leaves ERROR (vfio.h; the VMM resets through the reset path, as QEMU
//! falls back to `VFIO_DEVICE_RESET`), and mtty's failed arc that keeps the last state
//! reached (the VMM walks back and the guest loses nothing).

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use mdev_core::MigState;
use vgpu_migrate_tests::doubles::{Behaviour, DoubleFactory, OnFailure};
use vgpu_migrate_tests::{outcome, quiet, reference, small_params};
use vgpu_platform::VgpuVm;
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

const SEED: u64 = 9;
const FRAMES: u64 = 6;
const OUT_OF_REACH: u64 = 100_000;

fn spawn_target() -> (String, JoinHandle<Result<Vm, String>>) {
    spawn_target_with(vgpu_platform::factory(DirtyTracking::ShadowPt))
}

/// A source VM whose device is the double, booted and two frames in.
fn source(double: &DoubleFactory) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    // A clone shares the double's record.
    cfg.factory = Arc::new(double.clone());
    let mut vm = Vm::new(&cfg).unwrap();
    vm.boot(&small_params(OUT_OF_REACH, SEED)).unwrap();
    vm.run(StopAt::Frame(2)).unwrap();
    vm
}

fn v2() -> SourceOptions {
    SourceOptions {
        protocol: Protocol::V2,
        ..SourceOptions::default()
    }
}

fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

fn finish_and_check(vm: &mut Vm, what: &str) {
    let frames = submitted(vm).max(FRAMES);
    vm.set_frame_limit(frames).unwrap();
    vm.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(vm, frames),
        reference("vgpu-64", frames, SEED),
        "{what}"
    );
}

// vfio.h (data_fd, VFIO_MIG_GET_PRECOPY_INFO): ENOMSG in PRE_COPY means "nothing now";
// mlx5 answers it while its next chunk is still being staged. The VMM goes on to the next
// round and the migration verifies.
#[test]
fn mlx5_style_enomsg_in_precopy_is_nothing_for_now() {
    let double = DoubleFactory::new(
        vgpu_platform::factory(DirtyTracking::ShadowPt),
        Behaviour {
            enomsg_every: Some(2),
            ..Behaviour::default()
        },
    );
    let (url, target) = spawn_target();
    let mut src = source(&double);
    let res = migration::migrate(&mut src, &url, &v2(), &mut |_| {});
    let dst = target.join().unwrap();
    res.unwrap();
    assert!(
        double.record().spurious_enomsg > 0,
        "the double answered ENOMSG"
    );
    finish_and_check(&mut dst.unwrap(), "after spurious ENOMSG");
}

// vfio.h: a failed arc leaves ERROR, from which only VFIO_DEVICE_RESET leads out. The
// source VMM reads the state, resets the device with its config space replayed (QEMU's
// fallback), says so, and the device runs again.
#[test]
fn an_arc_failing_into_error_is_recovered_by_a_reset() {
    for (protocol, fail_into) in [
        (Protocol::V2, MigState::PreCopy),
        (Protocol::V2, MigState::StopCopy),
        // vfio.h v1: the VMM reads device_state back and, on ERROR (110), resets (QEMU's
        // v1 path).
        (Protocol::Region, MigState::PreCopy),
        (Protocol::Region, MigState::StopCopy),
    ] {
        let opts = SourceOptions {
            protocol,
            ..SourceOptions::default()
        };
        let double = DoubleFactory::new(
            vgpu_platform::factory(DirtyTracking::ShadowPt),
            Behaviour {
                fail_into: Some(fail_into),
                on_failure: OnFailure::Error,
                ..Behaviour::default()
            },
        );
        let (url, target) = spawn_target();
        let mut src = source(&double);
        let bars = src.bars();
        let routes = src.routes();
        let e = migration::migrate(&mut src, &url, &opts, &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("{protocol:?}/{fail_into}: the migration should fail"))
            .to_string();
        assert!(
            target.join().unwrap().is_err(),
            "{protocol:?}/{fail_into}: target discards"
        );
        assert!(e.contains("injected"), "{protocol:?}/{fail_into}: {e}");
        assert!(
            e.contains("was left in ERROR and was reset"),
            "{protocol:?}/{fail_into}: {e}"
        );
        let rec = double.record();
        assert_eq!(
            (rec.failed_arcs, rec.resets),
            (1, 1),
            "{protocol:?}/{fail_into}"
        );
        let mig = src.device().migration().unwrap();
        assert_eq!(
            mig.mig_state(),
            MigState::Running,
            "{protocol:?}/{fail_into}"
        );
        assert_eq!(
            src.bars(),
            bars,
            "{protocol:?}/{fail_into}: the BAR map survives the reset"
        );
        assert_eq!(
            src.routes(),
            routes,
            "{protocol:?}/{fail_into}: interrupt routing survives"
        );
    }
}

// samples/vfio-mdev/mtty.c: a failed arc keeps the last state reached. The VMM walks back
// to RUNNING from there without a reset, and the guest loses nothing: its checksum log
// equals a run that never migrated.
#[test]
fn an_arc_failing_with_the_last_state_kept_loses_nothing() {
    for (protocol, fail_into) in [
        (Protocol::V2, MigState::PreCopy),
        (Protocol::V2, MigState::StopCopy),
        (Protocol::Region, MigState::StopCopy),
    ] {
        let opts = SourceOptions {
            protocol,
            ..SourceOptions::default()
        };
        let double = DoubleFactory::new(
            vgpu_platform::factory(DirtyTracking::ShadowPt),
            Behaviour {
                fail_into: Some(fail_into),
                on_failure: OnFailure::KeepLast,
                ..Behaviour::default()
            },
        );
        let (url, target) = spawn_target();
        let mut src = source(&double);
        let e = migration::migrate(&mut src, &url, &opts, &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("{protocol:?}/{fail_into}: the migration should fail"))
            .to_string();
        assert!(
            target.join().unwrap().is_err(),
            "{protocol:?}/{fail_into}: target discards"
        );
        assert!(
            !e.contains("reset"),
            "{protocol:?}/{fail_into}: no reset needed: {e}"
        );
        let rec = double.record();
        assert_eq!(
            (rec.failed_arcs, rec.resets),
            (1, 0),
            "{protocol:?}/{fail_into}"
        );
        finish_and_check(&mut src, &format!("mtty-style failure into {fail_into}"));
    }
}

fn spawn_target_with(
    factory: Arc<dyn vmm::platform::VmFactory>,
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
            factory,
            fail_at: None,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|(vm, _, _)| vm)
            .map_err(|e| e.to_string())
    });
    (url, h)
}

// The target's arcs can fail too: into RESUMING (before any data), RESUMING -> STOP (the
// commit) and STOP -> RUNNING (after the handover). Each time the target rejects the
// migration, discards its VM, and the source runs the guest on to the reference's
// checksums: after the handover too, since a rejection says the target will not run it.
#[test]
fn a_target_arc_that_fails_leaves_the_guest_on_the_source() {
    for fail_into in [MigState::Resuming, MigState::Stop, MigState::Running] {
        let double = DoubleFactory::new(
            vgpu_platform::factory(DirtyTracking::ShadowPt),
            Behaviour {
                fail_into: Some(fail_into),
                on_failure: OnFailure::Error,
                ..Behaviour::default()
            },
        );
        let (url, target) = spawn_target_with(Arc::new(double.clone()));
        let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
        cfg.ram_size = 64 << 20;
        let mut src = Vm::new(&cfg).unwrap();
        src.boot(&small_params(OUT_OF_REACH, SEED)).unwrap();
        src.run(StopAt::Frame(2)).unwrap();
        let e = migration::migrate(&mut src, &url, &v2(), &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("target into {fail_into}: the migration should fail"))
            .to_string();
        let t = target.join().unwrap();
        assert!(t.is_err(), "target into {fail_into}: the target discards");
        assert!(e.contains("rejected"), "target into {fail_into}: {e}");
        assert_eq!(double.record().failed_arcs, 1, "target into {fail_into}");
        finish_and_check(&mut src, &format!("target arc into {fail_into} failed"));
    }
}
