//! Tests of the v1 region against a recording device double.

use mdev_core::uapi::{
    VFIO_DEVICE_STATE_V1_RESUMING as RESUMING, VFIO_DEVICE_STATE_V1_RUNNING as RUNNING,
    VFIO_DEVICE_STATE_V1_SAVING as SAVING, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use mdev_core::{DeviceError, MigState, MigrationDevice};

use super::layout::HEADER_SIZE;
use super::*;
use crate::testutil::{pattern, Call, FakeMigration};

const PRE_COPY: u32 = RUNNING | SAVING;
const STOP_COPY: u32 = SAVING;
const STOP: u32 = 0;

struct Rig {
    region: StateRegion,
    dev: FakeMigration,
}

impl Rig {
    fn new(window: usize, stream: usize, precopy: usize) -> Self {
        Self {
            region: StateRegion::new(window).with_index(3),
            dev: FakeMigration::new(pattern(stream), precopy),
        }
    }

    fn rd(&mut self, f: Field) -> Result<u64> {
        let mut b = vec![0u8; f.width()];
        self.region.read(&mut self.dev, f.offset(), &mut b)?;
        Ok(get_field(&b))
    }

    fn wr(&mut self, f: Field, v: u64) -> Result<()> {
        let mut b = vec![0u8; f.width()];
        put_field(&mut b, v);
        self.region.write(&mut self.dev, f.offset(), &b)
    }

    fn set(&mut self, v1: u32) -> Result<()> {
        self.wr(Field::DeviceState, v1.into())
    }

    fn rd_window(&mut self, at: usize, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.region
            .read(&mut self.dev, DATA_OFFSET + at as u64, &mut b)?;
        Ok(b)
    }

    fn wr_window(&mut self, at: usize, data: &[u8]) -> Result<()> {
        self.region
            .write(&mut self.dev, DATA_OFFSET + at as u64, data)
    }

    /// One v1 save pass: iterate until pending_bytes is 0, appending to `out` (which holds
    /// everything saved since the stream opened) and checking pending_bytes is exact.
    fn save_pass(&mut self, out: &mut Vec<u8>) -> usize {
        let mut chunks = 0;
        loop {
            let pending = self.rd(Field::PendingBytes).unwrap();
            assert_eq!(
                pending,
                (self.dev.limit() - out.len()) as u64,
                "pending_bytes is exact"
            );
            if pending == 0 {
                return chunks;
            }
            assert_eq!(self.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
            let size = self.rd(Field::DataSize).unwrap() as usize;
            assert!(size > 0 && size <= self.region.window());
            out.extend(self.rd_window(0, size).unwrap());
            chunks += 1;
        }
    }

    /// One v1 resume iteration.
    fn resume_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        assert_eq!(self.rd(Field::DataOffset)?, DATA_OFFSET);
        self.wr_window(0, chunk)?;
        self.wr(Field::DataSize, chunk.len() as u64)
    }
}

fn invalid_state(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(DeviceError::InvalidState { what }) => what,
        other => panic!("expected InvalidState, got {other:?}"),
    }
}

#[test]
fn window_is_whole_pages() {
    assert_eq!(StateRegion::new(0).window(), WINDOW_GRANULE);
    assert_eq!(StateRegion::new(1).window(), WINDOW_GRANULE);
    assert_eq!(StateRegion::new(4097).window(), 2 * WINDOW_GRANULE);
    let r = StateRegion::default();
    assert_eq!(r.window(), DEFAULT_WINDOW);
    assert_eq!(r.size(), DATA_OFFSET + DEFAULT_WINDOW as u64);
}

#[test]
fn region_info_describes_a_migration_region() {
    let r = StateRegion::new(8192);
    let info = r.region_info(5);
    assert_eq!(info.info.index, 5);
    assert_eq!(info.size(), DATA_OFFSET + 8192);
    assert_eq!(
        info.info.flags,
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_CAPS
    );
    assert!(info.is_type(MIGRATION_REGION_TYPE));
    let cap = info.cap_type.unwrap();
    assert_eq!(u32::from(cap.header.id), VFIO_REGION_INFO_CAP_TYPE);
    assert_eq!((cap.type_, cap.subtype), (3, 1));
    assert_eq!(info.info.offset, 5 << 40);
}

#[test]
fn device_state_reads_the_v1_bits_of_the_v2_state() {
    let mut rig = Rig::new(4096, 0, 0);
    for (state, v1) in [
        (MigState::Running, RUNNING),
        (MigState::RunningP2p, RUNNING),
        (MigState::PreCopyP2p, PRE_COPY),
        (MigState::PreCopy, PRE_COPY),
        (MigState::Running, RUNNING),
        (MigState::Stop, STOP),
        (MigState::StopCopy, STOP_COPY),
        (MigState::Stop, STOP),
        (MigState::Resuming, RESUMING),
    ] {
        rig.dev.set_mig_state(state).unwrap();
        assert_eq!(
            rig.rd(Field::DeviceState).unwrap(),
            u64::from(v1),
            "{state}"
        );
    }
}

#[test]
fn device_state_writes_walk_the_device() {
    let mut rig = Rig::new(4096, 0, 0);
    for v1 in [PRE_COPY, STOP_COPY, STOP, RESUMING, STOP, RUNNING] {
        rig.set(v1).unwrap();
        assert_eq!(rig.rd(Field::DeviceState).unwrap(), u64::from(v1));
    }
    assert_eq!(
        rig.dev.take_calls(),
        [
            MigState::PreCopy,
            MigState::StopCopy,
            MigState::Stop,
            MigState::Resuming,
            MigState::Stop,
            MigState::Running
        ]
        .map(Call::SetState)
    );
}

#[test]
fn invalid_device_state_values_are_refused() {
    let mut rig = Rig::new(4096, 0, 0);
    // 101 and 111 are invalid, with or without reserved bits above them.
    for v1 in [RUNNING | RESUMING, RUNNING | SAVING | RESUMING, u32::MAX] {
        let what = invalid_state(rig.set(v1));
        assert!(what.contains("not a v1 state"), "{what}");
    }
    assert!(rig.dev.take_calls().is_empty());
    assert_eq!(rig.dev.mig_state(), MigState::Running);
    // vfio.h: bits outside VFIO_DEVICE_STATE_MASK are reserved; the device does not reject
    // them (the VMM preserves them by read-modify-write): 8 | RUNNING is RUNNING.
    rig.set(8 | RUNNING).unwrap();
    assert_eq!(rig.dev.mig_state(), MigState::Running);
    assert_eq!(rig.rd(Field::DeviceState).unwrap(), u64::from(RUNNING));
    rig.set(0xf0 | SAVING | RUNNING).unwrap();
    assert_eq!(rig.dev.mig_state(), MigState::PreCopy);
    rig.set(RUNNING).unwrap();
    rig.dev.take_calls();

    // A refused transition: STOP_COPY -> PRE_COPY.
    rig.set(STOP_COPY).unwrap();
    rig.dev.take_calls();
    let what = invalid_state(rig.set(PRE_COPY));
    assert!(what.contains("STOP_COPY -> PRE_COPY"), "{what}");
    assert_eq!(rig.dev.take_calls(), [Call::SetState(MigState::PreCopy)]);
    assert_eq!(rig.dev.mig_state(), MigState::StopCopy);

    // The v1 error state is not a request a device honours.
    let what = invalid_state(rig.set(SAVING | RESUMING));
    assert!(what.contains("ERROR"), "{what}");
}

#[test]
fn save_sequence_calls_the_device_exactly() {
    // 10000-byte stream, 6000 of them in pre-copy, 4096-byte window.
    let mut rig = Rig::new(4096, 10_000, 6000);
    rig.set(PRE_COPY).unwrap();
    assert_eq!(rig.dev.take_calls(), [Call::SetState(MigState::PreCopy)]);

    // Iteration 1: pending_bytes stages ahead and sizes the rest.
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 6000);
    assert_eq!(
        rig.dev.take_calls(),
        [
            Call::Read {
                asked: 4096,
                got: 4096
            },
            Call::PrecopyInfo
        ]
    );
    assert_eq!(rig.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 4096);
    assert_eq!(rig.rd_window(0, 4096).unwrap(), pattern(4096));
    assert!(rig.dev.take_calls().is_empty());

    // Iteration 2: the rest of the pre-copy data.
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 1904);
    assert_eq!(rig.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 1904);
    rig.rd_window(0, 1904).unwrap();
    assert_eq!(
        rig.dev.take_calls(),
        [
            Call::Read {
                asked: 4096,
                got: 1904
            },
            Call::PrecopyInfo
        ]
    );

    // Nothing more for now.
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0);
    assert_eq!(
        rig.dev.take_calls(),
        [Call::Read {
            asked: 4096,
            got: 0
        }]
    );

    // Stop-and-copy: the rest of the stream, then its end.
    rig.set(STOP_COPY).unwrap();
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 4000);
    assert_eq!(rig.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 4000);
    assert_eq!(rig.rd_window(0, 4000).unwrap(), pattern(10_000)[6000..]);
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0);
    assert_eq!(
        rig.dev.take_calls(),
        [
            Call::SetState(MigState::StopCopy),
            Call::Read {
                asked: 4096,
                got: 4000
            },
            Call::StopCopySize,
            Call::Read {
                asked: 4096,
                got: 0
            },
        ]
    );
}

#[test]
fn repeated_reads_within_an_iteration_have_no_side_effects() {
    let mut rig = Rig::new(4096, 10_000, 10_000);
    rig.set(PRE_COPY).unwrap();
    rig.dev.take_calls();
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 10_000);
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 10_000);
    assert_eq!(rig.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
    assert_eq!(rig.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 4096);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 4096);
    assert_eq!(rig.rd_window(0, 10).unwrap(), rig.rd_window(0, 10).unwrap());
    assert_eq!(
        rig.dev.take_calls(),
        [
            Call::Read {
                asked: 4096,
                got: 4096
            },
            Call::PrecopyInfo,
            Call::PrecopyInfo
        ]
    );
}

#[test]
fn data_offset_without_pending_bytes_stages_the_chunk() {
    let mut rig = Rig::new(4096, 100, 0);
    rig.set(STOP).unwrap();
    rig.set(STOP_COPY).unwrap();
    rig.dev.take_calls();
    assert_eq!(rig.rd(Field::DataOffset).unwrap(), DATA_OFFSET);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 100);
    assert_eq!(rig.rd_window(0, 100).unwrap(), pattern(100));
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0);
    assert_eq!(
        rig.dev.take_calls(),
        [
            Call::Read {
                asked: 4096,
                got: 100
            },
            Call::Read {
                asked: 4096,
                got: 0
            }
        ]
    );
}

#[test]
fn full_save_loop_reproduces_the_stream() {
    let (len, precopy) = (50_000, 31_337);
    for max_read in [usize::MAX, 1, 1000, 4096, 5000] {
        if max_read == 1 {
            // One byte per device read: keep this one short.
            let mut rig = Rig::new(4096, 300, 200);
            rig.dev.max_read = 1;
            let mut out = Vec::new();
            rig.set(PRE_COPY).unwrap();
            assert_eq!(rig.save_pass(&mut out), 200);
            rig.set(STOP_COPY).unwrap();
            assert_eq!(rig.save_pass(&mut out), 100);
            assert_eq!(out, pattern(300));
            continue;
        }
        let mut rig = Rig::new(8192, len, precopy);
        rig.dev.max_read = max_read;
        let mut out = Vec::new();
        rig.set(PRE_COPY).unwrap();
        // Pre-copy rounds: the first drains the pre-copy data, later ones find none.
        assert!(rig.save_pass(&mut out) > 0);
        assert_eq!(out.len(), precopy);
        assert_eq!(rig.save_pass(&mut out), 0);
        rig.set(STOP_COPY).unwrap();
        rig.save_pass(&mut out);
        assert_eq!(out, pattern(len), "max_read {max_read}");
        // The stream has ended: pending_bytes stays 0.
        assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0);
    }
}

#[test]
fn a_chunk_staged_in_pre_copy_survives_the_switch_to_stop_copy() {
    let mut rig = Rig::new(4096, 9000, 5000);
    rig.set(PRE_COPY).unwrap();
    let mut out = Vec::new();
    // One chunk read, the next staged by pending_bytes but not read.
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 5000);
    rig.rd(Field::DataOffset).unwrap();
    out.extend(rig.rd_window(0, 4096).unwrap());
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 904);
    rig.set(STOP_COPY).unwrap();
    rig.save_pass(&mut out);
    assert_eq!(out, pattern(9000));
}

#[test]
fn leaving_the_saving_states_drops_the_staged_chunk() {
    let mut rig = Rig::new(4096, 9000, 5000);
    rig.set(PRE_COPY).unwrap();
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 5000);
    // Migration cancelled, then restarted: the device reopens its stream.
    rig.set(RUNNING).unwrap();
    assert_eq!(rig.rd(Field::PendingBytes).unwrap(), 0);
    assert_eq!(rig.rd(Field::DataSize).unwrap(), 0);
    rig.set(PRE_COPY).unwrap();
    let mut out = Vec::new();
    rig.save_pass(&mut out);
    rig.set(STOP_COPY).unwrap();
    rig.save_pass(&mut out);
    assert_eq!(out, pattern(9000));
}

#[test]
fn a_reset_outside_the_region_is_noticed() {
    let mut rig = Rig::new(4096, 9000, 5000);
    rig.set(PRE_COPY).unwrap();
    rig.rd(Field::PendingBytes).unwrap();
    rig.rd(Field::DataOffset).unwrap();
    rig.dev.ctl.reset();
    let what = invalid_state(rig.rd_window(0, 1));
    assert!(what.contains("only while saving"), "{what}");
}

#[test]
fn resume_loop_writes_chunks_in_order() {
    let mut rig = Rig::new(4096, 0, 0);
    rig.set(RESUMING).unwrap();
    let data = pattern(10_000);
    let sizes = [1, 4096, 7, 3000, 2896];
    let mut at = 0;
    for size in sizes {
        rig.resume_chunk(&data[at..at + size]).unwrap();
        assert_eq!(rig.rd(Field::DataSize).unwrap(), size as u64);
        at += size;
    }
    assert_eq!(at, data.len());
    assert_eq!(rig.dev.streams.received, data);
    let mut expected = vec![Call::SetState(MigState::Resuming)];
    let mut at = 0;
    for size in sizes {
        expected.push(Call::Write(data[at..at + size].to_vec()));
        at += size;
    }
    assert_eq!(rig.dev.take_calls(), expected);
    rig.set(STOP).unwrap();
}

#[test]
fn a_chunk_written_in_pieces_is_one_chunk() {
    let mut rig = Rig::new(4096, 0, 0);
    rig.set(RESUMING).unwrap();
    rig.dev.take_calls();
    rig.wr_window(100, b"world").unwrap();
    rig.wr_window(0, &[b'h'; 100]).unwrap();
    rig.wr(Field::DataSize, 105).unwrap();
    let mut expected = vec![b'h'; 100];
    expected.extend_from_slice(b"world");
    assert_eq!(rig.dev.take_calls(), [Call::Write(expected)]);
    // data_size 0 hands the device nothing.
    rig.wr(Field::DataSize, 0).unwrap();
    assert!(rig.dev.take_calls().is_empty());
}

#[test]
fn a_rejected_chunk_fails_the_data_size_write() {
    let mut rig = Rig::new(4096, 0, 0);
    rig.dev.poison = Some(0xee);
    rig.set(RESUMING).unwrap();
    let what = invalid_state(rig.resume_chunk(&[1, 2, 0xee, 3]));
    assert!(what.contains("poison byte 0xee"), "{what}");
    assert!(what.contains("4-byte chunk"), "{what}");
}

mod conformance;
