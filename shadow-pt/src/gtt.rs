//! The shadow GTT: guest values, host translations, and DMA through them.

use slog::{debug, warn, Logger};
use snafu::ensure;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileSlice,
};

use crate::dirty::{DirtyTracking, DmaLog};
use crate::entry::{
    EntryStatus, ScratchReason, PAGE_SIZE, PTE_ADDR_MASK, PTE_PRESENT, PTE_RESERVED_MASK,
    PTE_WRITABLE,
};
use crate::error::{
    DmaError, EntryCountSnafu, EntryIndexSnafu, NotPresentSnafu, ReadOnlySnafu, Result,
    TableSizeSnafu,
};
use crate::remote::{RemoteDma, RemoteDmaError, RemoteMemory};

/// Largest table this crate builds (4 GiB of mappable space).
pub const MAX_ENTRIES: usize = 1 << 20;

/// Where one entry's page lives on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Not present: DMA faults.
    NotPresent,
    /// The scratch page: reads give zeros, writes are dropped.
    Scratch,
    /// A page of guest RAM.
    Ram {
        /// Guest-physical page address.
        gpa: u64,
        /// Host virtual address of the page (as an integer: it is never dereferenced
        /// outside this crate and never saved).
        host: usize,
        /// Whether device writes are allowed.
        writable: bool,
    },
    /// A page of guest RAM the device cannot map, reached through the table's
    /// [`RemoteMemory`] port (vfio-user's `DMA_READ`/`DMA_WRITE`).
    Remote {
        /// Guest-physical page address.
        gpa: u64,
        /// Whether device writes are allowed.
        writable: bool,
    },
}

/// What [`ShadowGtt::rebuild`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RebuildSummary {
    /// Entries that map guest RAM.
    pub mapped: usize,
    /// Present entries now on the scratch page (outside guest RAM or reserved bits).
    pub scratch: usize,
}

/// The saved form of a shadow GTT: the guest's entry values, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowGttState {
    /// The value the guest wrote to each entry.
    pub entries: Vec<u64>,
}

/// A shadow page table over the guest's GTT. See the crate docs.
#[derive(Debug)]
pub struct ShadowGtt {
    guest_mem: GuestMemoryMmap<AtomicBitmap>,
    remote: Option<RemoteMemory>,
    guest: Vec<u64>,
    shadow: Vec<Translation>,
    log: DmaLog,
    logger: Logger,
}

impl ShadowGtt {
    /// An all-not-present table of `entries` entries over `guest_mem`, tracking DMA writes
    /// as `tracking` says once logging is started.
    pub fn new(
        entries: usize,
        guest_mem: GuestMemoryMmap<AtomicBitmap>,
        tracking: DirtyTracking,
        logger: Logger,
    ) -> Result<Self> {
        ensure!(
            (1..=MAX_ENTRIES).contains(&entries),
            TableSizeSnafu {
                entries,
                max: MAX_ENTRIES
            }
        );
        Ok(Self {
            guest_mem,
            remote: None,
            guest: vec![0; entries],
            shadow: vec![Translation::NotPresent; entries],
            log: DmaLog::new(tracking),
            logger,
        })
    }

    /// Build a table from saved state (re-validating every entry against `guest_mem`).
    pub fn from_state(
        guest_mem: GuestMemoryMmap<AtomicBitmap>,
        tracking: DirtyTracking,
        logger: Logger,
        state: &ShadowGttState,
    ) -> Result<Self> {
        let mut gtt = Self::new(state.entries.len(), guest_mem, tracking, logger)?;
        gtt.rebuild(&state.entries)?;
        Ok(gtt)
    }

    /// Serve pages inside `remote`'s ranges (and not inside mapped guest memory) through
    /// its port ([`Translation::Remote`]). Every entry is re-validated.
    pub fn with_remote(mut self, remote: Option<RemoteMemory>) -> Self {
        self.remote = remote;
        let entries = self.guest.clone();
        let shadow = entries.iter().map(|&v| self.validate(v).1).collect();
        self.shadow = shadow;
        self
    }

    /// The memory reached through a port, if any.
    pub fn remote(&self) -> Option<&RemoteMemory> {
        self.remote.as_ref()
    }

    /// The saved form: the guest's values.
    pub fn state(&self) -> ShadowGttState {
        ShadowGttState {
            entries: self.guest.clone(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.guest.len()
    }

    /// Always false: a table has at least one entry.
    pub fn is_empty(&self) -> bool {
        self.guest.is_empty()
    }

    /// Bytes of GTT-mapped space (`len() * PAGE_SIZE`).
    pub fn mapped_space(&self) -> u64 {
        self.guest.len() as u64 * PAGE_SIZE
    }

    /// The guest memory this table translates into.
    pub fn guest_memory(&self) -> &GuestMemoryMmap<AtomicBitmap> {
        &self.guest_mem
    }

    /// The guest's values, for saving. Host addresses never leave the table.
    pub fn guest_entries(&self) -> &[u64] {
        &self.guest
    }

    /// The value the guest last wrote to entry `index` (what a GTT window read returns).
    pub fn read_entry(&self, index: u64) -> Result<u64> {
        let i = self.index(index)?;
        Ok(self.guest[i])
    }

    /// The host translation of entry `index`.
    pub fn translation(&self, index: u64) -> Result<Translation> {
        let i = self.index(index)?;
        Ok(self.shadow[i])
    }

    /// The guest writes `value` to entry `index`: remember it and rebuild its shadow.
    pub fn write_entry(&mut self, index: u64, value: u64) -> Result<EntryStatus> {
        let i = self.index(index)?;
        let (status, translation) = self.validate(value);
        self.guest[i] = value;
        self.shadow[i] = translation;
        Ok(status)
    }

    /// Replace every entry with saved values, re-validating each one and rebuilding the
    /// shadow from scratch. Nothing changes on error.
    pub fn rebuild(&mut self, entries: &[u64]) -> Result<RebuildSummary> {
        ensure!(
            entries.len() == self.guest.len(),
            EntryCountSnafu {
                got: entries.len(),
                expected: self.guest.len()
            }
        );
        let mut summary = RebuildSummary::default();
        let shadow: Vec<Translation> = entries
            .iter()
            .map(|&v| {
                let (status, t) = self.validate(v);
                match status {
                    EntryStatus::Mapped { .. } => summary.mapped += 1,
                    EntryStatus::Scratch(_) => summary.scratch += 1,
                    EntryStatus::NotPresent => {}
                }
                t
            })
            .collect();
        self.guest.copy_from_slice(entries);
        self.shadow = shadow;
        debug!(self.logger, "shadow GTT rebuilt";
            "mapped" => summary.mapped, "scratch" => summary.scratch);
        Ok(summary)
    }

    /// Make every entry not present (device reset).
    pub fn clear(&mut self) {
        self.guest.iter_mut().for_each(|v| *v = 0);
        self.shadow
            .iter_mut()
            .for_each(|t| *t = Translation::NotPresent);
    }

    /// Read `buf.len()` bytes of GTT-mapped space at `offset` (may cross pages). Scratch
    /// pages read as zeros; a non-present entry faults before anything is read. Remote
    /// pages are read through the port, a run of consecutive ones in one call; a port
    /// failure faults (what was read before it stays in `buf`).
    pub fn dma_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check(offset, buf.len(), false)?;
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let (page, in_page) = ((off / PAGE_SIZE) as usize, (off % PAGE_SIZE) as usize);
            let n = (PAGE_SIZE as usize - in_page).min(buf.len() - done);
            match self.shadow[page] {
                Translation::Ram { host, .. } => {
                    let dst = &mut buf[done..done + n];
                    // SAFETY: `host` is the host address of a whole guest page that
                    // `validate` found inside one region of `self.guest_mem`, and
                    // `in_page + n <= PAGE_SIZE`, so the slice lies inside that mapping. The
                    // mapping lives as long as the region's `Arc`, which our clone of the
                    // `GuestMemoryMmap` holds for as long as `self` exists. Other users of
                    // guest RAM (vCPUs) may access it concurrently, which is why the copy
                    // goes through a `VolatileSlice`.
                    let src = unsafe { VolatileSlice::new((host + in_page) as *mut u8, n) };
                    src.copy_to(dst);
                }
                Translation::Remote { gpa, .. } => {
                    let n = self.remote_run(page, in_page, buf.len() - done);
                    let at = gpa + in_page as u64;
                    self.remote_port(off)?
                        .read(at, &mut buf[done..done + n])
                        .map_err(|e| self.remote_fault(off, &e))?;
                    done += n;
                    continue;
                }
                // `check` rejected non-present entries before the first byte moved.
                Translation::Scratch | Translation::NotPresent => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Write `buf` to GTT-mapped space at `offset` (may cross pages), bypassing guest
    /// memory's dirty bitmap, and log the pages written. Writes to scratch pages are
    /// dropped; a non-present or read-only entry faults before anything is written. Remote
    /// pages are written through the port (a run of consecutive ones in one call) and
    /// logged once the port took them; a port failure faults (pages before it stay
    /// written, and logged).
    pub fn dma_write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DmaError> {
        self.check(offset, buf.len(), true)?;
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let (page, in_page) = ((off / PAGE_SIZE) as usize, (off % PAGE_SIZE) as usize);
            let n = (PAGE_SIZE as usize - in_page).min(buf.len() - done);
            match self.shadow[page] {
                Translation::Ram { gpa, host, .. } => {
                    // SAFETY: as in `dma_read`: `host + in_page .. + n` lies inside one page
                    // of a guest RAM mapping kept alive by our `GuestMemoryMmap` clone; the
                    // slice has the unit bitmap `()`, so vm-memory's dirty bitmap is not
                    // touched.
                    let dst = unsafe { VolatileSlice::new((host + in_page) as *mut u8, n) };
                    dst.copy_from(&buf[done..done + n]);
                    self.log.dma_wrote(gpa);
                }
                Translation::Remote { gpa, .. } => {
                    let n = self.remote_run(page, in_page, buf.len() - done);
                    let at = gpa + in_page as u64;
                    self.remote_port(off)?
                        .write(at, &buf[done..done + n])
                        .map_err(|e| self.remote_fault(off, &e))?;
                    let pages = (in_page + n).div_ceil(PAGE_SIZE as usize) as u64;
                    for p in 0..pages {
                        self.log.dma_wrote(gpa + p * PAGE_SIZE);
                    }
                    done += n;
                    continue;
                }
                Translation::Scratch | Translation::NotPresent => {}
            }
            done += n;
        }
        Ok(())
    }

    /// Bytes from `in_page` of entry `page` on through the run of remote entries whose
    /// guest pages follow each other inside one remote range, at most `left`.
    fn remote_run(&self, page: usize, in_page: usize, left: usize) -> usize {
        let Translation::Remote { gpa: first, .. } = self.shadow[page] else {
            return 0;
        };
        let range_end = self
            .remote
            .as_ref()
            .and_then(|r| r.range_of(first))
            .map_or(first + PAGE_SIZE, |(start, size)| start + size);
        let mut n = (PAGE_SIZE as usize - in_page).min(left);
        let mut next = page + 1;
        while n < left {
            let want = first + (next - page) as u64 * PAGE_SIZE;
            match self.shadow.get(next) {
                Some(Translation::Remote { gpa, .. }) if *gpa == want && want < range_end => {
                    n = (n + PAGE_SIZE as usize).min(left);
                    next += 1;
                }
                _ => break,
            }
        }
        n
    }

    fn remote_port(&self, offset: u64) -> Result<&dyn RemoteDma, DmaError> {
        self.remote
            .as_ref()
            .map(|r| r.port().as_ref())
            .ok_or(DmaError::Remote { offset })
    }

    fn remote_fault(&self, offset: u64, e: &RemoteDmaError) -> DmaError {
        warn!(self.logger, "remote DMA failed: the device sees a DMA fault";
            "gtt_offset" => format!("{offset:#x}"), "why" => %e);
        DmaError::Remote { offset }
    }

    /// Check an access of `len` bytes at `offset` before touching memory.
    fn check(&self, offset: u64, len: usize, write: bool) -> Result<(), DmaError> {
        if len == 0 {
            return Ok(());
        }
        let last = offset
            .checked_add(len as u64 - 1)
            .filter(|&l| l < self.mapped_space())
            .ok_or(DmaError::OutOfRange { offset })?;
        let mut page = offset / PAGE_SIZE;
        while page <= last / PAGE_SIZE {
            let at = (page * PAGE_SIZE).max(offset);
            match self.shadow[page as usize] {
                Translation::NotPresent => return NotPresentSnafu { offset: at }.fail(),
                Translation::Ram {
                    writable: false, ..
                }
                | Translation::Remote {
                    writable: false, ..
                } if write => return ReadOnlySnafu { offset: at }.fail(),
                _ => {}
            }
            page += 1;
        }
        Ok(())
    }

    fn index(&self, index: u64) -> Result<usize> {
        usize::try_from(index)
            .ok()
            .filter(|&i| i < self.guest.len())
            .ok_or(
                EntryIndexSnafu {
                    index,
                    entries: self.guest.len(),
                }
                .build(),
            )
    }

    /// Validate one guest value and compute its shadow.
    fn validate(&self, value: u64) -> (EntryStatus, Translation) {
        if value & PTE_PRESENT == 0 {
            return (EntryStatus::NotPresent, Translation::NotPresent);
        }
        let scratch = |r| (EntryStatus::Scratch(r), Translation::Scratch);
        let reserved = value & PTE_RESERVED_MASK;
        if reserved != 0 {
            return scratch(ScratchReason::ReservedBits { bits: reserved });
        }
        let gpa = value & PTE_ADDR_MASK;
        let writable = value & PTE_WRITABLE != 0;
        match self.host_page(gpa) {
            Some(host) => (
                EntryStatus::Mapped { gpa, writable },
                Translation::Ram {
                    gpa,
                    host,
                    writable,
                },
            ),
            None if self.remote.as_ref().is_some_and(|r| r.contains_page(gpa)) => (
                EntryStatus::Mapped { gpa, writable },
                Translation::Remote { gpa, writable },
            ),
            None => scratch(ScratchReason::OutsideRam { gpa }),
        }
    }

    /// Host address of the guest page at `gpa`, if the whole page is inside one region.
    fn host_page(&self, gpa: u64) -> Option<usize> {
        let region = self.guest_mem.find_region(GuestAddress(gpa))?;
        let last = gpa.checked_add(PAGE_SIZE - 1)?;
        if last > region.last_addr().0 {
            return None;
        }
        let raddr = region.to_region_addr(GuestAddress(gpa))?;
        region.get_host_address(raddr).ok().map(|p| p as usize)
    }

    pub(crate) fn dirty_log(&self) -> &DmaLog {
        &self.log
    }

    pub(crate) fn dirty_log_mut(&mut self) -> &mut DmaLog {
        &mut self.log
    }

    /// Guest-physical addresses of every page a present entry maps (the pinned set).
    pub(crate) fn pinned_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.shadow.iter().filter_map(|t| match t {
            Translation::Ram { gpa, .. } | Translation::Remote { gpa, .. } => Some(*gpa),
            _ => None,
        })
    }

    /// The tracking mode.
    pub fn tracking(&self) -> DirtyTracking {
        self.log.tracking()
    }

    /// Change the tracking mode (takes effect for the next write and report).
    pub fn set_tracking(&mut self, tracking: DirtyTracking) {
        self.log.set_tracking(tracking);
    }
}

#[cfg(test)]
#[path = "gtt_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "remote_tests.rs"]
mod remote_tests;
