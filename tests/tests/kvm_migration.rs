//! Live migration of a guest that runs on a KVM vCPU: the vCPU runs on its own thread and
//! the device on another while the migration thread pre-copies; the switchover kicks the
//! vCPU out of guest mode; its whole state goes in the stream; the target goes on on a
//! fresh KVM vCPU. Every verified migration ends with the checksum log and graphics memory
//! of a run that never migrated. Where `/dev/kvm` is not usable each test prints why and
//! passes without asserting (CI runs as root with `/dev/kvm`).

use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use vgpu_migrate_tests::{outcome, quiet, reference, small_params, Outcome};
use vgpu_platform::VgpuVm;
use vgpu_sim::DirtyTracking;
use vmm::migration::source::SwitchoverAt;
use vmm::migration::{self, FailPoint, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

const FRAMES: u64 = 6;
const SEED: u64 = 13;
/// A frame limit no test reaches, so the source guest is still rendering at switchover.
const OUT_OF_REACH: u64 = 100_000;
/// The hang guard for the KVM runs here (a stale seqno makes the target's driver wait).
const STALL: Duration = Duration::from_secs(5);

fn kvm_usable() -> bool {
    match vmm::kvm::available() {
        Ok(()) => true,
        Err(e) => {
            println!("skipped: KVM is not usable here: {e}");
            false
        }
    }
}

fn spawn_target(fail_at: Option<FailPoint>) -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0x1_0000,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type: "vgpu-64".into(),
            irq_sink_base: 4000,
            factory: vgpu_platform::factory(DirtyTracking::ShadowPt),
            fail_at,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|(vm, _, _)| vm)
            .map_err(|e| e.to_string())
    });
    (url, h)
}

/// A source VM on KVM, rendering frame `at` with its frame limit out of reach.
fn kvm_source(tracking: DirtyTracking, at: u64) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    cfg.factory = vgpu_platform::factory(tracking);
    let mut vm = Vm::new(&cfg).unwrap();
    vm.boot(&small_params(OUT_OF_REACH, SEED)).unwrap();
    vm.set_kvm_stall_timeout(STALL);
    vm.run_kvm(StopAt::Frame(at))
        .expect("KVM run to the migration point");
    vm
}

/// Frames the guest driver has submitted (its own counter, in guest RAM).
fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

/// Migrate a KVM guest and let the target finish; (target outcome, report, reference).
fn migrate_and_finish(
    tracking: DirtyTracking,
    opts: SourceOptions,
) -> Result<(Outcome, migration::SourceReport, Outcome), String> {
    let (url, target) = spawn_target(None);
    let mut src = kvm_source(tracking, 2);
    let res = migration::migrate(&mut src, &url, &opts, &mut |_| {});
    let t = target.join().unwrap();
    let (rep, _) = res.map_err(|e| e.to_string())?;
    let mut dst = t?;
    assert!(dst.on_kvm(), "the target goes on on a KVM vCPU");
    assert!(
        dst.kvm_running(),
        "the target's vCPU runs from its resume on"
    );
    dst.set_kvm_stall_timeout(STALL);
    dst.pause_kvm().map_err(|e| e.to_string())?;
    let frames = submitted(&mut dst).max(FRAMES);
    dst.set_frame_limit(frames).map_err(|e| e.to_string())?;
    dst.run_guest(StopAt::Done).map_err(|e| e.to_string())?;
    let mut got = outcome(&mut dst, frames);
    let mut want = reference("vgpu-64", frames, SEED);
    // The KVM guest's RAM also holds the x86 image's stack and heap: compare what the
    // driver produced (checksum log) and graphics memory.
    got.ram = [0; 32];
    want.ram = [0; 32];
    Ok((got, rep, want))
}

#[test]
fn a_kvm_guest_migrates_with_both_protocols_and_every_tracking_mode() {
    if !kvm_usable() {
        return;
    }
    for protocol in [Protocol::Region, Protocol::V2] {
        for tracking in [DirtyTracking::ShadowPt, DirtyTracking::Pinned] {
            let o = SourceOptions {
                protocol,
                ..SourceOptions::default()
            };
            let (got, rep, want) = migrate_and_finish(tracking, o)
                .unwrap_or_else(|e| panic!("{protocol:?}/{tracking:?}: {e}"));
            assert_eq!(got, want, "{protocol:?}/{tracking:?}");
            assert!(!rep.rounds.is_empty());
            assert!(rep.downtime_ms > 0.0 && rep.total_ms >= rep.downtime_ms);
        }
    }
}

#[test]
fn tracking_off_is_a_negative_control_on_kvm_too() {
    if !kvm_usable() {
        return;
    }
    let o = SourceOptions {
        protocol: Protocol::V2,
        switchover_at: SwitchoverAt::NextFrame,
        ..SourceOptions::default()
    };
    let (got, _, want) = migrate_and_finish(DirtyTracking::ShadowPt, o.clone()).unwrap();
    assert_eq!(
        got, want,
        "the same migration with precise tracking verifies"
    );
    match migrate_and_finish(DirtyTracking::Off, o) {
        Ok((got, _, want)) => assert_ne!(got, want, "tracking off must not verify"),
        Err(e) => assert!(e.contains("stalled") || e.contains("differ"), "{e}"),
    }
}

#[test]
fn a_failed_kvm_migration_leaves_the_guest_running_on_the_source() {
    if !kvm_usable() {
        return;
    }
    for fail in [FailPoint::Round(1), FailPoint::StopCopy] {
        let (url, target) = spawn_target(None);
        let mut src = kvm_source(DirtyTracking::ShadowPt, 2);
        let o = SourceOptions {
            protocol: Protocol::V2,
            fail_at: Some(fail),
            ..SourceOptions::default()
        };
        let err = migration::migrate(&mut src, &url, &o, &mut |_| {}).expect_err("injected");
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(target.join().unwrap().is_err(), "the target discards");
        assert!(src.kvm_running(), "the source guest runs on ({fail:?})");
        src.pause_kvm().unwrap();
        let frames = submitted(&mut src).max(FRAMES);
        src.set_frame_limit(frames).unwrap();
        src.run_kvm(StopAt::Done).expect("the source finishes");
        assert_eq!(
            outcome(&mut src, frames).checksums,
            reference("vgpu-64", frames, SEED).checksums,
            "{fail:?}"
        );
    }
}

#[test]
fn mid_batch_switchover_is_refused_for_a_kvm_guest() {
    if !kvm_usable() {
        return;
    }
    let mut src = kvm_source(DirtyTracking::ShadowPt, 1);
    let o = SourceOptions {
        switchover_at: SwitchoverAt::MidBatch,
        ..SourceOptions::default()
    };
    let err = migration::migrate(&mut src, "tcp://127.0.0.1:1", &o, &mut |_| {})
        .expect_err("refused before connecting");
    assert!(
        err.to_string().contains("KVM guest runs on its own"),
        "{err}"
    );
}

#[test]
fn a_kvm_guest_migrated_while_it_boots_switches_over_inside_its_mmio_stream() {
    if !kvm_usable() {
        return;
    }
    // The image's boot uploads textures through the aperture, one MMIO exit per 8 bytes,
    // for seconds on an emulated KVM: a migration started at boot (converging quickly on
    // an idle link) kicks the vCPU while it is in that stream of exits. Wherever the kick
    // lands, the exit in progress completes before the vCPU parks, and the target ends as
    // a run that never migrated.
    let (url, target) = spawn_target(None);
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    let mut src = Vm::new(&cfg).unwrap();
    src.boot(&small_params(OUT_OF_REACH, SEED)).unwrap();
    src.set_kvm_stall_timeout(STALL);
    src.start_kvm().expect("the guest boots on KVM");
    let o = SourceOptions {
        protocol: Protocol::V2,
        ..SourceOptions::default()
    };
    let (rep, _) = migration::migrate(&mut src, &url, &o, &mut |_| {}).expect("migration");
    println!(
        "switched over at frame {} after {} commands",
        rep.switchover.frames, rep.switchover.commands
    );
    let mut dst = target.join().unwrap().expect("target");
    dst.set_kvm_stall_timeout(STALL);
    dst.pause_kvm().unwrap();
    let frames = submitted(&mut dst).max(FRAMES);
    dst.set_frame_limit(frames).unwrap();
    dst.run_guest(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut dst, frames).checksums,
        reference("vgpu-64", frames, SEED).checksums
    );
}
