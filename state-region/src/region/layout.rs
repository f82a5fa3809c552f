//! Where things are in the v1 migration region, and which accesses are legal.
//!
//! ```text
//! 0                                   size_of::<vfio_device_migration_info>()   DATA_OFFSET
//! +--------------+----------+---------------+-------------+-----------+ - - - - +---------------+
//! | device_state | reserved | pending_bytes | data_offset | data_size |  (gap)  | data window   |
//! | u32 RW       | u32 (0)  | u64 RO        | u64 RO      | u64 RW    |         | `window` bytes|
//! +--------------+----------+---------------+-------------+-----------+ - - - - +---------------+
//! ```
//!
//! Field offsets and widths come from the uAPI struct itself (`offset_of!`, `size_of`).

use std::mem::{offset_of, size_of};

use mdev_core::uapi::vfio_device_migration_info as MigInfo;

/// Offset of the data window: page aligned and never 0, as the uAPI requires.
pub const DATA_OFFSET: u64 = 4096;

/// Size of the header (`struct vfio_device_migration_info`).
pub(crate) const HEADER_SIZE: u64 = size_of::<MigInfo>() as u64;

const _: () = assert!(HEADER_SIZE <= DATA_OFFSET && DATA_OFFSET % 4096 == 0);

/// A header field of the migration region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    DeviceState,
    Reserved,
    PendingBytes,
    DataOffset,
    DataSize,
}

/// The size of the field that `f` projects out of the header struct.
const fn width_of<T>(_: fn(&MigInfo) -> &T) -> usize {
    size_of::<T>()
}

impl Field {
    const ALL: [Field; 5] = [
        Field::DeviceState,
        Field::Reserved,
        Field::PendingBytes,
        Field::DataOffset,
        Field::DataSize,
    ];

    /// Offset of the field in the region.
    pub(crate) fn offset(self) -> u64 {
        (match self {
            Field::DeviceState => offset_of!(MigInfo, device_state),
            Field::Reserved => offset_of!(MigInfo, reserved),
            Field::PendingBytes => offset_of!(MigInfo, pending_bytes),
            Field::DataOffset => offset_of!(MigInfo, data_offset),
            Field::DataSize => offset_of!(MigInfo, data_size),
        }) as u64
    }

    /// Width of the field in bytes (its native width; it is also its alignment).
    pub(crate) fn width(self) -> usize {
        match self {
            Field::DeviceState => width_of(|m| &m.device_state),
            Field::Reserved => width_of(|m| &m.reserved),
            Field::PendingBytes => width_of(|m| &m.pending_bytes),
            Field::DataOffset => width_of(|m| &m.data_offset),
            Field::DataSize => width_of(|m| &m.data_size),
        }
    }

    /// The uAPI name of the field.
    #[cfg(test)]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::DeviceState => "device_state",
            Field::Reserved => "reserved",
            Field::PendingBytes => "pending_bytes",
            Field::DataOffset => "data_offset",
            Field::DataSize => "data_size",
        }
    }
}

/// What an access at `offset` of `len` bytes touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A whole header field, at its native width.
    Field(Field),
    /// Bytes of the data window, starting `offset` bytes into it.
    Window { offset: usize },
}

/// Why an access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessFault {
    /// Outside the region.
    OutOfRange,
    /// Not a naturally aligned access of a field's width, or in the gap after the header.
    BadAccess,
}

/// Decode an access of `len` bytes at `offset` of a region with a `window`-byte data window.
pub(crate) fn decode(offset: u64, len: usize, window: usize) -> Result<Target, AccessFault> {
    let size = DATA_OFFSET + window as u64;
    let end = offset
        .checked_add(len as u64)
        .ok_or(AccessFault::OutOfRange)?;
    if end > size {
        return Err(AccessFault::OutOfRange);
    }
    if offset >= DATA_OFFSET {
        return Ok(Target::Window {
            // Below `window`, a usize.
            offset: (offset - DATA_OFFSET) as usize,
        });
    }
    Field::ALL
        .into_iter()
        .find(|f| f.offset() == offset && f.width() == len)
        .map(Target::Field)
        .ok_or(AccessFault::BadAccess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_the_uapi_layout() {
        let expect = [
            (Field::DeviceState, 0, 4),
            (Field::Reserved, 4, 4),
            (Field::PendingBytes, 8, 8),
            (Field::DataOffset, 16, 8),
            (Field::DataSize, 24, 8),
        ];
        for (f, off, width) in expect {
            assert_eq!((f.offset(), f.width()), (off, width), "{}", f.name());
            assert_eq!(f.offset() % f.width() as u64, 0);
        }
        assert_eq!(HEADER_SIZE, 32);
    }

    #[test]
    fn decode_accepts_only_whole_fields_and_window_bytes() {
        let w = 8192;
        for f in Field::ALL {
            assert_eq!(decode(f.offset(), f.width(), w), Ok(Target::Field(f)));
            assert_eq!(decode(f.offset(), 1, w), Err(AccessFault::BadAccess));
            assert_eq!(
                decode(f.offset() + 1, f.width(), w),
                Err(AccessFault::BadAccess)
            );
        }
        assert_eq!(decode(0, 8, w), Err(AccessFault::BadAccess));
        assert_eq!(decode(8, 4, w), Err(AccessFault::BadAccess));
        assert_eq!(decode(HEADER_SIZE, 8, w), Err(AccessFault::BadAccess));
        assert_eq!(decode(DATA_OFFSET - 4, 8, w), Err(AccessFault::BadAccess));
        assert_eq!(
            decode(DATA_OFFSET + 3, 5, w),
            Ok(Target::Window { offset: 3 })
        );
        assert_eq!(
            decode(DATA_OFFSET + w as u64 - 1, 1, w),
            Ok(Target::Window { offset: w - 1 })
        );
        assert_eq!(
            decode(DATA_OFFSET + w as u64, 1, w),
            Err(AccessFault::OutOfRange)
        );
        assert_eq!(decode(u64::MAX, 2, w), Err(AccessFault::OutOfRange));
    }
}
