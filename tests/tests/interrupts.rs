//! Interrupts across a migration (issue 4): an interrupt raised just before switchover is
//! delivered on the target through the rebuilt route; a masked MSI-X vector with its PBA
//! bit set stays pending on the target until the guest unmasks it, then fires.
//!
//! Targets use other interrupt sink ids than their sources (`irq_sink_base`): the VMM
//! drops a signal whose route names another host's sink, so a delivery on the target
//! proves the route was rebuilt on the target's resources.

use std::net::TcpListener;
use std::thread::JoinHandle;
use vgpu_platform::VgpuVm;

use vgpu_migrate_tests::{outcome, quiet, reference, small_params};
use vgpu_sim::regs::{MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, REG_IIR};
use vgpu_sim::workload::layout::{BAR0_GPA, MSI_VECTOR, STATE_GPA};
use vgpu_sim::DirtyTracking;
use vmm::migration::source::SwitchoverAt;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::snapshot;
use vmm::vcpu::Vcpu;
use vmm::{StopAt, Vm};

const FRAMES: u64 = 6;
const SEED: u64 = 57;
const SOURCE_SINKS: u32 = 100;
const SNAPSHOT_SINKS: u32 = 300;
const LIVE_SINKS: u32 = 4000;
/// MSI-X table entry 0's Vector Control dword (PCIe Base 4.0 §7.7.2): bit 0 masks.
const VECTOR_CONTROL: u64 = BAR0_GPA + MSIX_TABLE_OFFSET + 12;
const MSIX_MASKED: u32 = 1;
/// A frame limit pre-copy cannot reach.
const MAX_FRAMES: u64 = 10_000;
/// Where the guest driver counts the frames it has submitted (its state block).
const DRIVER_FRAME: u64 = STATE_GPA + 16;

fn booted(frames: u64) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    cfg.irq_sink_base = SOURCE_SINKS;
    let mut vm = Vm::new(&cfg).expect("create VM");
    vm.boot(&small_params(frames, SEED)).expect("boot");
    vm
}

fn via_snapshot(src: &mut Vm, sinks: u32) -> Vm {
    let mut snap = Vec::new();
    snapshot::save(src, &mut snap).expect("snapshot");
    vgpu_platform::restore(&snap[..], &quiet(), DirtyTracking::ShadowPt, sinks).expect("restore")
}

fn spawn_target() -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("tcp://{}", l.local_addr().expect("local address"));
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0x2_0000,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type: "vgpu-64".into(),
            irq_sink_base: LIVE_SINKS,
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

fn live(src: &mut Vm, opts: &SourceOptions) -> (Vm, migration::SourceReport) {
    let (url, target) = spawn_target();
    let res = migration::migrate(src, &url, opts, &mut |_| {});
    let dst = target.join().expect("target thread");
    let (report, _) = res.expect("migration");
    (dst.expect("target"), report)
}

fn irr_has(vm: &mut Vm, vector: u32) -> bool {
    let irr = vm.vcpu().state().irr;
    irr[(vector / 64) as usize] & (1 << (vector % 64)) != 0
}

fn pba(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(BAR0_GPA + MSIX_PBA_OFFSET, &mut b);
    u64::from_le_bytes(b)
}

fn submitted_frames(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(DRIVER_FRAME, &mut b);
    u64::from_le_bytes(b)
}

fn guest_write32(vm: &mut Vm, gpa: u64, v: u32) {
    vm.guest_write(gpa, &v.to_le_bytes());
}

/// Steps the device one command at a time (the guest runs a step only when the device
/// has nothing to do) until it has raised an interrupt the vCPU has not handled yet.
fn stop_with_irq_pending(vm: &mut Vm) {
    for _ in 0..100_000 {
        if vm.vcpu().has_pending() {
            return;
        }
        if vm.step_device(1) == 0 {
            vm.step(0);
        }
    }
    panic!("no interrupt was raised");
}

/// The target must show the interrupt the source raised and its guest never handled,
/// handle it (the driver acknowledges IIR), and finish as a run that never moved.
fn handle_and_finish(dst: &mut Vm) {
    handle_and_finish_at(dst, FRAMES);
}

fn handle_and_finish_at(dst: &mut Vm, frames: u64) {
    assert!(irr_has(dst, MSI_VECTOR), "the pending vector travelled");
    assert_ne!(dst.reg(REG_IIR), 0, "the device's IIR travelled");
    // One vCPU step, no device commands: the driver's handler runs and acknowledges.
    dst.step(0);
    assert_eq!(
        dst.reg(REG_IIR),
        0,
        "the driver acknowledged it on the target"
    );
    dst.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(dst, frames),
        reference("vgpu-64", frames, SEED),
        "bit-identical to a run that never moved"
    );
}

#[test]
fn interrupt_raised_just_before_a_snapshot_is_handled_on_the_target() {
    let mut src = booted(FRAMES);
    src.run(StopAt::Frame(2)).unwrap();
    stop_with_irq_pending(&mut src);
    assert_ne!(src.reg(REG_IIR), 0);
    let mut snap = Vec::new();
    snapshot::save(&mut src, &mut snap).unwrap();

    let mut dst =
        vgpu_platform::restore(&snap[..], &quiet(), DirtyTracking::ShadowPt, SNAPSHOT_SINKS)
            .unwrap();
    assert_eq!(dst.routes()[0].sink, SNAPSHOT_SINKS);
    handle_and_finish(&mut dst);

    // The vCPU's IRR carried the vector above. Without it (a VMM that lost it), the device
    // re-arms on resume because IIR & IER is still set, and that signal reaches the vCPU
    // only through the target's rebuilt route (another sink id than the source's).
    let mut dst = vgpu_platform::restore(
        &snap[..],
        &quiet(),
        DirtyTracking::ShadowPt,
        SNAPSHOT_SINKS + 50,
    )
    .unwrap();
    *dst.vcpu() = Vcpu::new();
    dst.step_device(0); // no commands: only the queued signals are routed
    handle_and_finish(&mut dst);
}

#[test]
fn interrupt_pending_at_live_switchover_is_handled_on_the_target() {
    for protocol in [Protocol::Region, Protocol::V2] {
        // The source runs on during pre-copy, as fast as the host lets it: a workload of
        // FRAMES may be finished before the switchover point, and then no interrupt ever
        // comes. So the source's frame limit is out of reach, and the target's host sets
        // the limit (the knob in the guest's parameter block) a little past the frame the
        // driver was submitting; the reference renders as many frames.
        let mut src = booted(MAX_FRAMES);
        src.run(StopAt::Frame(1)).unwrap();
        let opts = SourceOptions {
            protocol,
            switchover_at: SwitchoverAt::IrqPending,
            ..SourceOptions::default()
        };
        let (mut dst, report) = live(&mut src, &opts);
        assert!(report.switchover.vcpu_irq_pending, "{protocol:?}");
        assert_ne!(report.switchover.iir, 0, "{protocol:?}");
        assert_eq!(dst.routes()[0].sink, LIVE_SINKS);
        let frames = submitted_frames(&mut dst) + 2;
        dst.set_frame_limit(frames).unwrap();
        handle_and_finish_at(&mut dst, frames);
    }
}

/// The source masks vector 0 and runs until the device raises an interrupt: it becomes
/// pending in the PBA and nothing reaches the vCPU.
fn masked_with_pba_set(frames: u64) -> Vm {
    let mut vm = booted(frames);
    vm.run(StopAt::Frame(2)).unwrap();
    guest_write32(&mut vm, VECTOR_CONTROL, MSIX_MASKED);
    assert!(vm.routes()[0].masked, "the route follows the guest's mask");
    for _ in 0..100_000 {
        if pba(&mut vm) & 1 != 0 {
            break;
        }
        // One command per step, so the loop stops right after the interrupt is raised.
        vm.step(1);
    }
    assert_eq!(pba(&mut vm) & 1, 1, "the masked vector is pending");
    assert!(!vm.vcpu().has_pending(), "a masked vector delivers nothing");
    assert_ne!(vm.reg(REG_IIR), 0);
    vm
}

/// On the target: still pending behind the mask while the guest runs every frame; fires
/// through the target's route when the guest unmasks it; then finishes as a run that never
/// moved.
fn pending_until_unmasked(dst: &mut Vm, sinks: u32) {
    let r = dst.routes()[0];
    assert!(r.masked);
    assert_eq!(r.sink, sinks);
    assert_eq!(pba(dst) & 1, 1, "the PBA bit travelled");
    assert!(!dst.vcpu().has_pending());
    // Every frame renders without interrupts; the vector stays masked and pending.
    dst.run(StopAt::Frame(FRAMES)).unwrap();
    for _ in 0..50 {
        dst.step(vmm::vm::DEFAULT_BUDGET);
        assert!(!dst.vcpu().has_pending(), "nothing delivered while masked");
    }
    assert_eq!(pba(dst) & 1, 1, "still pending");
    assert_ne!(dst.reg(REG_IIR), 0, "nobody acknowledged the device");

    // The guest unmasks: the pending vector fires now, through the target's route.
    guest_write32(dst, VECTOR_CONTROL, 0);
    assert!(!dst.routes()[0].masked);
    assert!(irr_has(dst, MSI_VECTOR), "the unmasked vector fired");
    assert_eq!(pba(dst), 0, "firing cleared the PBA bit");
    dst.step(0);
    assert_eq!(dst.reg(REG_IIR), 0, "the driver's handler acknowledged it");
    dst.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(dst, FRAMES),
        reference("vgpu-64", FRAMES, SEED),
        "bit-identical to a run that never moved"
    );
}

#[test]
fn masked_vector_stays_pending_across_a_snapshot_until_unmasked() {
    let mut src = masked_with_pba_set(FRAMES);
    let mut dst = via_snapshot(&mut src, SNAPSHOT_SINKS);
    assert_eq!(
        vgpu_platform::device_config_state(&mut dst),
        vgpu_platform::device_config_state(&mut src),
        "PBA and mask replayed as saved"
    );
    pending_until_unmasked(&mut dst, SNAPSHOT_SINKS);
}

#[test]
fn masked_vector_stays_pending_across_a_live_migration_until_unmasked() {
    let mut src = masked_with_pba_set(FRAMES);
    let (mut dst, _) = live(
        &mut src,
        &SourceOptions {
            protocol: Protocol::V2,
            ..SourceOptions::default()
        },
    );
    pending_until_unmasked(&mut dst, LIVE_SINKS);
}
