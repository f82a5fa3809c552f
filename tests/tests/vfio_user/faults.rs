//! Faults across the process boundary: a device process killed, hung, or exiting at a
//! migration step, on either side.

use super::*;

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
        started.elapsed() < vgpu_migrate_tests::process::HANG_GUARD,
        "bounded by deadlines (a hang guard, not a speed check)"
    );
    // The target discards the migration.
    assert!(target.join().unwrap().is_err());
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
    let pid = src_dev.pid() as i32;
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
    // Deadlines bound every wait: the migration ended at all (a hang guard, not a speed
    // check: on a loaded machine this has taken over a minute).
    assert!(
        started.elapsed() < vgpu_migrate_tests::process::HANG_GUARD,
        "deadlines bound every wait"
    );
    assert!(target.join().unwrap().is_err());
    // SAFETY: resumes our own child so that its Drop can reap it.
    unsafe { libc::kill(pid, libc::SIGCONT) };
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
        started.elapsed() < vgpu_migrate_tests::process::HANG_GUARD,
        "bounded by deadlines (a hang guard, not a speed check)"
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
