//! The driver against a VFIO device double that wraps a [`StateRegion`] and a recording
//! migratable device.

use std::sync::Arc;

use mdev_core::uapi::{
    vfio_device_info, vfio_irq_info, VFIO_DEVICE_STATE_V1_RESUMING as RESUMING,
    VFIO_DEVICE_STATE_V1_RUNNING as RUNNING, VFIO_DEVICE_STATE_V1_SAVING as SAVING,
};
use mdev_core::{DmaDirtyLog, IrqSink, MigState, MigrationDevice, RegionInfo};

use super::*;
use crate::region::{StateRegion, DATA_OFFSET, MIGRATION_REGION_TYPE};
use crate::testutil::{pattern, Call, FakeMigration, TestVfio};

const INDEX: u32 = 2;

fn source(len: usize, precopy: usize, window: usize) -> TestVfio {
    TestVfio::new(INDEX, window, FakeMigration::new(pattern(len), precopy))
}

fn collect(out: &mut Vec<u8>) -> impl FnMut(&[u8]) -> Result<(), std::io::Error> + '_ {
    |chunk| {
        out.extend_from_slice(chunk);
        Ok(())
    }
}

#[test]
fn the_region_is_found_by_type() {
    let dev = source(0, 0, 4096);
    assert_eq!(dev.find_region(MIGRATION_REGION_TYPE), Some(INDEX));
}

#[test]
fn device_state_round_trips() {
    let mut dev = source(0, 0, 4096);
    assert_eq!(read_device_state(&mut dev, INDEX).unwrap(), RUNNING);
    for v1 in [RUNNING | SAVING, SAVING, 0, RESUMING, 0, RUNNING] {
        set_device_state(&mut dev, INDEX, v1).unwrap();
        assert_eq!(read_device_state(&mut dev, INDEX).unwrap(), v1);
    }
    assert!(matches!(
        set_device_state(&mut dev, INDEX, RUNNING | RESUMING),
        Err(DeviceError::InvalidState { .. })
    ));
    assert_eq!(
        set_device_state(&mut dev, INDEX + 1, 0),
        Err(DeviceError::NoSuchRegion { index: INDEX + 1 })
    );
}

#[test]
fn save_passes_reproduce_the_stream() {
    let mut dev = source(20_000, 12_000, 4096);
    let mut out = Vec::new();
    set_device_state(&mut dev, INDEX, RUNNING | SAVING).unwrap();
    assert_eq!(read_pending(&mut dev, INDEX).unwrap(), 12_000);

    let pass = save_chunks(&mut dev, INDEX, collect(&mut out)).unwrap();
    assert_eq!(
        pass,
        SavePass {
            chunks: 3,
            bytes: 12_000,
            pending: 0
        }
    );
    let again = save_chunks(&mut dev, INDEX, collect(&mut out)).unwrap();
    assert_eq!(again, SavePass::default());

    set_device_state(&mut dev, INDEX, SAVING).unwrap();
    let pass = save_chunks(&mut dev, INDEX, collect(&mut out)).unwrap();
    assert_eq!((pass.bytes, pass.pending), (8000, 0));
    assert_eq!(out, pattern(20_000));
    set_device_state(&mut dev, INDEX, 0).unwrap();
    assert_eq!(dev.dev.mig_state(), MigState::Stop);
}

#[test]
fn the_device_sees_the_v1_save_sequence() {
    let mut dev = source(5000, 0, 4096);
    set_device_state(&mut dev, INDEX, 0).unwrap();
    set_device_state(&mut dev, INDEX, SAVING).unwrap();
    dev.dev.take_calls();
    let mut out = Vec::new();
    save_chunks(&mut dev, INDEX, collect(&mut out)).unwrap();
    let read = |got| Call::Read { asked: 4096, got };
    assert_eq!(
        dev.dev.take_calls(),
        [
            read(4096),
            Call::StopCopySize,
            read(904),
            Call::StopCopySize,
            read(0)
        ]
    );
    assert_eq!(out, pattern(5000));
}

#[test]
fn a_limited_pass_stops_at_its_budget_and_the_next_continues() {
    let mut dev = source(30_000, 30_000, 4096);
    set_device_state(&mut dev, INDEX, RUNNING | SAVING).unwrap();
    let mut out = Vec::new();
    let pass = save_chunks_limited(&mut dev, INDEX, 5000, collect(&mut out)).unwrap();
    assert_eq!(pass.chunks, 2);
    assert_eq!(pass.bytes, 8192);
    assert_eq!(pass.pending, 30_000 - 8192);
    let mut passes = 1;
    loop {
        passes += 1;
        let pass = save_chunks_limited(&mut dev, INDEX, 5000, collect(&mut out)).unwrap();
        if pass.pending == 0 {
            break;
        }
    }
    // 8192 bytes per pass, the last one takes the remaining 5424.
    assert_eq!(passes, 4);
    assert_eq!(out, pattern(30_000));
}

#[test]
fn a_consumer_error_ends_the_pass() {
    let mut dev = source(10_000, 10_000, 4096);
    set_device_state(&mut dev, INDEX, RUNNING | SAVING).unwrap();
    let r = save_chunks(&mut dev, INDEX, |_| Err(std::io::Error::other("disk full")));
    assert!(matches!(r, Err(SaveError::Consumer { .. })));
}

#[test]
fn a_pass_outside_the_saving_states_finds_nothing() {
    let mut dev = source(10_000, 10_000, 4096);
    let mut out = Vec::new();
    assert_eq!(
        save_chunks(&mut dev, INDEX, collect(&mut out)).unwrap(),
        SavePass::default()
    );
    assert!(matches!(
        save_chunks(&mut dev, INDEX + 1, collect(&mut out)),
        Err(SaveError::Region {
            source: DeviceError::NoSuchRegion { .. }
        })
    ));
}

#[test]
fn resume_splits_chunks_larger_than_the_window() {
    let mut dev = TestVfio::new(INDEX, 4096, FakeMigration::new(Vec::new(), 0));
    set_device_state(&mut dev, INDEX, RESUMING).unwrap();
    dev.dev.take_calls();
    let data = pattern(10_000);
    resume_chunk(&mut dev, INDEX, &data[..9000]).unwrap();
    resume_chunk(&mut dev, INDEX, &data[9000..]).unwrap();
    resume_chunk(&mut dev, INDEX, &[]).unwrap();
    let sizes: Vec<usize> = dev
        .dev
        .take_calls()
        .into_iter()
        .map(|c| match c {
            Call::Write(b) => b.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sizes, [4096, 4096, 808, 1000]);
    assert_eq!(dev.dev.streams.received, data);
}

#[test]
fn resume_errors_come_back() {
    let mut dev = TestVfio::new(INDEX, 4096, FakeMigration::new(Vec::new(), 0));
    dev.dev.poison = Some(0);
    set_device_state(&mut dev, INDEX, RESUMING).unwrap();
    let e = resume_chunk(&mut dev, INDEX, &[1, 0]).unwrap_err();
    assert!(e.to_string().contains("poison"), "{e}");
    // Not resuming: the region refuses the chunk.
    set_device_state(&mut dev, INDEX, RUNNING).unwrap();
    assert!(matches!(
        resume_chunk(&mut dev, INDEX, &[1]),
        Err(DeviceError::InvalidState { .. })
    ));
}

#[test]
fn a_migration_from_source_to_target_with_different_windows() {
    let mut src = source(100_000, 60_000, 16_384);
    let mut dst = TestVfio::new(7, 4096, FakeMigration::new(Vec::new(), 0));
    set_device_state(&mut dst, 7, 0).unwrap();
    set_device_state(&mut dst, 7, RESUMING).unwrap();

    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut keep = |c: &[u8]| -> Result<(), std::io::Error> {
        chunks.push(c.to_vec());
        Ok(())
    };
    set_device_state(&mut src, INDEX, RUNNING | SAVING).unwrap();
    save_chunks(&mut src, INDEX, &mut keep).unwrap();
    set_device_state(&mut src, INDEX, SAVING).unwrap();
    save_chunks(&mut src, INDEX, &mut keep).unwrap();
    set_device_state(&mut src, INDEX, 0).unwrap();

    for c in &chunks {
        resume_chunk(&mut dst, 7, c).unwrap();
    }
    set_device_state(&mut dst, 7, 0).unwrap();
    set_device_state(&mut dst, 7, RUNNING).unwrap();
    assert_eq!(dst.dev.streams.received, pattern(100_000));
}

#[test]
fn chunks_outside_the_data_section_are_refused() {
    assert!(check_chunk(DATA_OFFSET, 10, DATA_OFFSET + 10).is_ok());
    assert!(check_chunk(DATA_OFFSET, 11, DATA_OFFSET + 10).is_err());
    assert!(check_chunk(0, 1, DATA_OFFSET).is_err());
    assert!(check_chunk(u64::MAX, 2, u64::MAX).is_err());
}

/// A device whose region claims pending data but never stages any.
#[derive(Debug)]
struct Liar(StateRegion);

impl VfioDevice for Liar {
    fn device_info(&self) -> vfio_device_info {
        vfio_device_info {
            num_regions: 1,
            ..Default::default()
        }
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        Ok(self.0.region_info(index))
    }
    fn region_read(&mut self, _: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let v: u64 = match offset {
            8 => 5,
            16 => DATA_OFFSET,
            _ => 0,
        };
        data.copy_from_slice(&v.to_ne_bytes()[..data.len()]);
        Ok(())
    }
    fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }
    fn irq_info(&self, index: u32) -> Result<vfio_irq_info, DeviceError> {
        Err(DeviceError::NoSuchIrq { index })
    }
    fn set_irqs(
        &mut self,
        index: u32,
        _: u32,
        _: u32,
        _: Option<Arc<dyn IrqSink>>,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::NoSuchIrq { index })
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        None
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        None
    }
}

#[test]
fn an_empty_chunk_with_pending_data_is_an_error_not_a_hang() {
    let mut dev = Liar(StateRegion::new(4096));
    let mut out = Vec::new();
    let e = save_chunks(&mut dev, 0, collect(&mut out)).unwrap_err();
    assert!(
        matches!(&e, SaveError::Region { source: DeviceError::InvalidState { what } } if what.contains("empty chunk")),
        "{e}"
    );
    // Works through a trait object too.
    let dyn_dev: &mut dyn VfioDevice = &mut dev;
    assert!(save_chunks(dyn_dev, 0, collect(&mut out)).is_err());
}
