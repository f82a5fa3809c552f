//! The driver's x86-64 image on a KVM vCPU gives the same checksum log as the same driver
//! on the simulated vCPU. Where `/dev/kvm` is not usable, each test prints why and passes
//! without asserting (CI runs as root with `/dev/kvm`, so there they run).

use vgpu_migrate_tests::{booted, outcome, quiet, reference};
use vmm::{StopAt, Vm, VmmError};

/// The interrupt causes the guest's handler has seen (its state block in guest RAM).
fn irq_seen(vm: &mut Vm) -> u32 {
    let mut b = [0u8; 4];
    vm.guest_read(vgpu_sim::workload::layout::IRQ_SEEN_GPA, &mut b);
    u32::from_le_bytes(b)
}

fn kvm_usable() -> bool {
    match vmm::kvm::available() {
        Ok(()) => true,
        Err(e) => {
            println!("skipped: KVM is not usable here: {e}");
            false
        }
    }
}

#[test]
fn kvm_and_sim_give_the_same_checksum_log() {
    if !kvm_usable() {
        return;
    }
    const FRAMES: u64 = 4;
    for seed in [3, 8] {
        let want = reference("vgpu-64", FRAMES, seed);
        let mut vm = booted("vgpu-64", FRAMES, seed, 100);
        let rep = vm.run_kvm(StopAt::Done).expect("KVM run");
        let got = outcome(&mut vm, FRAMES);
        assert_eq!(got.checksums, want.checksums, "checksum log, seed {seed}");
        assert_eq!(got.gmem, want.gmem, "graphics memory, seed {seed}");
        assert!(rep.mmio_exits > 0, "the guest reached the device by MMIO");
        assert!(
            rep.irqfd_signals > 0,
            "the device signalled its vectors' irqfds"
        );
        assert_eq!(rep.msis, 0, "no interrupt took the VMM's queue");
        assert_ne!(
            irq_seen(&mut vm),
            0,
            "KVM injected them: the guest's handler saw interrupt causes"
        );
        assert!(rep.device_work > 0, "the device thread ran commands");
    }
}

#[test]
fn the_device_is_back_in_the_vm_after_a_kvm_run() {
    if !kvm_usable() {
        return;
    }
    // Four frames on KVM, then the frame limit raised and two more on the simulated vCPU:
    // the device, its PCI face and the driver's state (all in guest RAM and the device)
    // carry over. The guest reports done only between two driver steps, so nothing is
    // left half-written.
    let want = reference("vgpu-64", 6, 5);
    let mut vm = booted("vgpu-64", 4, 5, 100);
    vm.run_kvm(StopAt::Done).expect("KVM run");
    vgpu_platform::VgpuVm::set_frame_limit(&mut vm, 6).unwrap();
    vm.run(StopAt::Done).expect("the simulated vCPU finishes");
    assert_eq!(outcome(&mut vm, 6).checksums, want.checksums);
    let again = vm
        .run_kvm(StopAt::Done)
        .expect_err("the image boots once per VM");
    assert!(again.to_string().contains("boots once"), "{again}");
}

#[test]
fn a_guest_without_parameters_fails_with_a_clear_error() {
    if !kvm_usable() {
        return;
    }
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    let mut vm = Vm::new(&cfg).unwrap();
    // No firmware step and no workload parameters: the driver gives up.
    let err = vm.run_kvm(StopAt::Done).expect_err("no parameters");
    assert!(
        matches!(&err, VmmError::DriverFailed { why } if why.contains("gave up")),
        "{err}"
    );
}

#[test]
fn a_kvm_snapshot_taken_anywhere_restores_to_the_same_checksums() {
    if !kvm_usable() {
        return;
    }
    const FRAMES: u64 = 5;
    let want = reference("vgpu-64", FRAMES, 2);
    // Stop points inside the first frames: the vCPU is kicked out of the guest wherever it
    // is (inside a driver step, in the interrupt handler, halted), so its registers,
    // LAPIC (an MSI may be pending in its IRR) and events must all travel.
    for at in [20, 45, 70] {
        let mut src = booted("vgpu-64", FRAMES, 2, 100);
        src.run_kvm(StopAt::Command(at))
            .expect("KVM run to the stop point");
        assert!(src.on_kvm());
        assert_eq!(src.vcpu_record().unwrap().kind(), "kvm");
        let mut snap = Vec::new();
        vmm::snapshot::save(&mut src, &mut snap).expect("snapshot");
        drop(src);
        let mut dst = vgpu_platform::restore(&snap[..], &quiet(), Default::default(), 300).unwrap();
        assert!(dst.on_kvm(), "the restored guest goes on on KVM");
        dst.run_kvm(StopAt::Done).expect("restored KVM run");
        let got = outcome(&mut dst, FRAMES);
        assert_eq!(got.checksums, want.checksums, "stop at command {at}");
        assert_eq!(got.gmem, want.gmem, "graphics memory, stop at command {at}");
    }
}

#[test]
fn a_kvm_guest_stopped_inside_a_step_is_not_taken_over_by_the_simulated_vcpu() {
    if !kvm_usable() {
        return;
    }
    let mut vm = booted("vgpu-64", 3, 4, 100);
    vm.run_kvm(StopAt::Command(10)).expect("KVM run");
    let err = vm.run(StopAt::Done).expect_err("the CPU state is in KVM");
    assert!(err.to_string().contains("inside a driver step"), "{err}");
    // It goes on on KVM and ends as a run that never stopped.
    vm.run_kvm(StopAt::Done).expect("resumed KVM run");
    assert_eq!(
        outcome(&mut vm, 3).checksums,
        reference("vgpu-64", 3, 4).checksums
    );
}

#[test]
fn a_damaged_kvm_vcpu_record_is_refused() {
    if !kvm_usable() {
        return;
    }
    let mut vm = booted("vgpu-64", 2, 4, 100);
    vm.run_kvm(StopAt::Command(10)).expect("KVM run");
    let rec = vm.vcpu_record().unwrap().to_bytes();
    let good = vmm::vcpu::SavedVcpu::from_bytes(&rec).expect("round trip");
    assert_eq!(good.to_bytes(), rec);
    for cut in [8, rec.len() / 2, rec.len() - 1] {
        let e = vmm::vcpu::SavedVcpu::from_bytes(&rec[..cut]).expect_err("truncated");
        assert!(e.to_string().starts_with("KVM vCPU state"), "{e}");
    }
    let mut bad = rec.clone();
    bad[8] ^= 0xff; // the version
    assert!(vmm::vcpu::SavedVcpu::from_bytes(&bad).is_err());
}
