//! The device in its own process (`vgpu-migrate serve`), driven through vfio-user by the
//! VMM's client: the same checksum log as in process; live migration between two VMMs,
//! each with its own device process, over v2 and the v1 region, verified against a run
//! that never migrated; the negative control; a non-vGPU device; a device process killed
//! during pre-copy; malformed messages sent to a live server; and guest RAM reached by
//! `DMA_READ`/`DMA_WRITE` messages instead of mapped descriptors.
//!
//! `main.rs` holds the device-process helpers and the plain runs; `live.rs`,
//! `faults.rs`, `protocol.rs` and `dma_message.rs` the rest.

mod dma_message;
mod faults;
mod live;
mod protocol;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vgpu_migrate_tests::{outcome, quiet, reference, small_params, Outcome};
use vgpu_platform::{RemoteFactory, VgpuVm};
use vgpu_sim::DirtyTracking;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm, VmConfig, VmFactory};

const SEED: u64 = 9;
const FRAMES: u64 = 5;
const OUT_OF_REACH: u64 = 100_000;

use vgpu_migrate_tests::process::DeviceProcess;

fn remote(inner: Arc<dyn VmFactory>, dev: &DeviceProcess) -> Arc<dyn VmFactory> {
    Arc::new(RemoteFactory::new(inner, dev.socket.clone()))
}

fn vgpu_remote(dev: &DeviceProcess) -> Arc<dyn VmFactory> {
    remote(vgpu_platform::factory(DirtyTracking::ShadowPt), dev)
}

/// A vGPU in `dev` whose guest RAM is private memory it reaches by message.
fn vgpu_by_message(dev: &DeviceProcess) -> Arc<dyn VmFactory> {
    let mut f = RemoteFactory::new(
        vgpu_platform::factory(DirtyTracking::ShadowPt),
        dev.socket.clone(),
    );
    f.client.dma_by_message = true;
    Arc::new(f)
}

fn booted_remote(dev: &DeviceProcess, frames: u64) -> Vm {
    booted_with(vgpu_remote(dev), frames)
}

fn booted_with(factory: Arc<dyn VmFactory>, frames: u64) -> Vm {
    let mut cfg = VmConfig::new("vgpu-64", factory, quiet());
    cfg.ram_size = 64 << 20;
    let mut vm = Vm::new(&cfg).expect("VM with a vfio-user device");
    vm.boot(&small_params(frames, SEED)).expect("boot");
    vm
}

fn submitted(vm: &mut Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 16, &mut b);
    u64::from_le_bytes(b)
}

fn spawn_target(
    factory: Arc<dyn VmFactory>,
    mdev_type: &str,
) -> (String, JoinHandle<Result<Vm, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let mdev_type = mdev_type.to_string();
    let h = std::thread::spawn(move || {
        let opts = TargetOptions {
            bar_region_offset: 0,
            peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
            stop_self_at: None,
            mdev_type,
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

/// Migrate a vGPU VM between two VMMs, each with its own device process served with
/// `tracking`; the target's outcome after it finished, and the reference.
fn migrate_between_device_processes(
    protocol: Protocol,
    tracking: &str,
) -> Result<(Outcome, Outcome, migration::SourceReport), String> {
    migrate_between(protocol, tracking, false)
}

/// [`migrate_between_device_processes`], the source's device reaching guest RAM by message
/// if `src_by_message`.
fn migrate_between(
    protocol: Protocol,
    tracking: &str,
    src_by_message: bool,
) -> Result<(Outcome, Outcome, migration::SourceReport), String> {
    let args = ["--dirty-tracking", tracking];
    let tag = format!("{tracking}-{protocol:?}-{src_by_message}");
    let src_dev = DeviceProcess::start(&format!("src-{tag}"), "vgpu-64", &args);
    let dst_dev = DeviceProcess::start(&format!("dst-{tag}"), "vgpu-64", &args);
    let (url, target) = spawn_target(vgpu_remote(&dst_dev), "vgpu-64");
    let src_factory = if src_by_message {
        vgpu_by_message(&src_dev)
    } else {
        vgpu_remote(&src_dev)
    };
    let mut src = booted_with(src_factory, OUT_OF_REACH);
    src.run(StopAt::Frame(2)).map_err(|e| e.to_string())?;
    let o = SourceOptions {
        protocol,
        ..SourceOptions::default()
    };
    let res = migration::migrate(&mut src, &url, &o, &mut |_| {});
    let t = target.join().unwrap();
    let (rep, _) = res.map_err(|e| e.to_string())?;
    let mut dst = t?;
    let frames = submitted(&mut dst).max(FRAMES);
    dst.set_frame_limit(frames).map_err(|e| e.to_string())?;
    dst.run(StopAt::Done).map_err(|e| e.to_string())?;
    Ok((
        outcome(&mut dst, frames),
        reference("vgpu-64", frames, SEED),
        rep,
    ))
}

#[test]
fn out_of_process_run_has_the_in_process_checksum_log() {
    let dev = DeviceProcess::start("run", "vgpu-64", &[]);
    let mut vm = booted_remote(&dev, FRAMES);
    vm.run(StopAt::Done).unwrap();
    let got = outcome(&mut vm, FRAMES);
    let want = reference("vgpu-64", FRAMES, SEED);
    assert_eq!(got.checksums.len(), FRAMES as usize);
    assert_eq!(
        got, want,
        "checksum log, guest RAM and graphics memory as in process"
    );
}

#[test]
fn a_kvm_guest_drives_a_device_in_another_process() {
    if let Err(e) = vmm::kvm::available() {
        println!("skipped: KVM is not usable here: {e}");
        return;
    }
    const N: u64 = 2;
    let dev = DeviceProcess::start("kvm", "vgpu-64", &[]);
    let mut vm = booted_remote(&dev, N);
    let rep = vm.run_kvm(StopAt::Done).expect("KVM run");
    let got = outcome(&mut vm, N);
    let want = reference("vgpu-64", N, SEED);
    assert_eq!(got.checksums, want.checksums, "checksum log as in process");
    assert_eq!(got.gmem, want.gmem, "graphics memory as in process");
    // The device process was handed the VMM's irqfds: its interrupts reached KVM's local
    // APIC without passing through this process.
    assert_eq!(rep.msis, 0, "no interrupt took the VMM's queue");
    let mut seen = [0u8; 4];
    vm.guest_read(vgpu_sim::workload::layout::IRQ_SEEN_GPA, &mut seen);
    assert_ne!(
        u32::from_le_bytes(seen),
        0,
        "the guest's handler saw the device process's interrupts"
    );
}

#[test]
fn demo_with_device_processes_verifies_and_says_where_the_device_ran() {
    let dir = std::env::temp_dir().join(format!("vfio-user-demo-{}", std::process::id()));
    let mut args = vec![
        "demo",
        "--device-process",
        "--type",
        "vgpu-64",
        "--frames",
        "6",
        "--migrate-at",
        "2",
        "--protocol",
        "v2",
        "--json",
        "--dir",
    ];
    let d = dir.display().to_string();
    args.push(&d);
    args.extend(vgpu_migrate_tests::SMALL_ARGS);
    let out = vgpu_migrate_tests::process::Proc::start("demo", &args)
        .wait()
        .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(
        v["verified"],
        serde_json::Value::Bool(true),
        "{}",
        out.stdout
    );
    let device = v["device"].as_str().unwrap_or_default();
    assert!(device.contains("device processes"), "{device}");
    let _ = std::fs::remove_dir_all(&dir);
}
