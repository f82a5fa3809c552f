//! Issue 4 at VM level: the target rebuilds, from the migrated config space, what the guest
//! programmed (where each BAR sits, where each interrupt goes) on its own host resources.
//!
//! Every target here has host resources that differ from its source's: other interrupt
//! sink ids (`irq_sink_base`) and other BAR region offsets (`bar_region_offset`), so a BAR
//! map or route resolved against the wrong host's resources cannot work by accident of
//! equal numbers. Snapshot hops use [`restore_with`] (the steps of
//! `vmm::snapshot::restore`, with the target's host resources chosen by the test) or
//! `vmm::snapshot::restore` itself; live hops use `vmm::migration::{migrate, incoming}`.

use std::net::TcpListener;
use std::thread::JoinHandle;
use vgpu_platform::VgpuVm;

use pci_config_replay::{ConfigSpaceState, HostRegion, InterruptKind};
use vgpu_migrate_tests::{outcome, quiet, reference, small_params, Outcome};
use vgpu_sim::regs::{BAR0_SIZE, ID_VALUE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, REG_ID, REG_IIR};
use vgpu_sim::workload::layout::{
    BAR0_GPA, BAR2_GPA, ECAM_GPA, MSI_ADDRESS, MSI_VECTOR, STATE_GPA,
};
use vgpu_sim::workload::{self, GuestBus};
use vgpu_sim::DirtyTracking;
use vmm::bus::Target;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::snapshot;
use vmm::stream::{Record, StreamReader, StreamWriter, TrailerCheck};
use vmm::vcpu::Vcpu;
use vmm::{StopAt, Vm, VmConfig};

const FRAMES: u64 = 6;
const SEED: u64 = 41;
/// Graphics memory (and BAR2 size) of `vgpu-64`.
const GMEM_64: u64 = 64 << 20;
/// Where the guest moves BAR0 and BAR2 between two migrations (BAR2 above 4 GiB, so the
/// upper dword of the 64-bit BAR matters).
const NEW_BAR0: u64 = 0xd000_0000;
const NEW_BAR2: u64 = 0x8_0000_0000;
/// PCI config offsets (the guest's own "headers").
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_BAR0: u64 = 0x10;
const PCI_BAR2: u64 = 0x18;
/// Where the guest driver keeps the BAR addresses it found at boot (its state block).
const DRIVER_BAR0: u64 = STATE_GPA + 24;
const DRIVER_BAR2: u64 = STATE_GPA + 32;
/// MSI-X table entry 0 fields (PCIe Base 4.0 §7.7.2): message data, vector control.
const MSIX_DATA: u64 = MSIX_TABLE_OFFSET + 8;
const MSIX_VECTOR_CONTROL: u64 = MSIX_TABLE_OFFSET + 12;
/// The vector the guest moves its device interrupt to.
const NEW_VECTOR: u32 = 0x42;

/// Host resources of one VMM: interrupt sink base and BAR region offset.
#[derive(Debug, Clone, Copy)]
struct Host {
    sinks: u32,
    regions: u64,
}

const HOST_A: Host = Host {
    sinks: 100,
    regions: 0x10_0000_0000,
};
const HOST_B: Host = Host {
    sinks: 7000,
    regions: 0x3_0000_0000,
};
const HOST_C: Host = Host {
    sinks: 9100,
    regions: 0x55_0000_0000,
};
/// What `vmm::snapshot::restore` builds (and `vmm::migration::incoming` with the default
/// options): the sink base it is given and the default region offset.
const fn default_host(sinks: u32) -> Host {
    Host { sinks, regions: 0 }
}

fn config(host: Host) -> VmConfig {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", quiet());
    cfg.ram_size = 64 << 20;
    cfg.irq_sink_base = host.sinks;
    cfg.bar_region_offset = host.regions;
    cfg
}

fn booted_on(host: Host) -> Vm {
    let mut vm = Vm::new(&config(host)).expect("create VM");
    vm.boot(&small_params(FRAMES, SEED)).expect("boot");
    vm
}

fn save(vm: &mut Vm) -> Vec<u8> {
    let mut snap = Vec::new();
    snapshot::save(vm, &mut snap).expect("snapshot");
    snap
}

/// `vmm::snapshot::restore_with` onto a VM built for `host`.
fn restore_with(snap: &[u8], host: Host) -> Result<Vm, String> {
    snapshot::restore_with(snap, &config(host)).map_err(|e| e.to_string())
}

fn spawn_target(host: Host) -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("tcp://{}", l.local_addr().expect("local address"));
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: host.regions,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type: "vgpu-64".into(),
            irq_sink_base: host.sinks,
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

/// Live-migrate `src` to a target on a thread built for `host`; returns the running target.
fn migrate_live(src: &mut Vm, host: Host, protocol: Protocol) -> Vm {
    let (url, target) = spawn_target(host);
    let opts = SourceOptions {
        protocol,
        ..SourceOptions::default()
    };
    let res = migration::migrate(src, &url, &opts, &mut |_| {});
    let dst = target.join().expect("target thread");
    res.expect("migration");
    dst.expect("target")
}

/// The first hop of a two-hop test: A renders `frames` frames and goes idle, then moves
/// live to a target with sink base `sinks`, which raises the frame limit to [`FRAMES`]
/// (the host's knob, as in `live_migration.rs`). Pre-copy lets the source run on, so only
/// an idle source leaves a known amount of work for the hops after this one.
fn first_hop_live(frames: u64, sinks: u32, protocol: Protocol) -> Vm {
    let mut a = Vm::new(&config(HOST_A)).expect("create VM");
    a.boot(&small_params(frames, SEED)).expect("boot");
    a.run(StopAt::Done).unwrap();
    let host = Host {
        sinks,
        regions: 0x7_0000_0000,
    };
    let mut b = migrate_live(&mut a, host, protocol);
    assert_rebuilt(&mut a, &mut b, host);
    assert_eq!(b.completed_frames(), frames);
    b.set_frame_limit(FRAMES).unwrap();
    b
}

/// Checks what the target rebuilt against what the source had at save time: identical
/// config state (bytes, MSI-X table, PBA), the same guest BAR addresses on the target's
/// regions, the same guest MSI-X programming on the target's sinks.
fn assert_rebuilt(src: &mut Vm, dst: &mut Vm, dst_host: Host) {
    let s = vgpu_platform::device_config_state(src).unwrap();
    let d = vgpu_platform::device_config_state(dst).unwrap();
    assert_eq!(d.config[..], s.config[..], "config bytes");
    assert_eq!(d, s, "config state (bytes, MSI-X table, PBA)");

    assert_eq!(src.bars().len(), 2, "source decodes BAR0 and BAR2");
    assert_eq!(dst.bars().len(), src.bars().len());
    for (sb, db) in src.bars().iter().zip(dst.bars()) {
        assert_eq!(
            (db.bar, db.guest_addr, db.size, db.prefetchable),
            (sb.bar, sb.guest_addr, sb.size, sb.prefetchable),
            "BAR{} as the guest placed it",
            sb.bar
        );
        assert_eq!(db.region, HostRegion::vfio_bar(db.bar, dst_host.regions));
        assert_ne!(db.region, sb.region, "the hosts' regions differ");
    }
    assert_eq!(
        dst.bars(),
        &d.bar_map(&dst.host_resources()).expect("BAR map")[..]
    );

    assert!(!src.routes().is_empty(), "the guest enabled MSI-X");
    assert_eq!(dst.routes().len(), src.routes().len());
    for (sr, dr) in src.routes().iter().zip(dst.routes()) {
        assert_eq!(
            (dr.kind, dr.vector, dr.address, dr.data, dr.masked),
            (sr.kind, sr.vector, sr.address, sr.data, sr.masked),
            "vector {} as the guest programmed it",
            sr.vector
        );
        assert_eq!(dr.sink, dst_host.sinks + u32::from(dr.vector));
        assert_ne!(dr.sink, sr.sink, "the hosts' sinks differ");
    }
}

/// The BAR map and route of a guest that never moved anything.
fn assert_boot_layout(vm: &Vm) {
    let bars: Vec<_> = vm
        .bars()
        .iter()
        .map(|b| (b.bar, b.guest_addr, b.size))
        .collect();
    assert_eq!(bars, vec![(0, BAR0_GPA, BAR0_SIZE), (2, BAR2_GPA, GMEM_64)]);
    let r = vm.routes()[0];
    assert_eq!(
        (r.kind, r.vector, r.address, r.data, r.masked),
        (InterruptKind::Msix, 0, MSI_ADDRESS, MSI_VECTOR, false)
    );
}

#[test]
fn snapshot_restore_rebuilds_bars_and_routes_on_other_host_resources() {
    let want = reference("vgpu-64", FRAMES, SEED);
    let mut src = booted_on(HOST_A);
    src.run(StopAt::Frame(2)).unwrap();
    // Mid-batch, so the engine is busy across the move.
    let c = src.command_count() + 5;
    src.run(StopAt::Command(c)).unwrap();
    let snap = save(&mut src);
    assert_boot_layout(&src);

    for host in [HOST_B, default_host(300)] {
        let mut dst = if host.regions == 0 {
            vgpu_platform::restore(&snap[..], &quiet(), DirtyTracking::ShadowPt, host.sinks)
                .unwrap()
        } else {
            restore_with(&snap, host).unwrap()
        };
        assert_rebuilt(&mut src, &mut dst, host);
        assert_boot_layout(&dst);
        dst.run(StopAt::Done).unwrap();
        assert_eq!(outcome(&mut dst, FRAMES), want, "target {host:?}");
    }
}

#[test]
fn live_migration_rebuilds_bars_and_routes_on_other_host_resources() {
    let want = reference("vgpu-64", FRAMES, SEED);
    for protocol in [Protocol::Region, Protocol::V2] {
        let mut src = booted_on(HOST_A);
        src.run(StopAt::Frame(2)).unwrap();
        let mut dst = migrate_live(&mut src, default_host(4000), protocol);
        // The source stopped at switchover: its config is what it was at save time.
        assert_rebuilt(&mut src, &mut dst, default_host(4000));
        assert_boot_layout(&dst);
        dst.run(StopAt::Done).unwrap();
        assert_eq!(outcome(&mut dst, FRAMES), want, "{protocol:?}");
    }
}

/// The guest's CPU, as a bus for the driver's own code (its interrupt handler).
struct GuestCpu<'a>(&'a mut Vm);

impl GuestBus for GuestCpu<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        self.0.guest_read(gpa, buf);
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) {
        self.0.guest_write(gpa, buf);
    }
}

fn read32(vm: &mut Vm, gpa: u64) -> u32 {
    GuestCpu(vm).read_u32(gpa)
}

fn write32(vm: &mut Vm, gpa: u64, v: u32) {
    GuestCpu(vm).write_u32(gpa, v);
}

fn read16(vm: &mut Vm, gpa: u64) -> u16 {
    let mut b = [0u8; 2];
    vm.guest_read(gpa, &mut b);
    u16::from_le_bytes(b)
}

/// The guest moves BAR0 and BAR2 as an OS rebalancing its MMIO would: memory decode off,
/// new addresses (both dwords), decode back on; then its driver re-reads the BARs into
/// the state block it keeps in RAM. Every access is a guest write through the VM's bus.
fn move_bars(vm: &mut Vm, bar0: u64, bar2: u64) {
    let cmd = read16(vm, ECAM_GPA + PCI_COMMAND);
    assert_ne!(cmd & PCI_COMMAND_MEMORY, 0, "the driver enabled decode");
    vm.guest_write(
        ECAM_GPA + PCI_COMMAND,
        &(cmd & !PCI_COMMAND_MEMORY).to_le_bytes(),
    );
    assert!(
        vm.bars().is_empty(),
        "decode off: the VMM unmapped both BARs"
    );
    for (reg, addr) in [(PCI_BAR0, bar0), (PCI_BAR2, bar2)] {
        write32(vm, ECAM_GPA + reg, addr as u32);
        write32(vm, ECAM_GPA + reg + 4, (addr >> 32) as u32);
    }
    vm.guest_write(ECAM_GPA + PCI_COMMAND, &cmd.to_le_bytes());
    // The driver re-reads its BARs (the address bits of each 64-bit BAR).
    for (reg, slot) in [(PCI_BAR0, DRIVER_BAR0), (PCI_BAR2, DRIVER_BAR2)] {
        let lo = u64::from(read32(vm, ECAM_GPA + reg) & !0xf);
        let hi = u64::from(read32(vm, ECAM_GPA + reg + 4));
        vm.guest_write(slot, &((hi << 32) | lo).to_le_bytes());
    }
}

/// A run that never migrates, whose guest moves its BARs as the migrated one does: the
/// only guest-RAM difference from the plain reference is where the driver notes its BARs.
fn moved_reference() -> Outcome {
    let mut vm = booted_on(HOST_A);
    vm.run(StopAt::Frame(1)).unwrap();
    move_bars(&mut vm, NEW_BAR0, NEW_BAR2);
    vm.run(StopAt::Done).unwrap();
    outcome(&mut vm, FRAMES)
}

#[test]
fn a_guest_that_moves_its_bars_between_two_migrations() {
    let want = reference("vgpu-64", FRAMES, SEED);
    let want_moved = moved_reference();
    assert_eq!(want_moved.checksums, want.checksums);
    assert_eq!(want_moved.gmem, want.gmem);

    // A -> B live.
    let mut b = first_hop_live(2, 4000, Protocol::V2);

    // On B the guest moves both BARs, then works on through the new BAR0.
    move_bars(&mut b, NEW_BAR0, NEW_BAR2);
    let bars: Vec<_> = b.bars().iter().map(|m| (m.bar, m.guest_addr)).collect();
    assert_eq!(bars, vec![(0, NEW_BAR0), (2, NEW_BAR2)]);
    b.run(StopAt::Frame(4)).unwrap();

    // B -> C by snapshot, mid-batch.
    let c = b.command_count() + 3;
    b.run(StopAt::Command(c)).unwrap();
    let snap = save(&mut b);
    let mut c = restore_with(&snap, HOST_C).unwrap();
    assert_rebuilt(&mut b, &mut c, HOST_C);
    let bars: Vec<_> = c
        .bars()
        .iter()
        .map(|m| (m.bar, m.guest_addr, m.size))
        .collect();
    assert_eq!(bars, vec![(0, NEW_BAR0, BAR0_SIZE), (2, NEW_BAR2, GMEM_64)]);
    // The old addresses are unbacked on C; the new ones reach the device.
    for old in [BAR0_GPA, BAR2_GPA] {
        assert_eq!(
            vmm::bus::decode(
                c.memory(),
                vgpu_sim::workload::layout::ECAM_GPA,
                &c.bars(),
                old,
                4
            ),
            Target::Unbacked,
            "{old:#x}"
        );
    }
    assert_eq!(read32(&mut c, BAR0_GPA + u64::from(REG_ID)), u32::MAX);
    assert_eq!(read32(&mut c, NEW_BAR0 + u64::from(REG_ID)), ID_VALUE);
    assert_eq!(
        vmm::bus::decode(
            c.memory(),
            vgpu_sim::workload::layout::ECAM_GPA,
            &c.bars(),
            NEW_BAR2,
            8
        ),
        Target::Region(2, HOST_C.regions)
    );
    c.run(StopAt::Done).unwrap();
    let got = outcome(&mut c, FRAMES);
    assert_eq!(got.checksums, want.checksums);
    assert_eq!(got.gmem, want.gmem);
    assert_eq!(
        got, want_moved,
        "identical to the run that moved without migrating"
    );
}

fn irr_has(vm: &mut Vm, vector: u32) -> bool {
    let irr = vm.vcpu().state().irr;
    irr[(vector / 64) as usize] & (1 << (vector % 64)) != 0
}

/// Runs the guest with its device interrupt on [`NEW_VECTOR`] until `stop` holds; returns
/// how many interrupts arrived there.
///
/// The simulated vCPU hands each vector to the workload driver, whose handler only knows
/// 0x41 (an IDT with one entry). A guest OS that moves a device's interrupt to another
/// vector moves the handler with it; this loop is that IDT entry: when NEW_VECTOR is
/// pending it takes it from the vCPU's IRR and runs the driver's handler, as the vCPU runs
/// it for 0x41. The device's interrupts must arrive at NEW_VECTOR and never at 0x41.
fn run_on_new_vector(vm: &mut Vm, mut stop: impl FnMut(&mut Vm, vmm::GuestStep) -> bool) -> u32 {
    let mut delivered = 0;
    // Signals queued at restore (the device's re-arm) reach the IRR before a step.
    vm.step_device(0);
    let mut last = vmm::GuestStep::Progress;
    for _ in 0..200_000 {
        assert!(
            !irr_has(vm, MSI_VECTOR),
            "an interrupt arrived at the old vector"
        );
        if irr_has(vm, NEW_VECTOR) {
            let mut st = vm.vcpu().state();
            st.irr[(NEW_VECTOR / 64) as usize] &= !(1 << (NEW_VECTOR % 64));
            *vm.vcpu() = Vcpu::from_state(&st);
            workload::interrupt(&mut GuestCpu(vm), MSI_VECTOR);
            delivered += 1;
            continue;
        }
        if stop(vm, last) {
            return delivered;
        }
        last = vm.step(vmm::vm::DEFAULT_BUDGET).0;
    }
    panic!("the guest did not reach its stop point");
}

#[test]
fn a_guest_that_reprograms_msix_between_two_migrations() {
    let want = reference("vgpu-64", FRAMES, SEED);

    // A -> B live.
    let mut b = first_hop_live(2, 4000, Protocol::Region);

    // On B the guest handles what is pending, then moves vector 0 to NEW_VECTOR: mask,
    // new data, unmask (PCIe Base 4.0 §6.1.4.5: program a masked entry).
    while b.vcpu().has_pending() {
        b.step(0);
    }
    let table = BAR0_GPA;
    write32(&mut b, table + MSIX_VECTOR_CONTROL, 1);
    write32(&mut b, table + MSIX_DATA, NEW_VECTOR);
    write32(&mut b, table + MSIX_VECTOR_CONTROL, 0);
    let r = b.routes()[0];
    assert_eq!((r.data, r.masked, r.sink), (NEW_VECTOR, false, 4000));
    let on_b = run_on_new_vector(&mut b, |vm, _| vm.completed_frames() >= 4);
    assert!(
        on_b > 0,
        "B's vCPU took the device's interrupts at the new vector"
    );

    // B -> C by snapshot (a pending NEW_VECTOR, if any, travels in the vCPU's IRR).
    let snap = save(&mut b);
    let mut c = restore_with(&snap, HOST_C).unwrap();
    assert_rebuilt(&mut b, &mut c, HOST_C);
    let r = c.routes()[0];
    assert_eq!(
        (r.kind, r.vector, r.address, r.data, r.masked, r.sink),
        (
            InterruptKind::Msix,
            0,
            MSI_ADDRESS,
            NEW_VECTOR,
            false,
            HOST_C.sinks
        )
    );
    let on_c = run_on_new_vector(&mut c, |vm, out| {
        out == vmm::GuestStep::Done && !vm.vcpu().has_pending()
    });
    assert!(
        on_c > 0,
        "C's vCPU took the device's interrupts at the new vector"
    );
    assert_eq!(c.reg(REG_IIR), 0, "every interrupt was handled");
    assert_eq!(outcome(&mut c, FRAMES), want);
}

/// Re-encodes a snapshot with its CONFIG record changed by `tamper` (new CRC, new stream
/// digest: only the content is wrong).
fn tampered(snap: &[u8], tamper: impl Fn(&mut ConfigSpaceState)) -> Vec<u8> {
    let mut r = StreamReader::new(snap, TrailerCheck::Enforce).unwrap();
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&mut out, r.header()).unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        match rec {
            Record::RamPages { gpa, data } => w.ram_pages(gpa, &data),
            Record::RamZero { gpa, pages } => w.ram_zero(gpa, pages),
            Record::DeviceData(d) => w.device_data(&d),
            Record::DeviceEnd => w.device_end(),
            Record::Config(b) => {
                let mut st = ConfigSpaceState::from_bytes(&b).unwrap();
                tamper(&mut st);
                w.config(&st.to_bytes())
            }
            Record::Vcpu(b) => w.vcpu(&b),
            Record::Sync { seq } => w.sync(seq),
            Record::Switchover { stopped_ns } => w.switchover(stopped_ns),
        }
        .unwrap();
    }
    w.finish().unwrap();
    out
}

#[test]
fn mismatched_read_only_bits_and_bar_sizes_are_refused() {
    let mut src = booted_on(HOST_A);
    src.run(StopAt::Frame(1)).unwrap();
    let snap = save(&mut src);
    let restore = |s: &[u8]| vgpu_platform::restore(s, &quiet(), DirtyTracking::ShadowPt, 300);

    // Control: the re-encoding itself is faithful.
    let same = tampered(&snap, |_| {});
    let mut ok = restore(&same).expect("an untampered re-encoding restores");
    assert_eq!(
        vgpu_platform::device_config_state(&mut ok),
        vgpu_platform::device_config_state(&mut src)
    );
    ok.run(StopAt::Done).unwrap();
    assert_eq!(outcome(&mut ok, FRAMES), reference("vgpu-64", FRAMES, SEED));

    // Another device ID (read-only at 0x02).
    let other_id = tampered(&snap, |st| {
        st.config[2..4].copy_from_slice(&0x1913u16.to_le_bytes());
    });
    let err = restore(&other_id).expect_err("another device ID must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("device ID") && msg.contains("0x1913") && msg.contains("0x1912"),
        "{msg}"
    );
    let err = restore_with(&other_id, HOST_B).expect_err("refused on any host");
    assert!(err.contains("device ID"), "{err}");

    // Another BAR2 size (a 128 MiB aperture saved, a 64 MiB target).
    let bigger = tampered(&snap, |st| st.bar_sizes[2] = 128 << 20);
    let msg = restore(&bigger).expect_err("BAR size").to_string();
    assert!(
        msg.contains("BAR2 size differs") && msg.contains("0x8000000") && msg.contains("0x4000000"),
        "{msg}"
    );
}

#[test]
fn host_side_accesses_follow_the_guest_bar_map() {
    // guest_read/guest_write go through the BAR map: BAR0 reaches the registers and the
    // MSI-X table wherever this host's region sits; ECAM reaches config space.
    let mut vm = booted_on(HOST_B);
    vm.run(StopAt::Frame(1)).unwrap();
    assert_eq!(read32(&mut vm, BAR0_GPA + u64::from(REG_ID)), ID_VALUE);
    assert_eq!(read32(&mut vm, BAR0_GPA + MSIX_DATA), MSI_VECTOR);
    let mut pba = [0u8; 8];
    vm.guest_read(BAR0_GPA + MSIX_PBA_OFFSET, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
    assert_eq!(
        u32::from(read16(&mut vm, ECAM_GPA + 2)),
        u32::from(vgpu_sim::types::DEVICE_ID)
    );
    assert_eq!(
        vmm::bus::decode(
            vm.memory(),
            vgpu_sim::workload::layout::ECAM_GPA,
            &vm.bars(),
            BAR0_GPA + 0x10,
            4
        ),
        Target::Region(0, HOST_B.regions + 0x10)
    );
}
