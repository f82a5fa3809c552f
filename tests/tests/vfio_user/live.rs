//! Live migration between two VMMs, each with its own device process.

use super::*;

#[test]
fn live_migration_between_device_processes_verifies_v2_and_v1() {
    for (protocol, tracking) in [
        (Protocol::V2, "shadow-pt"),
        (Protocol::V2, "pinned"),
        (Protocol::Region, "shadow-pt"),
        (Protocol::Region, "pinned"),
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
