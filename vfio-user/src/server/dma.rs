//! The server's DMA map table: the client memory the device may reach, checked before it
//! is mapped, and turned into the guest memory the device is built on; and the session's
//! `DMA_MAP`/`DMA_UNMAP` handlers.
//!
//! A map is accepted only if the device could never fault on it: page-aligned, inside the
//! file the descriptor names (a mapping past the end of a file raises SIGBUS on access),
//! sealed against shrinking (`F_SEAL_SHRINK`, so the client cannot truncate it later),
//! readable and writeable, not overlapping another map, within `max_dma_maps`.
//!
//! A map without a descriptor (the spec's "not mappable" memory) passes the same checks
//! but the file ones; the device reaches it by `DMA_READ`/`DMA_WRITE` messages to the
//! client ([`super::remote`]).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use slog::debug;

use super::session::{inval, short, Refusal, Reply, Session};
use crate::proto::{Reader, Writer, DMA_FLAG_READ, DMA_FLAG_WRITE};

/// DMA page size.
pub(crate) const DMA_PAGE: u64 = 4096;

/// Most client memory mapped at once (all maps together): what the device's memory
/// bookkeeping (a dirty bitmap per region) may cost is bounded by it.
pub(crate) const MAX_DMA_TOTAL: u64 = 64 << 30;

/// One accepted map.
#[derive(Debug)]
struct DmaMap {
    iova: u64,
    size: u64,
    offset: u64,
    /// `None`: reached by messages.
    file: Option<File>,
}

/// The DMA maps of one client.
#[derive(Debug)]
pub(crate) struct DmaTable {
    maps: Vec<DmaMap>,
    max: usize,
}

impl DmaTable {
    /// An empty table allowing `max` maps.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            maps: Vec::new(),
            max,
        }
    }

    /// Number of maps.
    pub(crate) fn len(&self) -> usize {
        self.maps.len()
    }

    /// Accept a map of `size` bytes at `iova` from `fd` at `offset`, or say (errno, why) not.
    pub(crate) fn map(
        &mut self,
        iova: u64,
        size: u64,
        offset: u64,
        flags: u32,
        fd: Option<OwnedFd>,
    ) -> Result<(), (i32, String)> {
        if flags & (DMA_FLAG_READ | DMA_FLAG_WRITE) != DMA_FLAG_READ | DMA_FLAG_WRITE
            || flags & !(DMA_FLAG_READ | DMA_FLAG_WRITE) != 0
        {
            return Err((
                libc::EINVAL,
                format!("flags {flags:#x}: a map must be readable and writeable"),
            ));
        }
        let aligned = |v: u64| v % DMA_PAGE == 0;
        if size == 0 || !aligned(iova) || !aligned(size) || !aligned(offset) {
            return Err((libc::EINVAL, format!("map {iova:#x}+{size:#x} at file offset {offset:#x} is empty or not page-aligned")));
        }
        let (Some(end), Some(file_end)) = (iova.checked_add(size), offset.checked_add(size)) else {
            return Err((libc::EINVAL, "map overflows".into()));
        };
        if usize::try_from(size).is_err() || i64::try_from(file_end).is_err() {
            return Err((libc::EINVAL, "map is larger than this host can map".into()));
        }
        if self
            .maps
            .iter()
            .any(|m| iova < m.iova + m.size && m.iova < end)
        {
            return Err((
                libc::EEXIST,
                format!("map {iova:#x}+{size:#x} overlaps an existing map"),
            ));
        }
        let total: u64 = self.maps.iter().map(|m| m.size).sum();
        if total.saturating_add(size) > MAX_DMA_TOTAL {
            return Err((
                libc::ENOSPC,
                format!("maps would exceed {MAX_DMA_TOTAL:#x} bytes in all"),
            ));
        }
        if self.maps.len() >= self.max {
            return Err((
                libc::ENOSPC,
                format!("already {} maps (max_dma_maps)", self.max),
            ));
        }
        let Some(fd) = fd else {
            self.maps.push(DmaMap {
                iova,
                size,
                offset,
                file: None,
            });
            return Ok(());
        };
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| (libc::EINVAL, format!("cannot stat the map's file: {e}")))?
            .len();
        if len < file_end {
            return Err((
                libc::EINVAL,
                format!("the map's file has {len:#x} bytes, the map needs {file_end:#x}"),
            ));
        }
        // SAFETY: F_GET_SEALS only reads the file's seal set.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err((libc::EPERM, "the map's file is not sealed against shrinking (F_SEAL_SHRINK): a truncation would fault the device".into()));
        }
        self.maps.push(DmaMap {
            iova,
            size,
            offset,
            file: Some(file),
        });
        Ok(())
    }

    /// The mapped ranges (iova, size), with and without descriptors.
    pub(crate) fn ranges(&self) -> Vec<(u64, u64)> {
        self.maps.iter().map(|m| (m.iova, m.size)).collect()
    }

    /// The ranges (iova, size) mapped without a descriptor: reached by messages.
    pub(crate) fn remote_ranges(&self) -> Vec<(u64, u64)> {
        self.maps
            .iter()
            .filter(|m| m.file.is_none())
            .map(|m| (m.iova, m.size))
            .collect()
    }

    /// Remove the map that is exactly `iova`+`size`.
    pub(crate) fn unmap(&mut self, iova: u64, size: u64) -> Result<(), (i32, String)> {
        match self
            .maps
            .iter()
            .position(|m| m.iova == iova && m.size == size)
        {
            Some(i) => {
                self.maps.remove(i);
                Ok(())
            }
            None => Err((
                libc::ENOENT,
                format!("no map is exactly {iova:#x}+{size:#x}"),
            )),
        }
    }

    /// Map every region accepted with a descriptor into this process as guest memory at
    /// its iova.
    pub(crate) fn guest_mem(&self) -> Result<GuestMemoryMmap<AtomicBitmap>, String> {
        let mut ranges = Vec::with_capacity(self.maps.len());
        for m in &self.maps {
            let Some(file) = &m.file else { continue };
            let f = file
                .try_clone()
                .map_err(|e| format!("cannot duplicate a map's file: {e}"))?;
            ranges.push((
                GuestAddress(m.iova),
                m.size as usize,
                Some(FileOffset::new(f, m.offset)),
            ));
        }
        if ranges.is_empty() {
            return Ok(GuestMemoryMmap::new());
        }
        GuestMemoryMmap::<AtomicBitmap>::from_ranges_with_files(ranges)
            .map_err(|e| format!("cannot map the client's memory: {e}"))
    }
}

impl Session {
    pub(super) fn dma_map(&mut self, p: &[u8], mut fds: Vec<OwnedFd>) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "DMA_MAP");
        let (_argsz, flags) = (r.u32().map_err(short)?, r.u32().map_err(short)?);
        let (offset, address, size) = (
            r.u64().map_err(short)?,
            r.u64().map_err(short)?,
            r.u64().map_err(short)?,
        );
        if fds.len() > 1 {
            return Err(inval(format!(
                "DMA_MAP with {} descriptors (one at most)",
                fds.len()
            )));
        }
        if self.dev.is_some() {
            return Err((
                libc::EBUSY,
                "the device is built on the current maps; map before the first device request"
                    .into(),
            ));
        }
        self.dma.map(address, size, offset, flags, fds.pop())?;
        debug!(self.log, "dma map"; "iova" => format!("{address:#x}"), "size" => format!("{size:#x}"));
        Reply::data(Vec::new())
    }

    pub(super) fn dma_unmap(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "DMA_UNMAP");
        let (argsz, flags) = (r.u32().map_err(short)?, r.u32().map_err(short)?);
        let (address, size) = (r.u64().map_err(short)?, r.u64().map_err(short)?);
        if flags != 0 {
            return Err(inval(format!(
                "DMA_UNMAP flags {flags:#x} (none are defined)"
            )));
        }
        if self.dev.is_some() {
            return Err((
                libc::EBUSY,
                "the device's DMA uses this memory; unmapping under it is refused".into(),
            ));
        }
        self.dma.unmap(address, size)?;
        let mut w = Writer::default();
        w.u32(argsz).u32(flags).u64(address).u64(size);
        Reply::data(w.0)
    }
}
