//! The VMM side of the v1 migration region.
//!
//! These functions perform the v1 save and resume sequences *only* through region reads and
//! writes of a [`VfioDevice`] (the `pread`/`pwrite` QEMU issues on the device fd), at the
//! field offsets of `struct vfio_device_migration_info`, so they work with any device that
//! exposes the region, not just with [`StateRegion`](crate::StateRegion).
//!
//! Find the region with `dev.find_region(MIGRATION_REGION_TYPE)`
//! ([`MIGRATION_REGION_TYPE`](crate::MIGRATION_REGION_TYPE)). Then, on the source:
//! [`set_device_state`] to pre-copy (`RUNNING | SAVING`), [`save_chunks`] (or
//! [`save_chunks_limited`]) per round, [`set_device_state`] to stop-and-copy (`SAVING`),
//! [`save_chunks`] until the pass ends with `pending_bytes` 0, then stop (`0`). On the
//! target: [`set_device_state`] to resuming (`RESUMING`), [`resume_chunk`] for every chunk
//! in order, then stop or run.

use mdev_core::device::InvalidStateSnafu;
use mdev_core::uapi::VFIO_DEVICE_STATE_MASK;
use mdev_core::{DeviceError, VfioDevice};
use snafu::{ResultExt, Snafu};

use crate::region::Field;

/// Errors of a save pass.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum SaveError<E>
where
    E: std::error::Error + 'static,
{
    /// A migration region access failed, or the device broke the v1 protocol.
    #[snafu(display("the device's migration region failed"))]
    Region {
        /// The device's error.
        source: DeviceError,
    },
    /// The chunk consumer failed.
    #[snafu(display("the consumer of the device's migration data failed"))]
    Consumer {
        /// The consumer's error.
        source: E,
    },
}

/// What one save pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavePass {
    /// Chunks handed to the consumer.
    pub chunks: u64,
    /// Bytes handed to the consumer.
    pub bytes: u64,
    /// `pending_bytes` when the pass ended: 0 when the device had no more data, more when
    /// the pass stopped at its byte budget.
    pub pending: u64,
}

/// Read a u64 header field.
fn read_u64<D: VfioDevice + ?Sized>(
    dev: &mut D,
    index: u32,
    field: Field,
) -> Result<u64, DeviceError> {
    let mut b = [0u8; 8];
    dev.region_read(index, field.offset(), &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// Read `pending_bytes`: the bytes the device still has to send (0: none for now in
/// pre-copy, the end of the stream in stop-and-copy). Ends the previous iteration.
pub fn read_pending<D: VfioDevice + ?Sized>(dev: &mut D, index: u32) -> Result<u64, DeviceError> {
    read_u64(dev, index, Field::PendingBytes)
}

/// Read `device_state` (v1 bits `RESUMING | SAVING | RUNNING`).
pub fn read_device_state<D: VfioDevice + ?Sized>(
    dev: &mut D,
    index: u32,
) -> Result<u32, DeviceError> {
    let mut b = [0u8; 4];
    dev.region_read(index, Field::DeviceState.offset(), &mut b)?;
    Ok(u32::from_ne_bytes(b))
}

/// Write `device_state` with the v1 bits `v1_bits`, then read it back, as QEMU does; a
/// device that reads back anything else failed the transition. The reserved bits outside
/// `VFIO_DEVICE_STATE_MASK` are preserved by read-modify-write (vfio.h), and only the
/// bits the VMM owns are compared.
pub fn set_device_state<D: VfioDevice + ?Sized>(
    dev: &mut D,
    index: u32,
    v1_bits: u32,
) -> Result<(), DeviceError> {
    let mask = VFIO_DEVICE_STATE_MASK;
    let cur = read_device_state(dev, index)?;
    let value = (cur & !mask) | (v1_bits & mask);
    dev.region_write(index, Field::DeviceState.offset(), &value.to_ne_bytes())?;
    let now = read_device_state(dev, index)? & mask;
    if now != v1_bits & mask {
        return InvalidStateSnafu {
            what: format!("device_state reads {now:#05b} after {v1_bits:#05b} was written"),
        }
        .fail();
    }
    Ok(())
}

/// One save pass: iterate the v1 save sequence until `pending_bytes` is 0, handing each
/// chunk to `on_chunk` in order.
pub fn save_chunks<D, E>(
    dev: &mut D,
    index: u32,
    on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<SavePass, SaveError<E>>
where
    D: VfioDevice + ?Sized,
    E: std::error::Error + 'static,
{
    save_chunks_limited(dev, index, u64::MAX, on_chunk)
}

/// Like [`save_chunks`], but stop starting new chunks once `budget` bytes were handed over
/// (a pre-copy round with a bandwidth budget). The pass ends on a fresh `pending_bytes`
/// read, so [`SavePass::pending`] is what the device still has.
pub fn save_chunks_limited<D, E>(
    dev: &mut D,
    index: u32,
    budget: u64,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<SavePass, SaveError<E>>
where
    D: VfioDevice + ?Sized,
    E: std::error::Error + 'static,
{
    let size = dev.region_info(index).context(RegionSnafu)?.size();
    let mut pass = SavePass::default();
    let mut buf = Vec::new();
    loop {
        pass.pending = read_pending(dev, index).context(RegionSnafu)?;
        if pass.pending == 0 || pass.bytes >= budget {
            return Ok(pass);
        }
        let offset = read_u64(dev, index, Field::DataOffset).context(RegionSnafu)?;
        let len = read_u64(dev, index, Field::DataSize).context(RegionSnafu)?;
        check_chunk(offset, len, size).context(RegionSnafu)?;
        if len == 0 {
            // A device that keeps reporting data it never stages would loop forever.
            return InvalidStateSnafu {
                what: format!(
                    "the device reports {} pending bytes but staged an empty chunk",
                    pass.pending
                ),
            }
            .fail()
            .context(RegionSnafu);
        }
        // Within the region, whose size fits the address space of its accesses.
        buf.resize(len as usize, 0);
        dev.region_read(index, offset, &mut buf)
            .context(RegionSnafu)?;
        on_chunk(&buf).context(ConsumerSnafu)?;
        pass.chunks += 1;
        pass.bytes += len;
    }
}

/// Check that a chunk of `len` bytes at `offset` lies in the data section of a region of
/// `size` bytes.
fn check_chunk(offset: u64, len: u64, size: u64) -> Result<(), DeviceError> {
    let end = offset.checked_add(len);
    if offset == 0 || end.is_none_or(|end| end > size) {
        return InvalidStateSnafu {
            what: format!(
                "the device placed a {len}-byte chunk at {offset:#x}, outside the data section of its {size:#x}-byte region"
            ),
        }
        .fail();
    }
    Ok(())
}

/// One v1 resume iteration per window-sized piece of `chunk`: read `data_offset`, write the
/// piece there, write `data_size`; the device consumes it before the write returns, and its
/// errors come back from here.
///
/// A chunk larger than the target's data window is written in window-sized pieces: the
/// region feeds a v2 byte stream, in which chunk boundaries carry no meaning.
pub fn resume_chunk<D: VfioDevice + ?Sized>(
    dev: &mut D,
    index: u32,
    chunk: &[u8],
) -> Result<(), DeviceError> {
    let size = dev.region_info(index)?.size();
    let mut rest = chunk;
    while !rest.is_empty() {
        let offset = read_u64(dev, index, Field::DataOffset)?;
        if offset == 0 || offset >= size {
            return InvalidStateSnafu {
                what: format!(
                    "data_offset {offset:#x} leaves no data section in a {size:#x}-byte region"
                ),
            }
            .fail();
        }
        let window = usize::try_from(size - offset).unwrap_or(usize::MAX);
        let (piece, tail) = rest.split_at(rest.len().min(window));
        dev.region_write(index, offset, piece)?;
        dev.region_write(
            index,
            Field::DataSize.offset(),
            &(piece.len() as u64).to_ne_bytes(),
        )?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
