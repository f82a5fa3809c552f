//! Guest RAM on RAM channels (`SourceOptions::channels`, QEMU's multifd idea): every
//! migration must end bit-identical to a run that never migrated; a failure at any phase
//! leaves the source running as before; a byte spoiled on a channel is refused by the
//! target, as one spoiled on the main stream is.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vgpu_migrate_tests::{outcome, quiet, reference};
use vgpu_platform::VgpuVm;
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, FailPoint, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

const FRAMES: u64 = 8;
const SEED: u64 = 23;
/// A frame limit no test reaches (see live_migration.rs).
const OUT_OF_REACH: u64 = 100_000;

type TargetResult = Result<Vm, String>;

fn spawn_target(l: TcpListener, fail_at: Option<FailPoint>) -> JoinHandle<TargetResult> {
    std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type: "vgpu-64".into(),
            irq_sink_base: 4100,
            factory: vgpu_platform::factory(DirtyTracking::ShadowPt),
            fail_at,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|(vm, _, _)| vm)
            .map_err(|e| e.to_string())
    })
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    (l, url)
}

/// Where the bytes of [`fill`] are in guest RAM.
const FILL_GPA: u64 = 48 << 20;

/// 8 MiB of non-zero bytes, as a guest that uses its memory has.
fn fill() -> Vec<u8> {
    (0..8u32 << 20).map(|i| (i % 253) as u8 | 1).collect()
}

/// The workload's outcome against a run that never migrated (whose RAM lacks [`fill`]:
/// the checksum log and graphics memory are compared, and guest RAM at [`FILL_GPA`]),
/// after it ran to its end.
fn assert_as_never_migrated(vm: &mut Vm, frames: u64, what: &str) {
    let got = outcome(vm, frames);
    let want = reference("vgpu-64", frames, SEED);
    assert_eq!(got.checksums, want.checksums, "{what}: checksum log");
    assert_eq!(got.gmem, want.gmem, "{what}: graphics memory");
    let mut back = vec![0u8; 8 << 20];
    vmm::memory::read(vm.memory(), FILL_GPA, &mut back).unwrap();
    assert!(back == fill(), "{what}: the guest's RAM above the workload");
}

/// A guest with RAM in use: the workload's pages and 8 MiB of non-zero bytes above it,
/// run to frame 3, with a frame limit of `limit` (the source of a successful migration
/// never reaches its limit, so the switchover point always comes; one whose migration
/// fails finishes its own workload afterwards).
fn source(limit: u64) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    let mut vm = Vm::new(&cfg).unwrap();
    vm.boot(&vgpu_migrate_tests::small_params(FRAMES, SEED))
        .unwrap();
    vm.set_frame_limit(limit).unwrap();
    vmm::memory::write(vm.memory(), FILL_GPA, &fill()).unwrap();
    vm.run(StopAt::Frame(3)).unwrap();
    vm
}

fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

/// Finish the target's workload and compare it with a run that never migrated.
fn finish(mut dst: Vm, what: &str) {
    let frames = submitted(&mut dst).max(FRAMES);
    dst.set_frame_limit(frames).unwrap();
    dst.run(StopAt::Done).unwrap();
    assert_as_never_migrated(&mut dst, frames, what);
}

fn opts(protocol: Protocol, channels: u32) -> SourceOptions {
    SourceOptions {
        protocol,
        channels,
        ..SourceOptions::default()
    }
}

#[test]
fn ram_channels_migrate_bit_identically_on_both_protocols() {
    for (protocol, channels) in [(Protocol::Region, 1), (Protocol::V2, 3)] {
        let (l, url) = listener();
        let target = spawn_target(l, None);
        let mut src = source(OUT_OF_REACH);
        let ram_before = vmm::memory::digest(src.memory());
        let (rep, _) = migration::migrate(&mut src, &url, &opts(protocol, channels), &mut |_| {})
            .unwrap_or_else(|e| panic!("{protocol:?} x{channels}: {e}"));
        let dst = target.join().unwrap().unwrap();
        // The source stopped at the switchover: its RAM is what the target must hold.
        assert_eq!(
            vmm::memory::digest(dst.memory()),
            vmm::memory::digest(src.memory()),
            "{protocol:?} x{channels}: guest RAM"
        );
        assert_ne!(ram_before, [0u8; 32]);
        // The 8 MiB filled above the workload went on the channels, and was counted.
        assert!(rep.bytes.ram >= 8 << 20, "{:?}", rep.bytes);
        assert!(rep.rounds[0].ram_pages >= 2048, "{:?}", rep.rounds[0]);
        finish(dst, &format!("{protocol:?} x{channels}"));
    }
}

#[test]
fn failures_with_ram_channels_leave_the_source_intact() {
    for (fail, target_fail) in [
        (Some(FailPoint::Round(1)), None),
        (Some(FailPoint::StopCopy), None),
        (None, Some(FailPoint::BeforeResume)),
    ] {
        let (l, url) = listener();
        let target = spawn_target(l, target_fail);
        let mut src = source(FRAMES);
        let o = SourceOptions {
            fail_at: fail,
            max_rounds: 3,
            downtime_limit: std::time::Duration::from_micros(
                if fail == Some(FailPoint::Round(1)) {
                    1
                } else {
                    10_000_000
                },
            ),
            ..opts(Protocol::V2, 2)
        };
        let err = migration::migrate(&mut src, &url, &o, &mut |_| {}).unwrap_err();
        assert!(target.join().unwrap().is_err(), "{fail:?}/{target_fail:?}");
        src.run(StopAt::Done).unwrap();
        assert_as_never_migrated(
            &mut src,
            FRAMES,
            &format!("{fail:?}/{target_fail:?}: {err}"),
        );
    }
}

/// A proxy in front of `to`: the `spoil`-th connection it accepts (0: the main one, 1: the
/// first RAM channel) has its byte at `at` flipped on the way to the target.
fn spoiling_proxy(to: String, spoil: usize, at: usize) -> String {
    let (l, url) = listener();
    let n = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let i = n.fetch_add(1, Ordering::Relaxed);
            let Ok(t) = TcpStream::connect(to.trim_start_matches("tcp://")) else {
                return;
            };
            let flip = (i == spoil).then_some(at);
            pipe(c.try_clone().unwrap(), t.try_clone().unwrap(), flip);
            pipe(t, c, None);
        }
    });
    url
}

fn pipe(mut from: TcpStream, mut to: TcpStream, flip: Option<usize>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut seen = 0usize;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = flip {
                if (seen..seen + n).contains(&at) {
                    buf[at - seen] ^= 0x10;
                }
            }
            seen += n;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

#[test]
fn a_byte_spoiled_on_a_ram_channel_is_refused_and_the_source_runs_on() {
    // Inside a page (past the channel's hello and first unit header), and inside a later
    // unit's header.
    for at in [24 + 24 + 1000, 3 << 20] {
        let (l, target_url) = listener();
        let target = spawn_target(l, None);
        let url = spoiling_proxy(target_url, 1, at);
        let mut src = source(FRAMES);
        let err = migration::migrate(&mut src, &url, &opts(Protocol::V2, 2), &mut |_| {})
            .unwrap_err()
            .to_string();
        let terr = target.join().unwrap().unwrap_err();
        assert!(terr.contains("RAM channel 0"), "target at {at}: {terr}");
        assert!(err.contains("RAM channel 0"), "source at {at}: {err}");
        src.run(StopAt::Done).unwrap();
        assert_as_never_migrated(&mut src, FRAMES, &format!("at {at}: {err}"));
    }
}

/// A hostile target: it says hello (with RAM channels), accepts the source's channels and
/// keeps sending keep-alives on the main connection, but never reads a channel. The
/// source must give up within its peer timeout (a channel's deadline counts from its own
/// progress, not from the main connection's signs of life) and run on.
#[test]
fn a_target_that_never_reads_its_ram_channels_is_given_up_on() {
    use vmm::migration::clock::Liveness;
    use vmm::migration::control::{features, ControlWriter, Hello, KeepAliveThread};
    let (l, url) = listener();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let (main, _) = l.accept().unwrap();
        let live = Liveness::new("source", std::time::Duration::from_secs(30));
        let ctrl = ControlWriter::new(main.try_clone().unwrap(), live).unwrap();
        ctrl.send(&Hello {
            mdev_type: "vgpu-64".into(),
            stream_version: (vmm::stream::STREAM_MAJOR, vmm::stream::STREAM_MINOR),
            context_version: (
                state_region::format::FORMAT_MAJOR,
                state_region::format::FORMAT_MINOR,
            ),
            features: features::PROTOCOL_REGION
                | features::PROTOCOL_V2
                | features::MONOTONIC_ACK
                | features::KEEPALIVE
                | features::HANDOVER
                | features::MULTIFD,
            session: 5,
        })
        .unwrap();
        let _ka = KeepAliveThread::spawn(ctrl);
        // Hold the channels open, unread, until the test is over.
        let held: Vec<TcpStream> = (0..2).map(|_| l.accept().unwrap().0).collect();
        let _ = done_rx.recv_timeout(std::time::Duration::from_secs(120));
        drop((held, main));
    });
    let mut src = source(FRAMES);
    let o = SourceOptions {
        peer_timeout: std::time::Duration::from_secs(1),
        ..opts(Protocol::V2, 2)
    };
    let t = std::time::Instant::now();
    let err = migration::migrate(&mut src, &url, &o, &mut |_| {})
        .unwrap_err()
        .to_string();
    // A hang guard, not a speed check.
    assert!(t.elapsed() < std::time::Duration::from_secs(60), "{err}");
    assert!(err.contains("RAM channel"), "{err}");
    let _ = done_tx.send(());
    fake.join().unwrap();
    src.run(StopAt::Done).unwrap();
    assert_as_never_migrated(&mut src, FRAMES, &err);
}
