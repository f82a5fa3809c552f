//! `DEVICE_FEATURE` (migration, device state, DMA logging, and two kernel features vfio-user
//! lacks) and the migration data stream (`MIG_DATA_READ` / `MIG_DATA_WRITE`).
//!
//! vfio-user has no message for `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` or the pre-copy info
//! query; this server answers them as `DEVICE_FEATURE` GETs under the kernel's own feature
//! indexes (`VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` = 9 with a u64, and
//! `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` = 12 with a `vfio_precopy_info`), which a
//! client can PROBE first.

use mdev_core::{DmaRange, MigState, MigrationError};

use crate::server::session::no_session;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 as FEATURE_PRECOPY_INFO,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MASK,
    VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

use super::session::{inval, short, Refusal, Reply};
use super::Session;
use crate::proto::{Reader, Writer};

/// Most DMA logging ranges accepted in one START.
const MAX_LOG_RANGES: u32 = 1024;

/// The errno a migration error stands for.
pub(crate) fn mig_errno(e: &MigrationError) -> Refusal {
    let errno = match e {
        MigrationError::NoDataNow { .. } => libc::ENOMSG,
        MigrationError::ArcFailed { .. } => libc::EIO,
        MigrationError::BadData { .. } => libc::EINVAL,
        MigrationError::StaleStream { .. } => libc::ENODEV,
        _ => libc::EINVAL,
    };
    (errno, e.to_string())
}

fn dirty_errno(e: &mdev_core::DirtyError) -> Refusal {
    inval(e.to_string())
}

impl Session {
    /// `DEVICE_FEATURE`.
    pub(super) fn feature(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "DEVICE_FEATURE");
        let argsz = r.u32().map_err(short)?;
        let flags = r.u32().map_err(short)?;
        let data = r.rest();
        let feature = flags & VFIO_DEVICE_FEATURE_MASK;
        let (get, set, probe) = (
            flags & VFIO_DEVICE_FEATURE_GET != 0,
            flags & VFIO_DEVICE_FEATURE_SET != 0,
            flags & VFIO_DEVICE_FEATURE_PROBE != 0,
        );
        let known = VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_PROBE;
        if flags & !known != 0 || (get && set && !probe) || (!get && !set && !probe) {
            return Err(inval(format!("DEVICE_FEATURE flags {flags:#x}")));
        }
        let max_xfer = self.max_xfer();
        let dma_ranges = self.dma_ranges();
        let dma_covers = |iova: u64, len: u64| {
            iova.checked_add(len)
                .is_some_and(|end| dma_ranges.iter().any(|&(a, n)| iova >= a && end <= a + n))
        };
        let dev = &mut self.dev()?.device;
        let has_mig = dev.migration().is_some();
        let has_log = dev.dma_dirty_log().is_some();
        // Which methods each feature supports here.
        let (can_get, can_set) = match feature {
            VFIO_DEVICE_FEATURE_MIGRATION if has_mig => (true, false),
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if has_mig => (true, true),
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE | FEATURE_PRECOPY_INFO if has_mig => (true, false),
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
                if has_log =>
            {
                (false, true)
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT if has_log => (true, false),
            _ => (false, false),
        };
        let supported = can_get || can_set;
        let method_ok = (!get || can_get) && (!set || can_set);
        if !supported || !method_ok {
            return Err((
                libc::ENOTSUP,
                format!(
                    "feature {feature} ({}) is not supported",
                    if get {
                        "GET"
                    } else if set {
                        "SET"
                    } else {
                        "PROBE"
                    }
                ),
            ));
        }
        let mut out = Writer::default();
        out.u32(0).u32(flags);
        if probe {
            out.bytes(data);
            return finish(out, argsz);
        }
        match feature {
            VFIO_DEVICE_FEATURE_MIGRATION => {
                let m = dev.migration().ok_or_else(|| inval("no migration"))?;
                out.u64(u64::from(m.migration_flags()));
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                let m = dev.migration().ok_or_else(|| inval("no migration"))?;
                let state = if set {
                    let raw = Reader::new(data, "MIG_DEVICE_STATE").u32().map_err(short)?;
                    let target = MigState::try_from(raw).map_err(|e| inval(e.to_string()))?;
                    match m.set_mig_state(target) {
                        Ok(t) => {
                            if let Some(s) = t.stream {
                                self.stream = Some(s);
                            }
                            t.state
                        }
                        Err(e) => {
                            if m.mig_state() == MigState::Error {
                                self.stream = None;
                            }
                            return Err(mig_errno(&e));
                        }
                    }
                } else {
                    m.mig_state()
                };
                if !matches!(
                    state,
                    MigState::PreCopy
                        | MigState::PreCopyP2p
                        | MigState::StopCopy
                        | MigState::Resuming
                ) {
                    self.stream = None;
                }
                // data_fd is unused in vfio-user (the data goes as MIG_DATA_* messages).
                out.u32(state as u32).u32(u32::MAX);
            }
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => {
                let m = dev.migration().ok_or_else(|| inval("no migration"))?;
                out.u64(m.stop_copy_size().map_err(|e| mig_errno(&e))?);
            }
            FEATURE_PRECOPY_INFO => {
                let m = dev.migration().ok_or_else(|| inval("no migration"))?;
                let i = m.precopy_info().map_err(|e| mig_errno(&e))?;
                out.u32(i.argsz)
                    .u32(i.flags)
                    .u64(i.initial_bytes)
                    .u64(i.dirty_bytes);
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START => {
                let mut r = Reader::new(data, "DMA_LOGGING_START");
                let page_size = r.u64().map_err(short)?;
                let num = r.u32().map_err(short)?;
                r.u32().map_err(short)?;
                if num > MAX_LOG_RANGES || r.remaining() != num as usize * 16 {
                    return Err(inval(format!("{num} ranges in {} bytes", r.remaining())));
                }
                let mut ranges = Vec::with_capacity(num as usize);
                for _ in 0..num {
                    ranges.push(DmaRange {
                        iova: r.u64().map_err(short)?,
                        length: r.u64().map_err(short)?,
                    });
                }
                // No ranges: log all the client's memory. Every range must lie inside the
                // mapped memory (the log's bitmaps are sized by the ranges).
                if ranges.is_empty() {
                    ranges = dma_ranges
                        .iter()
                        .map(|&(iova, length)| DmaRange { iova, length })
                        .collect();
                }
                if let Some(r) = ranges.iter().find(|r| !dma_covers(r.iova, r.length)) {
                    return Err(inval(format!(
                        "logging range {:#x}+{:#x} is outside the DMA maps",
                        r.iova, r.length
                    )));
                }
                let log = dev.dma_dirty_log().ok_or_else(|| inval("no log"))?;
                let tracked = log.start(&ranges, page_size).map_err(|e| dirty_errno(&e))?;
                // vfio.h: the device returns the page size it picked in page_size.
                out.u64(tracked).bytes(&data[8.min(data.len())..]);
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => {
                let log = dev.dma_dirty_log().ok_or_else(|| inval("no log"))?;
                log.stop().map_err(|e| dirty_errno(&e))?;
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => {
                let mut r = Reader::new(data, "DMA_LOGGING_REPORT");
                let (iova, length, page_size) = (
                    r.u64().map_err(short)?,
                    r.u64().map_err(short)?,
                    r.u64().map_err(short)?,
                );
                if page_size == 0 || !page_size.is_power_of_two() {
                    return Err(inval(format!("page size {page_size:#x}")));
                }
                let bytes = length.div_ceil(page_size).div_ceil(64).saturating_mul(8);
                if bytes > max_xfer as u64 {
                    return Err((
                        libc::E2BIG,
                        format!("a bitmap of {bytes} bytes is above max_data_xfer_size"),
                    ));
                }
                let log = dev.dma_dirty_log().ok_or_else(|| inval("no log"))?;
                let bm = log
                    .report(iova, length, page_size)
                    .map_err(|e| dirty_errno(&e))?;
                out.u64(iova).u64(length).u64(page_size);
                for w in bm.words() {
                    out.u64(*w);
                }
            }
            _ => return Err((libc::ENOTSUP, format!("feature {feature}"))),
        }
        finish(out, argsz)
    }

    /// `MIG_DATA_READ`: fill up to `size` bytes; fewer means the stream has no more now.
    pub(super) fn mig_read(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "MIG_DATA_READ");
        let (_argsz, size) = (r.u32().map_err(short)?, r.u32().map_err(short)?);
        let max = self.max_xfer();
        if size as usize > max {
            return Err(inval(format!(
                "size {size} is above max_data_xfer_size {max}"
            )));
        }
        let stream = self.stream.ok_or_else(no_session)?;
        let m = self
            .dev()?
            .device
            .migration()
            .ok_or_else(|| (libc::ENOTSUP, "no migration".to_string()))?;
        let mut out = vec![0u8; 8 + size as usize];
        let mut got = 0usize;
        while got < size as usize {
            match m.read_data(stream, &mut out[8 + got..]) {
                Ok(0) => break,
                Ok(n) => got += n.min(size as usize - got),
                Err(MigrationError::NoDataNow { .. }) if got > 0 => break,
                Err(e) => return Err(mig_errno(&e)),
            }
        }
        out.truncate(8 + got);
        out[0..4].copy_from_slice(&((8 + got) as u32).to_le_bytes());
        out[4..8].copy_from_slice(&(got as u32).to_le_bytes());
        Ok(Reply {
            payload: out,
            fds: Vec::new(),
        })
    }

    /// `MIG_DATA_WRITE`.
    pub(super) fn mig_write(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "MIG_DATA_WRITE");
        let (_argsz, size) = (r.u32().map_err(short)?, r.u32().map_err(short)?);
        let data = r.rest();
        if data.len() != size as usize || data.len() > self.max_xfer() {
            return Err(inval(format!(
                "size {size} with {} data bytes (max {})",
                data.len(),
                self.max_xfer()
            )));
        }
        let stream = self.stream.ok_or_else(no_session)?;
        let m = self
            .dev()?
            .device
            .migration()
            .ok_or_else(|| (libc::ENOTSUP, "no migration".to_string()))?;
        let mut done = 0;
        while done < data.len() {
            match m.write_data(stream, &data[done..]) {
                Ok(0) => return Err((libc::EIO, "the device took no data".into())),
                Ok(n) => done += n,
                Err(e) => return Err(mig_errno(&e)),
            }
        }
        let mut w = Writer::default();
        w.u32(8).u32(size);
        Reply::data_ok(w.0)
    }
}

impl Reply {
    fn data_ok(payload: Vec<u8>) -> Result<Self, Refusal> {
        Ok(Self {
            payload,
            fds: Vec::new(),
        })
    }
}

/// Patch the reply's argsz to its full size; refuse if the client's argsz has no room.
fn finish(mut out: Writer, argsz: u32) -> Result<Reply, Refusal> {
    let full = out.0.len() as u32;
    if argsz < full {
        return Err((
            libc::EINVAL,
            format!("argsz {argsz} is below the {full}-byte reply"),
        ));
    }
    out.0[0..4].copy_from_slice(&full.to_le_bytes());
    Ok(Reply {
        payload: out.0,
        fds: Vec::new(),
    })
}
