//! Live migration in one process: target on a thread, source on the test thread, over
//! loopback TCP. Every successful migration must end, after the target finishes the
//! workload, bit-identical to a run that never migrated.

use std::net::TcpListener;
use std::thread::JoinHandle;
use vgpu_platform::VgpuVm;

use vgpu_migrate_tests::{booted, outcome, quiet, reference, Outcome};
use vgpu_sim::DirtyTracking;
use vmm::migration::source::SwitchoverAt;
use vmm::migration::{self, FailPoint, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

const FRAMES: u64 = 8;
const SEED: u64 = 21;

type TargetResult = Result<Vm, String>;

fn spawn_target(fail_at: Option<FailPoint>) -> (String, JoinHandle<TargetResult>) {
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

/// Migrate at frame `at`; returns the target's outcome after it finished, the report, and
/// the reference to compare with.
///
/// The source's frame limit is out of reach, so pre-copy never sees the workload end
/// (however slow or fast the machine is, the switchover point always comes). The target
/// then sets the limit past every frame the driver had submitted, and the comparison is
/// with a reference of that many frames.
fn migrate_and_finish(
    tracking: DirtyTracking,
    opts: SourceOptions,
    at: u64,
) -> Result<(Outcome, migration::SourceReport, Outcome), String> {
    let (url, target) = spawn_target(None);
    let mut src = booted_with(tracking);
    src.set_frame_limit(OUT_OF_REACH).unwrap();
    src.run(StopAt::Frame(at)).unwrap();
    let res = migration::migrate(&mut src, &url, &opts, &mut |_| {});
    let t = target.join().unwrap();
    let (rep, _) = res.map_err(|e| e.to_string())?;
    let mut dst = t?;
    let frames = submitted(&mut dst).max(FRAMES);
    dst.set_frame_limit(frames).map_err(|e| e.to_string())?;
    dst.run(StopAt::Done).map_err(|e| e.to_string())?;
    Ok((
        outcome(&mut dst, frames),
        rep,
        reference("vgpu-64", frames, SEED),
    ))
}

/// A frame limit no test reaches.
const OUT_OF_REACH: u64 = 100_000;

/// Frames the guest driver has submitted (its own counter, in guest RAM).
fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

fn booted_with(tracking: DirtyTracking) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    cfg.factory = vgpu_platform::factory(tracking);
    let mut vm = Vm::new(&cfg).unwrap();
    vm.boot(&vgpu_migrate_tests::small_params(FRAMES, SEED))
        .unwrap();
    vm
}

fn opts(protocol: Protocol) -> SourceOptions {
    SourceOptions {
        protocol,
        ..SourceOptions::default()
    }
}

#[test]
fn both_protocols_both_tracking_modes_verify() {
    for protocol in [Protocol::Region, Protocol::V2] {
        for tracking in [DirtyTracking::ShadowPt, DirtyTracking::Pinned] {
            let (got, rep, want) = migrate_and_finish(tracking, opts(protocol), 3)
                .unwrap_or_else(|e| panic!("{protocol:?}/{tracking:?}: {e}"));
            assert_eq!(got, want, "{protocol:?}/{tracking:?}");
            assert!(!rep.rounds.is_empty());
            assert!(rep.downtime_ms > 0.0 && rep.total_ms >= rep.downtime_ms);
            assert!(
                rep.bytes.device_stopcopy > 0,
                "device state moved at stop-copy"
            );
        }
    }
}

#[test]
fn switchover_mid_batch_and_with_a_pending_interrupt() {
    for (protocol, at) in [
        (Protocol::Region, SwitchoverAt::MidBatch),
        (Protocol::V2, SwitchoverAt::MidBatch),
        (Protocol::Region, SwitchoverAt::IrqPending),
        (Protocol::V2, SwitchoverAt::IrqPending),
    ] {
        let o = SourceOptions {
            switchover_at: at,
            ..opts(protocol)
        };
        let (got, rep, want) = migrate_and_finish(DirtyTracking::ShadowPt, o, 2).unwrap();
        match at {
            SwitchoverAt::MidBatch => {
                assert!(rep.switchover.in_batch && rep.switchover.batch_offset > 0)
            }
            SwitchoverAt::IrqPending => assert!(rep.switchover.vcpu_irq_pending),
            _ => {}
        }
        assert_eq!(got, want, "{protocol:?} {at:?}");
    }
}

#[test]
fn idle_device_migrates_and_target_goes_on() {
    // Migrate after the workload finished (device idle); the target raises the limit.
    let want = reference("vgpu-64", FRAMES, SEED);
    let (url, target) = spawn_target(None);
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    let mut src = Vm::new(&cfg).unwrap();
    src.boot(&vgpu_migrate_tests::small_params(5, SEED))
        .unwrap();
    src.run(StopAt::Done).unwrap();
    migration::migrate(&mut src, &url, &opts(Protocol::V2), &mut |_| {}).unwrap();
    let mut dst = target.join().unwrap().unwrap();
    dst.set_frame_limit(FRAMES).unwrap();
    dst.run(StopAt::Done).unwrap();
    let got = outcome(&mut dst, FRAMES);
    assert_eq!(got.checksums, want.checksums);
}

#[test]
fn tracking_off_is_a_negative_control() {
    let o = SourceOptions {
        switchover_at: SwitchoverAt::NextFrame,
        ..opts(Protocol::Region)
    };
    // The same migration with precise tracking verifies (so the control is fair) ...
    let (got, _, want) = migrate_and_finish(DirtyTracking::ShadowPt, o.clone(), 2).unwrap();
    assert_eq!(got, want);
    // ... and without DMA tracking, pages the device wrote during pre-copy (checksum log, seqno)
    // are never re-sent: the target either stalls on a stale seqno or logs other values.
    match migrate_and_finish(DirtyTracking::Off, o, 2) {
        Ok((got, _, want)) => assert_ne!(got, want, "tracking off must not verify"),
        Err(e) => assert!(e.contains("stalled") || e.contains("differ"), "{e}"),
    }
}

#[test]
fn failures_at_every_phase_leave_the_source_intact() {
    let want = reference("vgpu-64", FRAMES, SEED);
    for (fail, target_fail) in [
        (Some(FailPoint::Setup), None),
        (Some(FailPoint::Round(0)), None),
        (Some(FailPoint::Round(1)), None),
        (Some(FailPoint::StopCopy), None),
        (None, Some(FailPoint::BeforeResume)),
    ] {
        let (url, target) = spawn_target(target_fail);
        let mut src = booted_with(DirtyTracking::ShadowPt);
        src.run(StopAt::Frame(3)).unwrap();
        let o = SourceOptions {
            fail_at: fail,
            max_rounds: 3,
            downtime_limit: std::time::Duration::from_micros(1),
            auto_converge: false,
            ..opts(Protocol::Region)
        };
        // A 1 us limit never converges, so rounds 0 and 1 are reached; the setup and
        // stop-copy failures are injected before that matters.
        let o = if matches!(fail, Some(FailPoint::StopCopy)) || target_fail.is_some() {
            SourceOptions {
                downtime_limit: std::time::Duration::from_secs(10),
                ..o
            }
        } else {
            o
        };
        let err = migration::migrate(&mut src, &url, &o, &mut |_| {}).unwrap_err();
        assert!(
            target.join().unwrap().is_err(),
            "the target must discard ({fail:?}/{target_fail:?})"
        );
        let msg = err.to_string();
        assert!(!msg.is_empty());
        // The source goes on as if nothing had happened.
        src.run(StopAt::Done).unwrap();
        assert_eq!(
            outcome(&mut src, FRAMES),
            want,
            "source after {fail:?}/{target_fail:?}: {msg}"
        );
    }
}

#[test]
fn a_second_attempt_succeeds_after_a_failure() {
    let want = reference("vgpu-64", FRAMES, SEED);
    let mut src = booted_with(DirtyTracking::ShadowPt);
    src.run(StopAt::Frame(2)).unwrap();
    let (url, target) = spawn_target(Some(FailPoint::BeforeResume));
    assert!(migration::migrate(&mut src, &url, &opts(Protocol::V2), &mut |_| {}).is_err());
    assert!(target.join().unwrap().is_err());
    src.run(StopAt::Frame(4)).unwrap();
    let (url, target) = spawn_target(None);
    migration::migrate(&mut src, &url, &opts(Protocol::V2), &mut |_| {}).unwrap();
    let mut dst = target.join().unwrap().unwrap();
    dst.run(StopAt::Done).unwrap();
    assert_eq!(outcome(&mut dst, FRAMES), want);
}

#[test]
fn incompatible_target_is_refused_before_any_data() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let target = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0x1_0000,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type: "vgpu-512".into(),
            irq_sink_base: 4000,
            factory: vgpu_platform::factory(DirtyTracking::ShadowPt),
            fail_at: None,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let mut src = booted("vgpu-64", FRAMES, SEED, 100);
    src.run(StopAt::Frame(2)).unwrap();
    let err = migration::migrate(&mut src, &url, &opts(Protocol::Region), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("vgpu-512"), "{err}");
    let terr = target.join().unwrap().unwrap_err();
    assert!(terr.contains("incompatible"), "{terr}");
    src.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut src, FRAMES),
        reference("vgpu-64", FRAMES, SEED)
    );
}

#[test]
fn a_dead_target_is_a_clear_error() {
    // Port 1 (tcpmux) has no listener here; a port bound and dropped could be taken by
    // another test's target meanwhile.
    let url = "tcp://127.0.0.1:1";
    let mut src = booted("vgpu-64", FRAMES, SEED, 100);
    src.run(StopAt::Frame(1)).unwrap();
    let o = SourceOptions {
        connect_timeout: std::time::Duration::from_millis(200),
        ..opts(Protocol::Region)
    };
    let err = migration::migrate(&mut src, url, &o, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    src.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut src, FRAMES),
        reference("vgpu-64", FRAMES, SEED)
    );
}

/// Device commands the guest runs per pre-copy round (about four frames of the scene).
const WORK_PER_ROUND: u32 = 400;

#[test]
fn auto_converge_throttles_the_engine_until_the_remainder_fits() {
    // The guest's work is paced by events, not by the machine's speed: each pre-copy round
    // it runs WORK_PER_ROUND commands (SourceOptions::guest_work_per_round, scaled down by
    // the throttle). At 640x360 those frames leave about 4.3 MB of graphics memory dirty
    // per round, while a 32 MB/s link with a 50 ms limit takes about 1.6 MB (1.2 MB of it
    // the fixed device state): unthrottled, pre-copy cannot converge on any machine that
    // moves 32 MB/s over loopback; throttled, the work per round shrinks until it fits.
    let params = vgpu_sim::workload::Params {
        width: 640,
        height: 360,
        ..vgpu_migrate_tests::small_params(OUT_OF_REACH, SEED)
    };
    let base = SourceOptions {
        bandwidth: Some(32 << 20),
        downtime_limit: std::time::Duration::from_millis(50),
        max_rounds: 5,
        guest_work_per_round: Some(WORK_PER_ROUND),
        ..opts(Protocol::V2)
    };
    let run = |o: SourceOptions| {
        let (url, target) = spawn_target(None);
        let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
        cfg.ram_size = 64 << 20;
        let mut src = Vm::new(&cfg).unwrap();
        src.boot(&params).unwrap();
        src.run(StopAt::Frame(2)).unwrap();
        let res = migration::migrate(&mut src, &url, &o, &mut |_| {});
        let t = target.join().unwrap();
        (res.map(|(r, _)| r), t, src)
    };
    let (res, t, _) = run(base.clone());
    let err = res.unwrap_err().to_string();
    assert!(err.contains("did not converge"), "{err}");
    assert!(t.is_err(), "the target discards");

    let (res, t, _) = run(SourceOptions {
        auto_converge: true,
        ..base
    });
    let rep = res.unwrap();
    assert!(rep.throttle_pct > 0, "the engine was throttled");
    assert!(rep.rounds.len() > 2);
    let mut dst = t.unwrap();
    let dev = vgpu_platform::vgpu_of(&mut dst).unwrap();
    assert_eq!(
        dev.lock().unwrap().throttle(),
        0,
        "the target runs at full speed"
    );
    let frames = submitted(&mut dst) + 1;
    dst.set_frame_limit(frames).unwrap();
    dst.run(StopAt::Done).unwrap();
    let mut want = booted_like(&params, frames);
    want.run(StopAt::Done).unwrap();
    assert_eq!(outcome(&mut dst, frames), outcome(&mut want, frames));
}

fn booted_like(params: &vgpu_sim::workload::Params, frames: u64) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    let mut vm = Vm::new(&cfg).unwrap();
    vm.boot(&vgpu_sim::workload::Params {
        frame_limit: frames,
        ..*params
    })
    .unwrap();
    vm
}
