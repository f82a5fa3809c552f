//! Issue 7: the VMM drives any device that implements the `mdev_core` VFIO contract. A
//! second device that has nothing to do with graphics (`serial_sim`, a serial port in the
//! spirit of Linux's `mtty` sample) is run, snapshotted and restored, and live-migrated by
//! the same VMM code the vGPU uses, through `vmm`'s public API only.
//!
//! Every result is checked against a host-side computation of the bytes the guest must
//! have logged (an oracle written here from the documented transform, independent of the
//! device and driver code) and against a run that never stopped.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use pci_config_replay::crc32;
use serial_sim::compose::{self, SerialFactory, DEVICE_TYPE, LOG_CAP, PHASE_DONE};
use serial_sim::device::shared::lock;
use slog::{o, Discard, Logger};
use vmm::migration::source::SwitchoverAt;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::stream::{Record, StreamReader, StreamWriter, TrailerCheck};
use vmm::{StopAt, Vm, VmConfig, VmmError};

const SEED: u64 = 0x5eed_0007;
const VECTOR: u8 = 0x45;
const LIMIT: u64 = 3000;
const RAM: u64 = 4 << 20;

fn quiet() -> Logger {
    Logger::root(Discard, o!())
}

fn config(factory: SerialFactory, sinks: u32, regions: u64) -> VmConfig {
    let mut cfg = VmConfig::new(DEVICE_TYPE, Arc::new(factory), quiet());
    cfg.ram_size = RAM;
    cfg.irq_sink_base = sinks;
    cfg.bar_region_offset = regions;
    cfg
}

fn booted(factory: SerialFactory, limit: u64) -> Vm {
    let mut vm = Vm::new(&config(factory, 100, 0)).expect("create VM");
    compose::boot(&mut vm, SEED, limit, VECTOR).expect("boot");
    vm
}

/// The oracle: byte `i` sent is the low byte of splitmix64(seed + i); the device returns
/// `((b ^ key) rotl 3) + i` (mod 256) with `key = seed ^ 0x5a` (low byte).
fn expected_log(seed: u64, n: u64) -> Vec<u8> {
    let key = (seed as u8) ^ 0x5a;
    (0..n)
        .map(|i| {
            let mut z = seed.wrapping_add(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let b = (z ^ (z >> 31)) as u8;
            (b ^ key).rotate_left(3).wrapping_add(i as u8)
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// What a finished guest left: its log, checksum, and all of guest RAM.
#[derive(Debug, PartialEq, Eq)]
struct Finished {
    log: Vec<u8>,
    checksum: u32,
    ram: [u8; 32],
}

fn finish(vm: &mut Vm, limit: u64) -> Finished {
    vm.run(StopAt::Done).expect("run to done");
    let st = compose::status(vm).unwrap();
    assert_eq!(st.phase, PHASE_DONE);
    assert_eq!((st.sent, st.received), (limit, limit));
    let log = compose::receive_log(vm).unwrap();
    let expect = expected_log(SEED, limit);
    assert!(log == expect, "the guest's log differs from the oracle");
    assert_eq!(st.checksum, fnv1a(&expect));
    Finished {
        log,
        checksum: st.checksum,
        ram: vm.ram_digest(),
    }
}

/// A run that never stopped, to `limit` bytes.
fn reference(limit: u64) -> Finished {
    let mut vm = booted(SerialFactory::default(), limit);
    finish(&mut vm, limit)
}

#[test]
fn runs_to_done_and_logs_exactly_the_oracles_bytes() {
    let mut vm = booted(SerialFactory::default(), LIMIT);
    let done = finish(&mut vm, LIMIT);
    assert_eq!(done.log.len() as u64, LIMIT);
    // The VMM found the device by probing and placed its BARs; the guest enabled MSI-X.
    let bars: Vec<_> = vm.bars().iter().map(|b| (b.bar, b.guest_addr)).collect();
    assert_eq!(bars, vec![(0, compose::BAR0_GPA), (2, compose::BAR2_GPA)]);
    let routes = vm.routes();
    assert_eq!(routes.len(), 1);
    assert_eq!(
        (routes[0].address, routes[0].data),
        (0xfee0_0000, u32::from(VECTOR))
    );
    assert!(!routes[0].masked);
    assert_eq!(vm.command_count(), LIMIT, "the line moved every byte once");
}

/// Stop at `bytes` moved: RX data waiting and the interrupt raised but not yet handled.
fn stop_mid_stream(vm: &mut Vm, bytes: u64) {
    vm.run(StopAt::Command(bytes))
        .expect("run to the stop point");
    let dev = compose::serial_of(vm).expect("a serial VM");
    let d = lock(&dev);
    assert!(d.rx_level() > 0, "bytes wait in the RX FIFO");
    assert_ne!(d.isr(), 0, "the interrupt latch is set");
    drop(d);
    assert!(
        vm.vcpu().has_pending(),
        "the interrupt is pending at the vCPU"
    );
}

#[test]
fn snapshot_mid_stream_restores_into_a_fresh_vm_and_finishes_like_a_run_that_never_stopped() {
    let mut src = booted(SerialFactory::default(), LIMIT);
    stop_mid_stream(&mut src, 1234);
    let mut snap = Vec::new();
    vmm::snapshot::save(&mut src, &mut snap).expect("save");
    // Another host: other interrupt sinks, other region offsets.
    let host_b = config(SerialFactory::default(), 9000, 0x7_0000);
    let mut dst = vmm::snapshot::restore_with(&snap[..], &host_b).expect("restore");
    assert!(dst.vcpu().has_pending(), "the pending interrupt came along");
    assert_eq!(
        dst.command_count(),
        1234,
        "the device's byte counter came along"
    );
    let want = reference(LIMIT);
    assert_eq!(finish(&mut dst, LIMIT), want);
    // The source goes on too, and ends the same.
    vmm::snapshot::resume_source(&mut src).expect("resume the source");
    assert_eq!(finish(&mut src, LIMIT), want);
}

fn spawn_target(factory: SerialFactory) -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("tcp://{}", l.local_addr().expect("address"));
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            mdev_type: DEVICE_TYPE.into(),
            irq_sink_base: 4000,
            factory: Arc::new(factory),
            fail_at: None,
            bar_region_offset: 0x1_0000,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            log: quiet(),
        };
        migration::incoming(&l, &opts)
            .map(|(vm, _, _)| vm)
            .map_err(|e| e.to_string())
    });
    (url, h)
}

/// The device does no DMA; the VMM's source insists on a DMA dirty log, so the device
/// offers one that never reports a page.
const LIVE: SerialFactory = SerialFactory {
    v1_region: true,
    dma_log: true,
    migration_features: serial_sim::device::MIGRATION_FEATURES,
};

#[test]
fn live_migration_v2_with_an_interrupt_pending_finishes_like_a_run_that_never_stopped() {
    // The source's limit is the log's capacity, out of reach while pre-copy runs; the
    // target sets the real end (the host's knob), past every byte the guest had sent.
    let mut src = booted(LIVE, LOG_CAP);
    src.run(StopAt::Command(500)).unwrap();
    let (url, target) = spawn_target(LIVE);
    let opts = SourceOptions {
        protocol: Protocol::V2,
        switchover_at: SwitchoverAt::IrqPending,
        ..SourceOptions::default()
    };
    let res = migration::migrate(&mut src, &url, &opts, &mut |_| {});
    let dst = target.join().expect("target thread");
    let (report, _events) = res.expect("migration");
    let mut dst = dst.expect("target");
    assert_eq!(report.protocol, "v2");
    assert!(
        report.switchover.vcpu_irq_pending,
        "switched over with an interrupt pending"
    );
    assert!(
        report.bytes.device_stopcopy > 0,
        "the device state went in stop-copy"
    );
    let sent = compose::status(&dst).unwrap().sent;
    assert!(
        (500..LOG_CAP).contains(&sent),
        "mid-stream: {sent} bytes sent"
    );
    let limit = (sent + 2000).min(LOG_CAP);
    compose::set_limit(&mut dst, limit).unwrap();
    assert_eq!(finish(&mut dst, limit), reference(limit));
}

/// A device without a DMA dirty log (the uAPI makes DMA logging optional) and without a
/// v1 region migrates over v2: the VMM re-sends all backed guest RAM at stop-copy
/// instead of asking the device which pages it wrote.
#[test]
fn without_a_dma_log_or_a_v1_region_a_v2_migration_still_verifies() {
    let bare = SerialFactory {
        v1_region: false,
        dma_log: false,
        ..SerialFactory::default()
    };
    let mut src = booted(bare, LOG_CAP);
    src.run(StopAt::Command(700)).unwrap();
    let (url, target) = spawn_target(bare);
    let opts = SourceOptions {
        protocol: Protocol::V2,
        ..SourceOptions::default()
    };
    let (report, _events) =
        migration::migrate(&mut src, &url, &opts, &mut |_| {}).expect("migration");
    let mut dst = target.join().expect("target thread").expect("target");
    assert!(
        report.bytes.dma_ram > 0,
        "with no DMA log, backed RAM is re-sent at stop-copy as if DMA-dirtied"
    );
    let sent = compose::status(&dst).unwrap().sent;
    let limit = (sent + 2000).min(LOG_CAP);
    compose::set_limit(&mut dst, limit).unwrap();
    assert_eq!(finish(&mut dst, limit), reference(limit));
}

/// Re-encode `snap` with the device's state edited by `edit`, through the VMM's stream
/// writer (so the stream's own digests are good and only the device can catch the edit).
fn tamper(snap: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut r = StreamReader::new(snap, TrailerCheck::Enforce).unwrap();
    let mut device = Vec::new();
    let mut rest = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        match rec {
            Record::DeviceData(c) => device.extend_from_slice(&c),
            other => rest.push(other),
        }
    }
    assert_eq!(&device[..8], b"SERIALST", "the device's own format");
    edit(&mut device);
    let mut w = StreamWriter::new(Vec::new(), r.header()).unwrap();
    for rec in rest {
        match rec {
            Record::RamPages { gpa, data } => w.ram_pages(gpa, &data).unwrap(),
            Record::RamZero { gpa, pages } => w.ram_zero(gpa, pages).unwrap(),
            Record::DeviceEnd => {
                w.device_data(&device).unwrap();
                w.device_end().unwrap();
            }
            Record::Config(b) => w.config(&b).unwrap(),
            Record::Vcpu(b) => w.vcpu(&b).unwrap(),
            other => panic!("unexpected record in a snapshot: {other:?}"),
        }
    }
    w.finish().unwrap().0
}

/// Recompute the device state's own CRC after an edit.
fn reseal(state: &mut [u8]) {
    let end = state.len() - 4;
    let crc = crc32(&state[..end]);
    state[end..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_tampered_device_state_is_refused_by_the_device_and_the_source_runs_on() {
    let mut src = booted(SerialFactory::default(), LIMIT);
    stop_mid_stream(&mut src, 900);
    let mut snap = Vec::new();
    vmm::snapshot::save(&mut src, &mut snap).unwrap();
    let base = config(SerialFactory::default(), 9000, 0);
    // Unchanged, the re-encoded stream restores (the edit is what is refused).
    assert!(vmm::snapshot::restore_with(&tamper(&snap, |_| {})[..], &base).is_ok());

    // The RX level (payload offset 22, after the 16-byte header) over the FIFO's depth.
    let bad = tamper(&snap, |s| {
        s[16 + 22..16 + 24].copy_from_slice(&200u16.to_le_bytes());
        reseal(s);
    });
    match vmm::snapshot::restore_with(&bad[..], &base) {
        Err(VmmError::DeviceRejected { reason }) => assert!(
            reason.contains("RX FIFO level 200 is over its depth 32"),
            "{reason}"
        ),
        other => panic!("expected the device to refuse, got {other:?}"),
    }
    // A flipped bit, not resealed: the device's checksum.
    let bad = tamper(&snap, |s| s[40] ^= 1);
    let err = vmm::snapshot::restore_with(&bad[..], &base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum"), "{err}");
    // Another major version.
    let bad = tamper(&snap, |s| {
        s[8] = 2;
        reseal(s);
    });
    let err = vmm::snapshot::restore_with(&bad[..], &base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("version 2.0"), "{err}");

    vmm::snapshot::resume_source(&mut src).unwrap();
    assert_eq!(finish(&mut src, LIMIT), reference(LIMIT));
}

/// A device that offers v2 alone (the v1 region is deprecated in the uAPI) is snapshotted
/// through the v2 state machine and data stream: save, restore into a fresh VM, and both
/// finish like a run that never stopped.
#[test]
fn without_the_v1_region_a_snapshot_goes_through_v2() {
    let no_v1 = SerialFactory {
        v1_region: false,
        dma_log: true,
        ..SerialFactory::default()
    };
    let mut src = booted(no_v1, LIMIT);
    stop_mid_stream(&mut src, 777);
    let mut snap = Vec::new();
    vmm::snapshot::save(&mut src, &mut snap).expect("save over v2");
    let host_b = config(no_v1, 9000, 0x7_0000);
    let mut dst = vmm::snapshot::restore_with(&snap[..], &host_b).expect("restore over v2");
    assert_eq!(dst.command_count(), 777, "the device's state came along");
    let want = reference(LIMIT);
    assert_eq!(finish(&mut dst, LIMIT), want);
    vmm::snapshot::resume_source(&mut src).expect("resume the source");
    assert_eq!(finish(&mut src, LIMIT), want);
    // A tampered v2 snapshot is refused by the device.
    let mut src = booted(no_v1, LIMIT);
    stop_mid_stream(&mut src, 300);
    let mut snap = Vec::new();
    vmm::snapshot::save(&mut src, &mut snap).unwrap();
    let bad = tamper(&snap, |state| {
        let n = state.len();
        state[n - 1] ^= 1;
    });
    let e = vmm::snapshot::restore_with(&bad[..], &host_b)
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum"), "the device refused it: {e}");
}
