//! Guest RAM: one vm-memory mapping with an `AtomicBitmap` that logs every write the vCPU
//! makes through it (the CPU dirty log; device DMA bypasses it, see shadow-pt).

use mdev_core::DirtyBitmap;
use sha2::{Digest, Sha256};
use snafu::{ensure, ResultExt, Snafu};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest RAM with a dirty bitmap.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

/// Page size of guest RAM tracking and migration.
pub const PAGE_SIZE: u64 = 4096;

/// Errors of guest RAM management.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum MemoryError {
    /// The size is not usable.
    #[snafu(display(
        "guest RAM size {size:#x} must be a non-zero multiple of 4 KiB below {limit:#x}"
    ))]
    BadSize {
        /// Size asked for.
        size: u64,
        /// Largest size allowed.
        limit: u64,
    },
    /// The mapping could not be created.
    #[snafu(display("cannot map {size:#x} bytes of guest RAM: {source}"))]
    Map {
        /// Size asked for.
        size: u64,
        /// vm-memory's error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The shared-memory file could not be made.
    #[snafu(display("cannot create {size:#x} bytes of shared guest RAM (memfd): {source}"))]
    Shared {
        /// Size asked for.
        size: u64,
        /// The system error.
        source: std::io::Error,
    },
    /// A guest-physical access outside guest RAM.
    #[snafu(display(
        "guest RAM access of {len} bytes at {gpa:#x} is outside guest RAM (size {size:#x})"
    ))]
    OutOfRange {
        /// Address.
        gpa: u64,
        /// Length.
        len: usize,
        /// RAM size.
        size: u64,
    },
}

/// `Result` with a [`MemoryError`].
pub type Result<T, E = MemoryError> = std::result::Result<T, E>;

/// Map `size` bytes of guest RAM at guest-physical 0, below `limit` (the MMIO hole).
pub fn create(size: u64, limit: u64) -> Result<GuestMem> {
    ensure!(
        size > 0 && size % PAGE_SIZE == 0 && size <= limit,
        BadSizeSnafu { size, limit }
    );
    let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), size as usize)])
        .context(MapSnafu { size })?;
    advise_huge_pages(&mem);
    Ok(mem)
}

/// Map `size` bytes of guest RAM at guest-physical 0 as shared memory: a memfd, sealed
/// against shrinking and growing, mapped `MAP_SHARED`, so another process (a vfio-user
/// device process, through `DMA_MAP` with the fd) can map the same pages. The dirty bitmap
/// still logs the VMM's own writes; a device in another process logs its DMA itself.
pub fn create_shared(size: u64, limit: u64) -> Result<GuestMem> {
    ensure!(
        size > 0 && size % PAGE_SIZE == 0 && size <= limit,
        BadSizeSnafu { size, limit }
    );
    let file = memfd(size).context(SharedSnafu { size })?;
    let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges_with_files([(
        GuestAddress(0),
        size as usize,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .context(MapSnafu { size })?;
    advise_huge_pages(&mem);
    Ok(mem)
}

fn memfd(size: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let name = c"guest-ram";
    // SAFETY: memfd_create reads a NUL-terminated name that outlives the call.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size)?;
    use std::os::fd::AsRawFd;
    // SAFETY: F_ADD_SEALS only changes the seal set of a file this function owns.
    if unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Whether guest RAM is shared memory (file-backed, mappable by another process).
pub fn is_shared(mem: &GuestMem) -> bool {
    mem.iter().any(|r| r.file_offset().is_some())
}

/// Ask for transparent huge pages over guest RAM: one fault per 2 MiB instead of 512, which
/// matters most on a restore or migration target, where every page is touched once, and
/// when the VMM itself runs in a VM (every fault is then an exit).
fn advise_huge_pages(mem: &GuestMem) {
    for region in mem.iter() {
        if let Ok(host) = mem.get_host_address(region.start_addr()) {
            let len = region.len() as usize;
            // SAFETY: advice on a range this mapping owns (host address and length of one
            // vm-memory region); MADV_HUGEPAGE changes no contents and a failure (no THP) is
            // harmless.
            unsafe {
                libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Allocate and fault in every page of guest RAM now, split over up to `threads` threads,
/// so that no later write to it takes a page fault or waits for the kernel to zero a fresh
/// page: what a VFIO VMM does when it pins and maps guest RAM at creation. A migration
/// target does this before it accepts the stream. Nothing is written that anyone could see
/// (the pages are zero before and after) and the CPU dirty log is untouched. Uses
/// `MADV_POPULATE_WRITE`; where the kernel lacks it (before 5.14), one write per page of
/// the value already there.
///
/// Every page is then backed, so [`never_backed`] and [`file_holes`] report none: a first
/// pre-copy pass from this VM reads all of its RAM (and sends its zero pages as zero runs).
pub fn prefault(mem: &GuestMem, threads: usize) {
    // Pieces of whole 2 MiB (huge) pages: (host address, length).
    const HUGE: usize = 2 << 20;
    let mut pieces = Vec::new();
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        let per = len.div_ceil(threads.max(1)).next_multiple_of(HUGE);
        let mut off = 0;
        while off < len {
            let n = per.min(len - off);
            pieces.push((host as usize + off, n));
            off += n;
        }
    }
    std::thread::scope(|s| {
        for &(addr, len) in &pieces {
            s.spawn(move || populate(addr, len));
        }
    });
}

/// Fault in `len` bytes at host address `addr`, inside guest RAM's mapping.
fn populate(addr: usize, len: usize) {
    // SAFETY: advice on a range inside one vm-memory region's mapping, which outlives this
    // call (the caller borrows the memory for the whole scope); MADV_POPULATE_WRITE only
    // faults pages in, changing no contents.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
    if r == 0 {
        return;
    }
    let mut off = 0;
    while off < len {
        let p = (addr + off) as *mut u8;
        // SAFETY: `p` lies inside the region's mapping (off < len), which is readable and
        // writable; writing back the value just read changes nothing, and nothing else
        // accesses guest RAM while the VM is being prepared.
        unsafe { p.write_volatile(p.read_volatile()) };
        off += PAGE_SIZE as usize;
    }
}

/// Total guest RAM size in bytes.
pub fn size(mem: &GuestMem) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Read and clear the CPU dirty log: one bit per guest page written since the last call.
pub fn harvest_dirty(mem: &GuestMem) -> DirtyBitmap {
    let total = size(mem);
    // PAGE_SIZE is a power of two; new() cannot fail.
    let mut out = DirtyBitmap::new(0, total, PAGE_SIZE).unwrap_or_else(|_| unreachable!());
    for region in mem.iter() {
        let base = region.start_addr().0;
        let mapping: &vm_memory::MmapRegion<AtomicBitmap> = region;
        let words = mapping.bitmap().get_and_reset();
        for (w, word) in words.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                out.mark(base + (w as u64 * 64 + b) * PAGE_SIZE);
            }
        }
    }
    out
}

/// Guest pages that the host kernel has never backed: neither present nor swapped out in
/// `/proc/self/pagemap` (bits 63 and 62). Guest RAM is a fresh anonymous mapping, so such a
/// page has never been written and reads as zero; a first pre-copy pass can skip it without
/// reading it (reading would fault in 4 KiB of the zero page per page). `None` when the
/// pagemap cannot be read (then every page must be read). Shared guest RAM asks its file
/// instead ([`file_holes`]): a page another process (a device's DMA) wrote is not present
/// in this process's page tables, but it is allocated in the file.
pub fn never_backed(mem: &GuestMem) -> Option<DirtyBitmap> {
    use std::io::{Read, Seek, SeekFrom};
    if is_shared(mem) {
        return file_holes(mem);
    }
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let total = size(mem);
    let mut out = DirtyBitmap::new(0, total, PAGE_SIZE).ok()?;
    let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut buf = vec![0u8; 8 * 4096];
    for region in mem.iter() {
        let base = region.start_addr().0;
        let host = mem.get_host_address(region.start_addr()).ok()? as u64;
        let pages = region.len() / PAGE_SIZE;
        let mut p = 0;
        while p < pages {
            let n = (pages - p).min(4096);
            f.seek(SeekFrom::Start((host / PAGE_SIZE + p) * 8)).ok()?;
            let b = &mut buf[..(n * 8) as usize];
            f.read_exact(b).ok()?;
            for (i, e) in b.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
                if v & (PRESENT | SWAPPED) == 0 {
                    out.mark(base + (p + i as u64) * PAGE_SIZE);
                }
            }
            p += n;
        }
    }
    Some(out)
}

/// The pages of shared guest RAM that are holes in its file (`SEEK_DATA`/`SEEK_HOLE`):
/// never written by this process nor by any other that maps the file, so zero. `None` if
/// the file cannot say.
pub fn file_holes(mem: &GuestMem) -> Option<DirtyBitmap> {
    use std::os::fd::AsRawFd;
    let mut out = DirtyBitmap::new(0, size(mem), PAGE_SIZE).ok()?;
    for region in mem.iter() {
        let fo = region.file_offset()?;
        let fd = fo.file().as_raw_fd();
        let (start, end) = (fo.start(), fo.start() + region.len());
        let gpa = |off: u64| region.start_addr().0 + (off - start);
        let mut hole = |from: u64, to: u64| {
            let mut a = from.next_multiple_of(PAGE_SIZE);
            while a + PAGE_SIZE <= to {
                out.mark(gpa(a));
                a += PAGE_SIZE;
            }
        };
        let mut off = start;
        while off < end {
            // SAFETY: lseek only moves this file's offset (nobody reads through it).
            let data = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                    hole(off, end);
                    break;
                }
                return None;
            }
            let data = (data as u64).min(end);
            hole(off, data);
            if data >= end {
                break;
            }
            // SAFETY: as above.
            let next = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            if next < 0 {
                return None;
            }
            off = (next as u64).min(end).max(data + 1);
        }
    }
    Some(out)
}

/// Every guest page that may hold data: all of them but those [`never_backed`] reports
/// (all of them when the pagemap cannot be read). What a first save or pre-copy pass reads.
pub fn maybe_written(mem: &GuestMem) -> DirtyBitmap {
    let total = size(mem);
    let untouched = never_backed(mem);
    // PAGE_SIZE is a power of two; new() cannot fail.
    let mut out = DirtyBitmap::new(0, total, PAGE_SIZE).unwrap_or_else(|_| unreachable!());
    let mut gpa = 0;
    while gpa < total {
        if !untouched.as_ref().is_some_and(|u| u.is_dirty(gpa)) {
            out.mark(gpa);
        }
        gpa += PAGE_SIZE;
    }
    out
}

/// Read `buf.len()` bytes at `gpa`, checking the range.
pub fn read(mem: &GuestMem, gpa: u64, buf: &mut [u8]) -> Result<()> {
    mem.read_slice(buf, GuestAddress(gpa))
        .map_err(|_| MemoryError::OutOfRange {
            gpa,
            len: buf.len(),
            size: size(mem),
        })
}

/// Write `buf` at `gpa` (marks the CPU dirty log), checking the range.
pub fn write(mem: &GuestMem, gpa: u64, buf: &[u8]) -> Result<()> {
    mem.write_slice(buf, GuestAddress(gpa))
        .map_err(|_| MemoryError::OutOfRange {
            gpa,
            len: buf.len(),
            size: size(mem),
        })
}

/// Whether a page is all zeros.
pub fn is_zero(page: &[u8]) -> bool {
    // Compare in u64 chunks; the compiler vectorises this.
    let (pre, mid, post) = {
        // SAFETY: any bit pattern is a valid u64; align_to only reinterprets the aligned
        // middle part of the byte slice.
        unsafe { page.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// SHA-256 of all guest RAM, in address order.
pub fn digest(mem: &GuestMem) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut page = vec![0u8; 1 << 20];
    let total = size(mem);
    let mut a = 0;
    while a < total {
        let n = (total - a).min(page.len() as u64) as usize;
        if read(mem, a, &mut page[..n]).is_err() {
            break;
        }
        h.update(&page[..n]);
        a += n as u64;
    }
    h.finalize().into()
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_writes_are_logged_and_harvest_clears() {
        let mem = create(1 << 20, 1 << 30).unwrap();
        write(&mem, 0x3000 + 10, &[1, 2, 3]).unwrap();
        write(&mem, 0x5ffe, &[1, 2, 3, 4]).unwrap();
        let d = harvest_dirty(&mem);
        assert_eq!(
            d.iter_dirty().collect::<Vec<_>>(),
            vec![0x3000, 0x5000, 0x6000]
        );
        assert_eq!(harvest_dirty(&mem).count(), 0);
    }

    #[test]
    fn rejects_bad_sizes_and_ranges() {
        assert!(matches!(
            create(0, 1 << 30),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            create(4097, 1 << 30),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            create(2 << 30, 1 << 30),
            Err(MemoryError::BadSize { .. })
        ));
        let mem = create(1 << 20, 1 << 30).unwrap();
        let err = write(&mem, (1 << 20) - 2, &[0; 4]).unwrap_err();
        assert!(err.to_string().contains("outside guest RAM"), "{err}");
    }

    #[test]
    fn never_backed_pages_are_the_untouched_ones() {
        let mem = create(1 << 20, 1 << 30).unwrap();
        write(&mem, 0x3000, &[7]).unwrap();
        let mut b = [0u8; 1];
        read(&mem, 0x5000, &mut b).unwrap();
        let Some(nb) = never_backed(&mem) else {
            return; // no pagemap on this host: nothing to check
        };
        assert!(!nb.is_dirty(0x3000), "a written page is backed");
        assert!(!nb.is_dirty(0x5000), "a read page maps the zero page");
        assert!(nb.is_dirty(0x7000), "an untouched page is not backed");
        assert_eq!(nb.count(), 256 - 2);
    }

    #[test]
    fn shared_ram_is_a_sealed_memfd_whose_holes_are_never_written_pages() {
        let mem = create_shared(1 << 20, 1 << 30).unwrap();
        assert!(is_shared(&mem));
        assert!(!is_shared(&create(1 << 20, 1 << 30).unwrap()));
        write(&mem, 0x3000, &[7]).unwrap();
        assert_eq!(
            harvest_dirty(&mem).iter_dirty().collect::<Vec<_>>(),
            vec![0x3000]
        );
        // Another mapping of the same file sees the write, as a device process would.
        let region = mem.iter().next().unwrap();
        let file = region.file_offset().unwrap().file();
        let mut b = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut b, 0x3000).unwrap();
        assert_eq!(b, [7]);
        assert!(file.set_len(4096).is_err(), "sealed against shrinking");
        // Only the written page is data in the file; a write through another mapping
        // (a device process's) counts as well.
        use std::os::unix::fs::FileExt;
        file.write_all_at(&[1], 0x8_0000).unwrap();
        let holes = never_backed(&mem).expect("tmpfs answers SEEK_HOLE");
        assert!(!holes.is_dirty(0x3000) && !holes.is_dirty(0x8_0000));
        assert!(holes.is_dirty(0x4000) && holes.is_dirty(0));
        assert_eq!(
            maybe_written(&mem).iter_dirty().collect::<Vec<_>>(),
            vec![0x3000, 0x8_0000]
        );
    }

    #[test]
    fn prefault_backs_every_page_and_logs_nothing() {
        for mem in [
            create(8 << 20, 1 << 30).unwrap(),
            create_shared(8 << 20, 1 << 30).unwrap(),
        ] {
            write(&mem, 0x3000, &[7]).unwrap();
            let _ = harvest_dirty(&mem);
            prefault(&mem, 3);
            if let Some(nb) = never_backed(&mem) {
                assert_eq!(nb.count(), 0, "every page is backed");
            }
            assert_eq!(harvest_dirty(&mem).count(), 0, "the dirty log is untouched");
            let mut b = [0u8; 2];
            read(&mem, 0x3000, &mut b).unwrap();
            assert_eq!(b, [7, 0], "contents unchanged");
            let mut page = vec![1u8; 4096];
            read(&mem, (8 << 20) - 4096, &mut page).unwrap();
            assert!(is_zero(&page));
        }
    }

    #[test]
    fn zero_pages_and_digest() {
        assert!(is_zero(&[0u8; 4096]));
        let mut p = [0u8; 4096];
        p[4095] = 1;
        assert!(!is_zero(&p));
        let mem = create(1 << 20, 1 << 30).unwrap();
        let a = digest(&mem);
        write(&mem, 0x1234, &[9]).unwrap();
        assert_ne!(a, digest(&mem));
    }
}
