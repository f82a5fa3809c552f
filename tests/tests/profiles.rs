//! The workload profiles: a golden checksum log per profile (any change to rendering must
//! change these constants, deliberately), and live migration of every profile over both
//! protocols and both DMA tracking modes, with the switchover inside a batch (between
//! passes or inside a draw's command stream), checked against a run that never migrated.

use std::net::TcpListener;
use std::thread::JoinHandle;

use vgpu_migrate_tests::{outcome, quiet, Outcome};
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::{Params, Profile, PROFILES};
use vgpu_sim::DirtyTracking;
use vmm::migration::source::SwitchoverAt;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

const SEED: u64 = 5;
/// Frames of the golden runs.
const GOLDEN_FRAMES: u64 = 3;
/// A frame limit no test reaches.
const OUT_OF_REACH: u64 = 100_000;

/// The tests here run one at a time: the convergence test measures how fast the guest
/// dirties memory against the link, which the other tests' load would change.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The profile at a small size (its objects, uploads and passes unchanged).
fn params(profile: Profile, frames: u64) -> Params {
    Params {
        seed: SEED,
        width: 320,
        height: 200,
        frame_limit: frames,
        ..Params::for_profile(profile)
    }
}

/// The smallest type whose graphics memory holds the profile.
fn mdev_type(profile: Profile) -> &'static str {
    match profile {
        Profile::Heavy => "vgpu-512",
        _ => "vgpu-64",
    }
}

fn booted(profile: Profile, frames: u64, tracking: DirtyTracking) -> Vm {
    let mut cfg = vgpu_platform::vm_config(mdev_type(profile), quiet());
    cfg.ram_size = 64 << 20;
    cfg.factory = vgpu_platform::factory(tracking);
    let mut vm = Vm::new(&cfg).expect("create VM");
    vm.boot(&params(profile, frames)).expect("boot");
    vm
}

fn reference(profile: Profile, frames: u64) -> Outcome {
    let mut vm = booted(profile, frames, DirtyTracking::ShadowPt);
    vm.run(StopAt::Done).expect("reference run");
    outcome(&mut vm, frames)
}

#[test]
fn every_profile_renders_its_golden_checksums() {
    let _serial = serial();
    let golden: [(Profile, [u64; GOLDEN_FRAMES as usize]); 3] = [
        (
            Profile::Light,
            [0x0dca779124015a12, 0x4552f37de6181b13, 0x1b10d3ce75a4d8fc],
        ),
        (
            Profile::Medium,
            [0x5fcb9d7515ad5217, 0x7a8e855e0752c162, 0x27eb9c77a8688567],
        ),
        (
            Profile::Heavy,
            [0xb83d8c43f30c499e, 0x19cbc1c19b21a1dd, 0xd3593b387450c112],
        ),
    ];
    for (profile, want) in golden {
        let got = reference(profile, GOLDEN_FRAMES).checksums;
        assert_eq!(got, want, "{}: {:x?}", profile.name(), got);
    }
}

fn spawn_target(mdev_type: &str) -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let mdev_type = mdev_type.to_string();
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0x1_0000,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type,
            irq_sink_base: 4000,
            factory: vgpu_platform::factory(DirtyTracking::ShadowPt),
            fail_at: None,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|(vm, _, _)| vm)
            .map_err(|e| e.to_string())
    });
    (url, h)
}

/// Frames the guest driver has submitted (its own counter, in guest RAM).
fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

/// Migrate `profile` at frame 2 and finish on the target; (target outcome, reference).
fn migrate(profile: Profile, opts: SourceOptions, tracking: DirtyTracking) -> (Outcome, Outcome) {
    let (url, target) = spawn_target(mdev_type(profile));
    let mut src = booted(profile, OUT_OF_REACH, tracking);
    src.run(StopAt::Frame(2)).unwrap();
    let res = migration::migrate(&mut src, &url, &opts, &mut |_| {});
    let t = target.join().unwrap();
    let (rep, _) = res.unwrap_or_else(|e| panic!("{}: {e}", profile.name()));
    if opts.switchover_at == SwitchoverAt::MidBatch {
        assert!(
            rep.switchover.in_batch,
            "{}: switched inside a batch",
            profile.name()
        );
    }
    let mut dst = t.unwrap();
    let frames = submitted(&mut dst).max(4);
    dst.set_frame_limit(frames).unwrap();
    dst.run(StopAt::Done).unwrap();
    (outcome(&mut dst, frames), reference(profile, frames))
}

#[test]
fn light_and_medium_migrate_over_both_protocols_and_tracking_modes() {
    let _serial = serial();
    for profile in [Profile::Light, Profile::Medium] {
        for protocol in [Protocol::Region, Protocol::V2] {
            for tracking in [DirtyTracking::ShadowPt, DirtyTracking::Pinned] {
                let opts = SourceOptions {
                    protocol,
                    switchover_at: SwitchoverAt::MidBatch,
                    ..SourceOptions::default()
                };
                let (got, want) = migrate(profile, opts, tracking);
                assert_eq!(got, want, "{} {protocol:?} {tracking:?}", profile.name());
            }
        }
    }
}

#[test]
fn heavy_migrates_over_both_protocols() {
    let _serial = serial();
    assert!(PROFILES.contains(&Profile::Heavy));
    for (protocol, tracking) in [
        (Protocol::Region, DirtyTracking::Pinned),
        (Protocol::V2, DirtyTracking::ShadowPt),
    ] {
        let opts = SourceOptions {
            protocol,
            switchover_at: SwitchoverAt::MidBatch,
            ..SourceOptions::default()
        };
        let (got, want) = migrate(Profile::Heavy, opts, tracking);
        assert_eq!(got, want, "heavy {protocol:?} {tracking:?}");
    }
}

/// Device commands the heavy guest runs per pre-copy round.
const HEAVY_WORK: u32 = 200;

#[test]
fn heavy_outruns_the_link_and_converges_only_with_auto_converge() {
    let _serial = serial();
    // heavy rewrites about 270 MB of graphics memory a frame (its texture uploads). The
    // guest's work is paced by events, not by the machine's speed
    // (`guest_work_per_round`: HEAVY_WORK commands a round, scaled down by the throttle), so
    // each unthrottled round leaves far more dirty than a 256 MB/s link with a 20 ms
    // downtime limit (5 MB) can take: plain pre-copy cannot converge on any machine, and
    // throttling the engine can.
    let base = SourceOptions {
        protocol: Protocol::V2,
        bandwidth: Some(256 << 20),
        downtime_limit: std::time::Duration::from_millis(20),
        max_rounds: 3,
        guest_work_per_round: Some(HEAVY_WORK),
        ..SourceOptions::default()
    };
    let run = |o: SourceOptions| {
        let (url, target) = spawn_target("vgpu-512");
        let mut src = booted(Profile::Heavy, OUT_OF_REACH, DirtyTracking::ShadowPt);
        src.run(StopAt::Frame(2)).unwrap();
        let res = migration::migrate(&mut src, &url, &o, &mut |_| {});
        (res.map(|(r, _)| r), target.join().unwrap())
    };
    let (res, t) = run(base.clone());
    let err = res.expect_err("plain pre-copy converged").to_string();
    assert!(err.contains("did not converge"), "{err}");
    assert!(t.is_err(), "the target discards");

    let (res, t) = run(SourceOptions {
        auto_converge: true,
        ..base.clone()
    });
    let rep = res.expect("auto-converge converges");
    assert!(
        rep.throttle_pct > 0,
        "auto-converge throttled the engine: {rep:?}"
    );
    let mut dst = t.unwrap();
    let frames = submitted(&mut dst) + 1;
    dst.set_frame_limit(frames).unwrap();
    dst.run(StopAt::Done).unwrap();
    assert_eq!(outcome(&mut dst, frames), reference(Profile::Heavy, frames));
}

/// The render target's offset after the device has executed `c` commands.
fn render_target_at(vm: &mut Vm, c: u64) -> u64 {
    vm.run(StopAt::Command(c)).unwrap();
    let dev = vgpu_platform::vgpu_of(vm).expect("a vGPU");
    let rt = dev.lock().unwrap().state().engine.render_target.offset;
    u64::from(rt)
}

#[test]
fn snapshots_inside_passes_and_between_them_restore_to_the_same_run() {
    let _serial = serial();
    let frames = 4;
    let want = reference(Profile::Medium, frames);
    let plan = params(Profile::Medium, frames).plan();
    // Walk frame 2 command by command and pick: a render-to-texture target bound with
    // draws done into it, the moment the second pass's target was bound (between passes),
    // and the main pass after a few draws.
    let mut probe = booted(Profile::Medium, frames, DirtyTracking::ShadowPt);
    probe.run(StopAt::Frame(2)).unwrap();
    let start = probe.command_count();
    let mut rts = Vec::new();
    for c in start + 1..start + 400 {
        rts.push((c, render_target_at(&mut probe, c)));
    }
    let first = |off: u64, after: usize| {
        rts.iter()
            .filter(|x| x.1 == off)
            .nth(after)
            .map(|x| x.0)
            .unwrap_or_else(|| panic!("render target {off:#x} not bound in frame 2"))
    };
    let fb = plan.fb[0];
    let points = [
        (
            "inside the first render-to-texture pass",
            first(plan.target(0), 12),
        ),
        ("between passes", first(plan.target(1), 0)),
        ("inside the main pass", first(fb, 20)),
    ];
    for (what, c) in points {
        let mut src = booted(Profile::Medium, frames, DirtyTracking::ShadowPt);
        src.run(StopAt::Command(c)).unwrap();
        let mut snap = Vec::new();
        vmm::snapshot::save(&mut src, &mut snap).unwrap();
        drop(src);
        let mut dst = vgpu_platform::restore(&snap[..], &quiet(), Default::default(), 300).unwrap();
        dst.run(StopAt::Done).unwrap();
        assert_eq!(outcome(&mut dst, frames), want, "{what} (command {c})");
    }
}
