//! Conformance errors: what the region refuses (partial or misplaced accesses, steps out of
//! order, sizes past the window or what was written), and the strictness switch.

use super::*;

#[test]
fn header_accesses_must_be_whole_fields() {
    let mut rig = Rig::new(4096, 0, 0);
    let bad = |r: Result<()>| matches!(r, Err(DeviceError::BadAccess { index: 3, .. }));
    for (offset, len) in [
        (0, 8),
        (0, 2),
        (1, 4),
        (2, 4),
        (8, 4),
        (12, 8),
        (16, 4),
        (20, 8),
        (24, 16),
        (HEADER_SIZE, 8),
        (DATA_OFFSET - 8, 8),
        (DATA_OFFSET - 4, 8),
    ] {
        let mut b = vec![0u8; len];
        assert!(
            bad(rig.region.read(&mut rig.dev, offset, &mut b)),
            "read {offset}+{len}"
        );
        assert!(
            bad(rig.region.write(&mut rig.dev, offset, &b)),
            "write {offset}+{len}"
        );
    }
    assert!(rig.dev.take_calls().is_empty());
}

#[test]
fn accesses_outside_the_region_are_out_of_range() {
    let mut rig = Rig::new(4096, 0, 0);
    let size = rig.region.size();
    let mut b = [0u8; 2];
    assert_eq!(
        rig.region.read(&mut rig.dev, size - 1, &mut b),
        Err(DeviceError::OutOfRange {
            index: 3,
            offset: size - 1,
            len: 2,
            size
        })
    );
    assert!(matches!(
        rig.region.write(&mut rig.dev, u64::MAX, &b),
        Err(DeviceError::OutOfRange { .. })
    ));
}

#[test]
/// vfio.h, `struct vfio_device_migration_info`: `reserved` reads zero; writes to it are
/// ignored (not refused).
fn reserved_reads_zero_and_ignores_writes() {
    let mut rig = Rig::new(4096, 0, 0);
    assert_eq!(rig.rd(Field::Reserved).unwrap(), 0);
    rig.wr(Field::Reserved, 1).unwrap();
    assert_eq!(rig.rd(Field::Reserved).unwrap(), 0);
    assert!(
        rig.dev.take_calls().is_empty(),
        "nothing reached the device"
    );
}

#[test]
fn read_only_fields_refuse_writes() {
    let mut rig = Rig::new(4096, 0, 0);
    rig.set(RESUMING).unwrap();
    for f in [Field::PendingBytes, Field::DataOffset] {
        let e = rig.wr(f, 0).unwrap_err();
        assert!(
            matches!(&e, DeviceError::NotPermitted { what, .. } if what.contains(f.name())),
            "{e}"
        );
    }
}

#[test]
fn reading_data_before_data_offset_is_refused() {
    let mut rig = Rig::new(4096, 100, 100);
    rig.set(PRE_COPY).unwrap();
    rig.rd(Field::PendingBytes).unwrap();
    let what = invalid_state(rig.rd_window(0, 10));
    assert!(what.contains("before data_offset"), "{what}");
    let what = invalid_state(rig.rd(Field::DataSize));
    assert!(what.contains("before data_offset"), "{what}");
    // And again for the next chunk, after pending_bytes released the first.
    rig.rd(Field::DataOffset).unwrap();
    rig.rd_window(0, 100).unwrap();
    rig.rd(Field::PendingBytes).unwrap();
    invalid_state(rig.rd_window(0, 1));
}

#[test]
fn reading_past_the_staged_chunk_is_refused() {
    let mut rig = Rig::new(4096, 100, 100);
    rig.set(PRE_COPY).unwrap();
    rig.rd(Field::DataOffset).unwrap();
    rig.rd_window(99, 1).unwrap();
    let what = invalid_state(rig.rd_window(99, 2));
    assert!(what.contains("past the 100-byte staged chunk"), "{what}");
}

#[test]
fn reading_the_window_when_not_saving_is_refused() {
    let mut rig = Rig::new(4096, 100, 100);
    for v1 in [RUNNING, STOP, RESUMING] {
        rig.set(v1).unwrap();
        let what = invalid_state(rig.rd_window(0, 4));
        assert!(what.contains("only while saving"), "{what}");
    }
}

#[test]
fn writing_the_window_or_data_size_when_not_resuming_is_refused() {
    let mut rig = Rig::new(4096, 100, 100);
    for v1 in [RUNNING, PRE_COPY, STOP_COPY, STOP] {
        rig.set(v1).unwrap();
        let what = invalid_state(rig.wr_window(0, &[1, 2]));
        assert!(what.contains("only while resuming"), "{what}");
        let what = invalid_state(rig.wr(Field::DataSize, 2));
        assert!(what.contains("only while resuming"), "{what}");
    }
}

#[test]
fn data_size_over_the_window_is_refused() {
    let mut rig = Rig::new(4096, 0, 0);
    rig.set(RESUMING).unwrap();
    rig.wr_window(0, &[7; 4096]).unwrap();
    let what = invalid_state(rig.wr(Field::DataSize, 4097));
    assert!(
        what.contains("larger than the 4096-byte data window"),
        "{what}"
    );
    let what = invalid_state(rig.wr(Field::DataSize, u64::MAX));
    assert!(what.contains("larger than"), "{what}");
    rig.dev.take_calls();
    rig.wr(Field::DataSize, 4096).unwrap();
    assert_eq!(rig.dev.take_calls(), [Call::Write(vec![7; 4096])]);
}

#[test]
fn data_size_over_what_was_written_is_refused() {
    let mut rig = Rig::new(4096, 0, 0);
    rig.set(RESUMING).unwrap();
    rig.wr_window(0, &[1; 10]).unwrap();
    let what = invalid_state(rig.wr(Field::DataSize, 11));
    assert!(what.contains("more than the 10 bytes written"), "{what}");
    rig.wr(Field::DataSize, 10).unwrap();
    // The window must be refilled for the next chunk.
    invalid_state(rig.wr(Field::DataSize, 10));
}

// vfio.h, struct vfio_device_migration_info: "vendor drivers must support the pre-copy
// state even for implementations where no data is provided" -- a device without
// VFIO_MIGRATION_PRE_COPY accepts 011, stays RUNNING, reports no data, then saves it all in
// STOP_COPY.
#[test]
fn a_device_without_precopy_accepts_011_with_no_data() {
    let mut rig = Rig::new(4096, 10_000, 0);
    rig.dev.ctl = mdev_core::MigrationController::new(
        mdev_core::uapi::VFIO_MIGRATION_STOP_COPY | mdev_core::uapi::VFIO_MIGRATION_P2P,
    );
    rig.set(PRE_COPY).unwrap();
    assert_eq!(rig.rd(Field::DeviceState).unwrap(), u64::from(PRE_COPY));
    assert_eq!(rig.dev.mig_state(), MigState::Running, "the device runs on");
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0, "no pre-copy data");
    assert!(rig.dev.take_calls().is_empty(), "the device was not asked");
    rig.set(STOP_COPY).unwrap();
    assert_eq!(rig.dev.mig_state(), MigState::StopCopy);
    let mut out = Vec::new();
    rig.save_pass(&mut out);
    assert_eq!(out, pattern(10_000));
    // And 011 -> 001 is a plain return to running.
    let mut rig = Rig::new(4096, 10, 0);
    rig.dev.ctl = mdev_core::MigrationController::new(mdev_core::uapi::VFIO_MIGRATION_STOP_COPY);
    rig.set(PRE_COPY).unwrap();
    rig.set(RUNNING).unwrap();
    assert_eq!(rig.rd(Field::DeviceState).unwrap(), u64::from(RUNNING));
    assert_eq!(
        rig.dev.take_calls(),
        [Call::SetState(MigState::Running)],
        "a no-op walk"
    );
}

// The v1 region holds the v2 data session the device handed back and closes it when the
// state leaves the session; a session the device ended under it (reset) is refused.
#[test]
fn the_region_closes_the_session_and_a_reset_makes_it_stale() {
    let mut rig = Rig::new(4096, 8192, 0);
    rig.set(STOP_COPY).unwrap();
    let open = rig.dev.ctl.open_stream();
    assert!(open.is_some());
    rig.set(STOP).unwrap();
    assert_eq!(rig.dev.ctl.open_stream(), None);
    rig.set(STOP_COPY).unwrap();
    assert_ne!(
        rig.dev.ctl.open_stream(),
        open,
        "a new session, a new handle"
    );
    rig.dev.ctl.reset();
    rig.dev
        .ctl
        .set_state(&mut rig.dev.streams, MigState::StopCopy)
        .unwrap();
    let what = invalid_state(rig.rd(Field::PendingBytes));
    assert!(what.contains("ENODEV"), "{what}");
}

// V1Checks::Lenient accepts the out-of-order steps the strict default refuses: data_size
// and the window read before data_offset (the chunk is staged as data_offset would),
// window bytes past the chunk (zero), a data_size larger than what was written.
#[test]
fn lenient_checks_accept_what_strict_refuses() {
    let mut strict = Rig::new(4096, 1000, 0);
    strict.set(STOP_COPY).unwrap();
    assert_eq!(strict.rd(Field::PendingBytes).unwrap(), 1000);
    invalid_state(strict.rd(Field::DataSize));
    invalid_state(strict.rd_window(0, 16));

    let mut rig = Rig::new(4096, 1000, 0);
    rig.region = StateRegion::new(4096)
        .with_index(3)
        .with_checks(V1Checks::Lenient);
    rig.set(STOP_COPY).unwrap();
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 1000);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 1000);
    let w = rig.rd_window(990, 20).unwrap();
    assert_eq!(&w[..10], &pattern(1000)[990..]);
    assert_eq!(&w[10..], &[0; 10]);
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0);

    let mut rig = Rig::new(4096, 0, 0);
    rig.region = StateRegion::new(4096)
        .with_index(3)
        .with_checks(V1Checks::Lenient);
    rig.set(STOP).unwrap();
    rig.set(RESUMING).unwrap();
    rig.wr_window(0, &[7; 10]).unwrap();
    rig.wr(Field::DataSize, 20).unwrap();
    assert_eq!(rig.dev.streams.received.len(), 20);
    let mut strict = Rig::new(4096, 0, 0);
    strict.set(STOP).unwrap();
    strict.set(RESUMING).unwrap();
    strict.wr_window(0, &[7; 10]).unwrap();
    invalid_state(strict.wr(Field::DataSize, 20));
}
