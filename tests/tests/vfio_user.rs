//! The device in its own process (`vgpu-migrate serve`), driven through vfio-user by the
//! VMM's client: the same checksum log as in process; live migration between two VMMs,
//! each with its own device process, over v2 and the v1 region, verified against a run
//! that never migrated; the negative control; a non-vGPU device; a device process killed
//! during pre-copy; and malformed messages sent to a live server.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// A `vgpu-migrate serve` child, killed when dropped.
struct DeviceProcess {
    child: Child,
    socket: PathBuf,
}

impl DeviceProcess {
    fn start(name: &str, device_type: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vfio-user-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(vgpu_migrate_tests::process::binary())
            .args(["serve", "--type", device_type, "--socket"])
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the device process");
        let started = Instant::now();
        while !socket.exists() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, socket }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn remote(inner: Arc<dyn VmFactory>, dev: &DeviceProcess) -> Arc<dyn VmFactory> {
    Arc::new(RemoteFactory::new(inner, dev.socket.clone()))
}

fn vgpu_remote(dev: &DeviceProcess) -> Arc<dyn VmFactory> {
    remote(vgpu_platform::factory(DirtyTracking::ShadowPt), dev)
}

fn booted_remote(dev: &DeviceProcess, frames: u64) -> Vm {
    let mut cfg = VmConfig::new("vgpu-64", vgpu_remote(dev), quiet());
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
    let args = ["--dirty-tracking", tracking];
    let src_dev = DeviceProcess::start(&format!("src-{tracking}-{protocol:?}"), "vgpu-64", &args);
    let dst_dev = DeviceProcess::start(&format!("dst-{tracking}-{protocol:?}"), "vgpu-64", &args);
    let (url, target) = spawn_target(vgpu_remote(&dst_dev), "vgpu-64");
    let mut src = booted_remote(&src_dev, OUT_OF_REACH);
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
fn live_migration_between_device_processes_verifies_v2_and_v1() {
    for (protocol, tracking) in [
        (Protocol::V2, "shadow-pt"),
        (Protocol::V2, "pinned"),
        (Protocol::Region, "shadow-pt"),
    ] {
        let (got, want, rep) = migrate_between_device_processes(protocol, tracking)
            .unwrap_or_else(|e| panic!("{protocol:?}/{tracking}: {e}"));
        assert_eq!(got, want, "{protocol:?}/{tracking}");
        assert!(
            rep.bytes.device_stopcopy > 0,
            "{protocol:?}: device data moved at stop-copy"
        );
    }
}

#[test]
fn tracking_off_in_the_device_process_is_a_negative_control() {
    match migrate_between_device_processes(Protocol::V2, "off") {
        Ok((got, want, _)) => assert_ne!(got, want, "tracking off must not verify"),
        Err(e) => assert!(e.contains("stalled") || e.contains("differ"), "{e}"),
    }
}

#[test]
fn the_serial_device_migrates_over_vfio_user() {
    use serial_sim::compose::{self as serial, SerialFactory, DEVICE_TYPE};
    let inner: Arc<dyn VmFactory> = Arc::new(SerialFactory::default());
    let src_dev = DeviceProcess::start("serial-src", DEVICE_TYPE, &[]);
    let dst_dev = DeviceProcess::start("serial-dst", DEVICE_TYPE, &[]);
    let (url, target) = spawn_target(remote(inner.clone(), &dst_dev), DEVICE_TYPE);
    let mut cfg = VmConfig::new(DEVICE_TYPE, remote(inner.clone(), &src_dev), quiet());
    cfg.ram_size = 4 << 20;
    let mut src = Vm::new(&cfg).unwrap();
    serial::boot(&mut src, 7, 3000, 0x45).unwrap();
    src.run(StopAt::Command(1000)).unwrap();
    let o = SourceOptions {
        protocol: Protocol::V2,
        ..SourceOptions::default()
    };
    let rep = migration::migrate(&mut src, &url, &o, &mut |_| {});
    let mut dst = target.join().unwrap().unwrap();
    rep.unwrap();
    dst.run(StopAt::Done).unwrap();
    // The reference: the same guest with the device in process, never migrated.
    let mut rcfg = VmConfig::new(DEVICE_TYPE, inner, quiet());
    rcfg.ram_size = 4 << 20;
    let mut reference = Vm::new(&rcfg).unwrap();
    serial::boot(&mut reference, 7, 3000, 0x45).unwrap();
    reference.run(StopAt::Done).unwrap();
    let (got, want) = (
        serial::status(&dst).unwrap(),
        serial::status(&reference).unwrap(),
    );
    assert_eq!(got.phase, serial::PHASE_DONE, "{got:?}");
    assert_eq!(got, want);
    assert_eq!(
        serial::receive_log(&dst).unwrap(),
        serial::receive_log(&reference).unwrap()
    );
}

#[test]
fn a_device_process_killed_during_pre_copy_fails_the_migration_in_one_line() {
    let mut src_dev = DeviceProcess::start("killed-src", "vgpu-64", &[]);
    let dst_dev = DeviceProcess::start("killed-dst", "vgpu-64", &[]);
    let (url, target) = spawn_target(vgpu_remote(&dst_dev), "vgpu-64");
    let mut src = booted_remote(&src_dev, OUT_OF_REACH);
    src.run(StopAt::Frame(1)).unwrap();
    let o = SourceOptions {
        protocol: Protocol::V2,
        max_rounds: 50,
        downtime_limit: Duration::from_micros(1),
        auto_converge: false,
        ..SourceOptions::default()
    };
    let started = Instant::now();
    let mut killed = false;
    let res = migration::migrate(&mut src, &url, &o, &mut |_| {
        if !killed {
            src_dev.kill();
            killed = true;
        }
    });
    let err = res
        .expect_err("a migration whose device process died cannot succeed")
        .to_string();
    println!("source: {err}");
    assert!(killed, "the progress callback ran during pre-copy");
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.contains("device"), "says the device failed: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded by deadlines"
    );
    // The target discards the migration.
    assert!(target.join().unwrap().is_err());
}

/// Send raw bytes (a whole message) and read one reply header, or None if the server
/// closed the connection.
fn raw(sock: &mut UnixStream, bytes: &[u8]) -> Option<[u8; 16]> {
    use std::io::Read;
    sock.write_all(bytes).ok()?;
    let mut h = [0u8; 16];
    sock.read_exact(&mut h).ok()?;
    let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let mut rest = vec![0u8; size.saturating_sub(16)];
    sock.read_exact(&mut rest).ok()?;
    Some(h)
}

fn msg(id: u16, cmd: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&cmd.to_le_bytes());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

fn error_of(h: [u8; 16]) -> Option<u32> {
    let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    (flags & (1 << 5) != 0).then(|| u32::from_le_bytes([h[12], h[13], h[14], h[15]]))
}

#[test]
fn malformed_messages_get_an_error_or_a_clean_disconnect_and_the_server_lives_on() {
    let dev = DeviceProcess::start("hostile", "vgpu-64", &["--deadline-ms", "300"]);
    let connect = || {
        let s = UnixStream::connect(&dev.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let version = msg(1, 1, b"\0\0\x01\0{\"capabilities\":{\"max_msg_fds\":4}}\0");
    let mut s = connect();
    // Before VERSION, everything is refused.
    assert_eq!(
        error_of(
            raw(
                &mut s,
                &msg(1, 4, &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            )
            .unwrap()
        ),
        Some(22)
    );
    assert_eq!(error_of(raw(&mut s, &version).unwrap()), None);
    // A second VERSION, an unknown command, short payloads, wrong lengths.
    assert!(error_of(raw(&mut s, &version).unwrap()).is_some());
    assert_eq!(
        error_of(raw(&mut s, &msg(2, 99, &[])).unwrap()),
        Some(libc::ENOTSUP as u32)
    );
    assert_eq!(
        error_of(raw(&mut s, &msg(3, 9, &[1, 2, 3])).unwrap()),
        Some(22)
    );
    assert_eq!(
        error_of(raw(&mut s, &msg(4, 5, &[0; 8])).unwrap()),
        Some(22)
    );
    // A region read far outside the region and one above max_data_xfer_size.
    let mut rd = Vec::new();
    rd.extend_from_slice(&(1u64 << 40).to_le_bytes());
    rd.extend_from_slice(&0u32.to_le_bytes());
    rd.extend_from_slice(&4u32.to_le_bytes());
    assert_eq!(error_of(raw(&mut s, &msg(5, 9, &rd)).unwrap()), Some(22));
    rd[12..16].copy_from_slice(&(64u32 << 20).to_le_bytes());
    assert_eq!(error_of(raw(&mut s, &msg(6, 9, &rd)).unwrap()), Some(22));
    // A write whose count disagrees with its data, and a MIG_DATA_READ without a session.
    let mut wr = vec![0u8; 16];
    wr[12..16].copy_from_slice(&8u32.to_le_bytes());
    wr.extend_from_slice(&[0; 4]);
    assert_eq!(error_of(raw(&mut s, &msg(7, 10, &wr)).unwrap()), Some(22));
    assert!(error_of(raw(&mut s, &msg(8, 17, &[8, 0, 0, 0, 0, 1, 0, 0])).unwrap()).is_some());
    // A DMA map without a descriptor, then one pointing nowhere sensible.
    let mut map = vec![0u8; 32];
    map[0] = 32;
    map[4] = 3;
    map[24..32].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(error_of(raw(&mut s, &msg(9, 2, &map)).unwrap()).is_some());
    // A header that claims a huge message: the connection is dropped, not allocated for.
    let mut huge = msg(10, 10, &[]);
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        raw(&mut s, &huge).is_none(),
        "an oversize message ends the connection"
    );
    // A client that stops in the middle of a message is dropped after the deadline.
    let mut s = connect();
    assert_eq!(error_of(raw(&mut s, &version).unwrap()), None);
    let half = msg(11, 10, &[0; 32]);
    s.write_all(&half[..20]).unwrap();
    let mut b = [0u8; 1];
    use std::io::Read;
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "dropped after the deadline");
    // A disconnect mid-message, then a well-behaved client still gets a working device.
    let mut s = connect();
    s.write_all(&half[..10]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(50));
    let mut vm = booted_remote(&dev, 2);
    vm.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut vm, 2).checksums,
        reference("vgpu-64", 2, SEED).checksums
    );
}

#[test]
fn a_second_client_is_refused_while_one_is_served() {
    let dev = DeviceProcess::start("busy", "vgpu-64", &[]);
    let vm = booted_remote(&dev, 1);
    let mut cfg = VmConfig::new("vgpu-64", vgpu_remote(&dev), quiet());
    cfg.ram_size = 64 << 20;
    let e = Vm::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("device process"), "{e}");
    drop(vm);
    // After the first client left, a new one is served (a reconnect works).
    std::thread::sleep(Duration::from_millis(50));
    let mut vm = booted_remote(&dev, 1);
    vm.run(StopAt::Done).unwrap();
}

#[test]
fn the_target_device_process_dying_leaves_the_source_running() {
    let src_dev = DeviceProcess::start("tdie-src", "vgpu-64", &[]);
    let mut dst_dev = DeviceProcess::start("tdie-dst", "vgpu-64", &[]);
    let (url, target) = spawn_target(vgpu_remote(&dst_dev), "vgpu-64");
    let mut src = booted_remote(&src_dev, OUT_OF_REACH);
    src.run(StopAt::Frame(1)).unwrap();
    let o = SourceOptions {
        protocol: Protocol::V2,
        max_rounds: 50,
        downtime_limit: Duration::from_micros(1),
        auto_converge: false,
        ..SourceOptions::default()
    };
    let mut killed = false;
    let res = migration::migrate(&mut src, &url, &o, &mut |_| {
        if !killed {
            dst_dev.kill();
            killed = true;
        }
    });
    let err = res
        .expect_err("the target cannot resume without its device")
        .to_string();
    println!("source: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let terr = target
        .join()
        .unwrap()
        .expect_err("the target discards the migration");
    assert!(
        terr.contains("device"),
        "the target says its device failed: {terr}"
    );
    // The source's device is alive: its guest goes on and finishes as if nothing happened.
    let frames = submitted(&mut src).max(FRAMES);
    src.set_frame_limit(frames).unwrap();
    src.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut src, frames),
        reference("vgpu-64", frames, SEED)
    );
}

#[test]
fn a_hung_source_device_process_costs_one_deadline_not_a_hang() {
    let src_dev = DeviceProcess::start("hang-src", "vgpu-64", &[]);
    let dst_dev = DeviceProcess::start("hang-dst", "vgpu-64", &[]);
    let (url, target) = spawn_target(vgpu_remote(&dst_dev), "vgpu-64");
    let mut factory = RemoteFactory::new(
        vgpu_platform::factory(DirtyTracking::ShadowPt),
        src_dev.socket.clone(),
    );
    factory.client.deadline = Duration::from_millis(500);
    let mut cfg = VmConfig::new("vgpu-64", Arc::new(factory), quiet());
    cfg.ram_size = 64 << 20;
    let mut src = Vm::new(&cfg).unwrap();
    src.boot(&small_params(OUT_OF_REACH, SEED)).unwrap();
    src.run(StopAt::Frame(1)).unwrap();
    let o = SourceOptions {
        protocol: Protocol::V2,
        max_rounds: 50,
        downtime_limit: Duration::from_micros(1),
        auto_converge: false,
        ..SourceOptions::default()
    };
    let pid = src_dev.child.id() as i32;
    let mut stopped = false;
    let started = Instant::now();
    let res = migration::migrate(&mut src, &url, &o, &mut |_| {
        if !stopped {
            // SAFETY: sends SIGSTOP to our own child process.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            stopped = true;
        }
    });
    let err = res
        .expect_err("a hung device cannot be migrated")
        .to_string();
    println!("source: {err}");
    assert!(stopped);
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.contains("device"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "deadlines bound every wait"
    );
    assert!(target.join().unwrap().is_err());
    // SAFETY: resumes our own child so that its Drop can reap it.
    unsafe { libc::kill(pid, libc::SIGCONT) };
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
    assert!(
        rep.msis > 0,
        "the device process's interrupts reached KVM's local APIC"
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

#[test]
fn the_client_keeps_the_data_stream_handle_lifecycle() {
    use mdev_core::{MigState, MigrationError};
    let dev = DeviceProcess::start("handles", "vgpu-64", &[]);
    let mut vm = booted_remote(&dev, 1);
    vm.run(StopAt::Done).unwrap();
    let mig = vm.device().migration().expect("v2 over vfio-user");
    assert_eq!(mig.mig_state(), MigState::Running);
    let s1 = mig
        .set_mig_state(MigState::PreCopy)
        .unwrap()
        .stream
        .expect("PRE_COPY opens a session");
    let mut buf = vec![0u8; 64 << 10];
    assert!(mig.read_data(s1, &mut buf).unwrap() > 0, "pre-copy data");
    // PRE_COPY -> STOP_COPY goes on in the same session.
    let t = mig.set_mig_state(MigState::StopCopy).unwrap();
    assert_eq!(t.stream, None);
    while mig.read_data(s1, &mut buf).unwrap() > 0 {}
    // Leaving the session's states ends it; the old handle is stale from then on.
    mig.set_mig_state(MigState::Stop).unwrap();
    assert!(matches!(
        mig.read_data(s1, &mut buf),
        Err(MigrationError::StaleStream { .. })
    ));
    let s2 = mig
        .set_mig_state(MigState::StopCopy)
        .unwrap()
        .stream
        .expect("a new session");
    assert_ne!(s1, s2);
    assert!(mig.read_data(s2, &mut buf).unwrap() > 0);
    mig.close_data(s2);
    assert!(matches!(
        mig.read_data(s2, &mut buf),
        Err(MigrationError::StaleStream { .. })
    ));
    // A refused request changes nothing.
    assert!(matches!(
        mig.set_mig_state(MigState::PreCopy),
        Err(MigrationError::InvalidTransition { .. })
    ));
    assert_eq!(mig.mig_state(), MigState::StopCopy);
    mig.set_mig_state(MigState::Running).unwrap();
}

/// Migrate with the given device processes, switching over at once (a generous downtime
/// limit); the source VM and the migration's result.
fn migrate_now(
    src_dev: &DeviceProcess,
    dst_dev: &DeviceProcess,
) -> (Vm, Result<(), String>, Result<Vm, String>) {
    let (url, target) = spawn_target(vgpu_remote(dst_dev), "vgpu-64");
    let mut src = booted_remote(src_dev, OUT_OF_REACH);
    src.run(StopAt::Frame(1)).unwrap();
    let o = SourceOptions {
        protocol: Protocol::V2,
        downtime_limit: Duration::from_secs(10),
        ..SourceOptions::default()
    };
    let res = migration::migrate(&mut src, &url, &o, &mut |_| {})
        .map(|_| ())
        .map_err(|e| e.to_string());
    let t = target.join().unwrap();
    (src, res, t)
}

#[test]
fn a_source_device_process_dying_at_stop_copy_fails_the_migration_in_one_line() {
    let src_dev = DeviceProcess::start("exit-sc-src", "vgpu-64", &["--exit-at", "stop-copy"]);
    let dst_dev = DeviceProcess::start("exit-sc-dst", "vgpu-64", &[]);
    let started = Instant::now();
    let (_src, res, t) = migrate_now(&src_dev, &dst_dev);
    let err = res.expect_err("the source's device died at stop-copy");
    println!("source: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.contains("device"), "{err}");
    assert!(t.is_err(), "the target discards");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded by deadlines"
    );
}

#[test]
fn a_target_device_process_dying_during_resume_leaves_the_source_running() {
    let src_dev = DeviceProcess::start("exit-re-src", "vgpu-64", &[]);
    let dst_dev = DeviceProcess::start("exit-re-dst", "vgpu-64", &["--exit-at", "resume-end"]);
    let (mut src, res, t) = migrate_now(&src_dev, &dst_dev);
    let err = res.expect_err("the target's device died while it loaded");
    println!("source: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let terr = t.expect_err("the target discards the migration");
    println!("target: {terr}");
    assert!(terr.contains("device"), "{terr}");
    // The source's device is alive: the guest goes on there and finishes as if never
    // migrated.
    let frames = submitted(&mut src).max(FRAMES);
    src.set_frame_limit(frames).unwrap();
    src.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut src, frames),
        reference("vgpu-64", frames, SEED)
    );
}
