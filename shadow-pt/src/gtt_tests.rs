//! Tests of the shadow GTT and its dirty log, over real `GuestMemoryMmap`s.

use std::ops::Deref;

use mdev_core::{DirtyError, DmaDirtyLog, DmaRange};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, MmapRegion};

use super::*;
use crate::ShadowError;

const MB: usize = 1 << 20;

/// Two regions: 0..1 MiB and 2 MiB..3 MiB (a hole between them).
fn mem() -> GuestMemoryMmap<AtomicBitmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MB), (GuestAddress(2 * MB as u64), MB)])
        .unwrap()
}

fn gtt(tracking: DirtyTracking) -> ShadowGtt {
    ShadowGtt::new(64, mem(), tracking, Logger::root(slog::Discard, slog::o!())).unwrap()
}

fn pte(gpa: u64, writable: bool) -> u64 {
    gpa | PTE_PRESENT | if writable { PTE_WRITABLE } else { 0 }
}

/// Pages that vm-memory's own bitmap saw written, per region, clearing it.
fn cpu_dirty(m: &GuestMemoryMmap<AtomicBitmap>) -> usize {
    m.iter()
        .map(|r| {
            let mr: &MmapRegion<AtomicBitmap> = r.deref();
            mr.bitmap()
                .get_and_reset()
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn validates_entries_and_maps_scratch() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    assert_eq!(g.write_entry(0, 0x5000), Ok(EntryStatus::NotPresent));
    assert_eq!(g.translation(0), Ok(Translation::NotPresent));
    assert_eq!(
        g.write_entry(1, pte(0x5000, true)),
        Ok(EntryStatus::Mapped {
            gpa: 0x5000,
            writable: true
        })
    );
    assert!(matches!(
        g.translation(1),
        Ok(Translation::Ram {
            gpa: 0x5000,
            writable: true,
            ..
        })
    ));
    // In the hole, past the end of RAM, and with reserved bits: scratch.
    for (i, v) in [
        (2, pte(MB as u64, true)),
        (3, pte(3 * MB as u64, false)),
        (4, pte(1 << 50, true)),
    ] {
        let st = g.write_entry(i, v).unwrap();
        assert!(st.is_error(), "{v:#x}: {st:?}");
        assert!(matches!(
            st,
            EntryStatus::Scratch(ScratchReason::OutsideRam { .. })
        ));
        assert_eq!(g.translation(i), Ok(Translation::Scratch));
        assert_eq!(g.read_entry(i), Ok(v), "the guest reads back what it wrote");
    }
    let st = g.write_entry(5, pte(0x5000, true) | 0x100).unwrap();
    assert_eq!(
        st,
        EntryStatus::Scratch(ScratchReason::ReservedBits { bits: 0x100 })
    );
    let st = g.write_entry(6, pte(0x5000, true) | (1 << 60)).unwrap();
    assert!(st.is_error());
    // Index past the end is an error, not a panic.
    assert!(matches!(
        g.write_entry(64, 0),
        Err(ShadowError::EntryIndex {
            index: 64,
            entries: 64
        })
    ));
    assert!(g.read_entry(u64::MAX).is_err());
    assert!(g.translation(1 << 40).is_err());
}

#[test]
fn table_size_is_bounded() {
    let l = Logger::root(slog::Discard, slog::o!());
    assert!(ShadowGtt::new(0, mem(), DirtyTracking::Off, l.clone()).is_err());
    assert!(ShadowGtt::new(MAX_ENTRIES + 1, mem(), DirtyTracking::Off, l).is_err());
}

#[test]
fn dma_crosses_pages_and_regions() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    g.write_entry(0, pte(0x3000, true)).unwrap();
    g.write_entry(1, pte(2 * MB as u64 + 0x7000, true)).unwrap();
    let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 1) as u8).collect();
    g.dma_write(4000, &data).unwrap();
    let mut a = vec![0u8; 96];
    let mut b = vec![0u8; 104];
    let m = g.guest_memory().clone();
    m.read_slice(&mut a, GuestAddress(0x3000 + 4000)).unwrap();
    m.read_slice(&mut b, GuestAddress(2 * MB as u64 + 0x7000))
        .unwrap();
    assert_eq!([a, b].concat(), data);
    let mut back = vec![0u8; 200];
    g.dma_read(4000, &mut back).unwrap();
    assert_eq!(back, data);
    // A CPU write is seen by DMA reads.
    m.write_obj(0xdead_beef_u32, GuestAddress(0x3010)).unwrap();
    let mut w = [0u8; 4];
    g.dma_read(0x10, &mut w).unwrap();
    assert_eq!(u32::from_le_bytes(w), 0xdead_beef);
}

#[test]
fn faults_before_touching_memory() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    g.write_entry(0, pte(0x3000, true)).unwrap();
    g.write_entry(1, pte(0x4000, false)).unwrap();
    // Entry 2 not present.
    let buf = [0xaa_u8; 16];
    assert_eq!(
        g.dma_write(4096 - 8, &buf),
        Err(DmaError::ReadOnly { offset: 4096 })
    );
    assert_eq!(
        g.dma_write(2 * 4096 - 8, &buf),
        Err(DmaError::ReadOnly {
            offset: 2 * 4096 - 8
        })
    );
    let mut r = [0u8; 16];
    assert_eq!(
        g.dma_read(2 * 4096 - 8, &mut r),
        Err(DmaError::NotPresent { offset: 2 * 4096 })
    );
    // Nothing of the faulting write reached entry 0's page.
    let mut page = [0u8; 8];
    g.guest_memory()
        .read_slice(&mut page, GuestAddress(0x3000 + 4096 - 8))
        .unwrap();
    assert_eq!(page, [0; 8]);
    // Reading a read-only page is fine.
    g.dma_read(4096, &mut r).unwrap();
    // Past the last entry, and overflowing.
    assert_eq!(
        g.dma_read(64 * 4096 - 4, &mut r),
        Err(DmaError::OutOfRange {
            offset: 64 * 4096 - 4
        })
    );
    assert!(g.dma_write(u64::MAX - 3, &buf).is_err());
    assert_eq!(DmaError::ReadOnly { offset: 7 }.offset(), 7);
    // Empty accesses never fault.
    g.dma_write(u64::MAX, &[]).unwrap();
}

#[test]
fn scratch_reads_zero_and_drops_writes() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    g.write_entry(0, pte(MB as u64 + 0x1000, true)).unwrap();
    g.start(
        &[DmaRange {
            iova: 0,
            length: 4 * MB as u64,
        }],
        4096,
    )
    .unwrap();
    g.dma_write(0, &[1, 2, 3, 4]).unwrap();
    let mut r = [9u8; 4];
    g.dma_read(0, &mut r).unwrap();
    assert_eq!(r, [0; 4]);
    assert_eq!(g.report(0, 4 * MB as u64, 4096).unwrap().count(), 0);
}

#[test]
fn shadow_pt_tracks_dma_writes_invisible_to_cpu_log() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    let m = g.guest_memory().clone();
    g.write_entry(0, pte(0x3000, true)).unwrap();
    g.write_entry(1, pte(0x9000, true)).unwrap();
    g.write_entry(2, pte(2 * MB as u64, true)).unwrap();
    // Writes before START are not logged.
    g.dma_write(0, &[1]).unwrap();
    assert!(!g.is_logging());
    let ranges = [
        DmaRange {
            iova: 0,
            length: MB as u64,
        },
        DmaRange {
            iova: 2 * MB as u64,
            length: MB as u64,
        },
    ];
    g.start(&ranges, 4096).unwrap();
    assert!(g.is_logging());
    assert_eq!(g.start(&ranges, 4096), Err(DirtyError::AlreadyStarted));
    cpu_dirty(&m);
    g.dma_write(4096 - 2, &[1, 2, 3, 4]).unwrap(); // entries 0 and 1
    g.dma_write(2 * 4096 + 5, &[7]).unwrap(); // entry 2
    assert_eq!(
        cpu_dirty(&m),
        0,
        "vm-memory's bitmap must not see device DMA"
    );
    // Control: a CPU write through vm-memory is seen by its bitmap.
    m.write_obj(1u8, GuestAddress(0x7000)).unwrap();
    assert_eq!(cpu_dirty(&m), 1);

    // A partial report returns and clears only its own part.
    let low = g.report(0, 0x8000, 4096).unwrap();
    assert_eq!(low.iter_dirty().collect::<Vec<_>>(), vec![0x3000]);
    let all = g.report(0, 4 * MB as u64, 4096).unwrap();
    assert_eq!(
        all.iter_dirty().collect::<Vec<_>>(),
        vec![0x9000, 2 * MB as u64]
    );
    assert_eq!(g.report(0, 4 * MB as u64, 4096).unwrap().count(), 0);
    // A coarser report page.
    g.dma_write(4096, &[1]).unwrap();
    let coarse = g.report(0, 4 * MB as u64, 1 << 16).unwrap();
    assert_eq!(coarse.iter_dirty().collect::<Vec<_>>(), vec![0]);
    g.stop().unwrap();
    assert_eq!(g.stop(), Ok(()), "STOP without START is accepted");
    assert!(matches!(
        g.report(0, 4096, 4096),
        Err(DirtyError::NotStarted)
    ));
}

#[test]
fn pinned_reports_every_mapped_page_each_time() {
    let mut g = gtt(DirtyTracking::Pinned);
    g.write_entry(0, pte(0x3000, true)).unwrap();
    g.write_entry(1, pte(0x9000, false)).unwrap();
    g.write_entry(2, pte(MB as u64, true)).unwrap(); // scratch: not pinned
    g.write_entry(3, 0x5000).unwrap(); // not present
    g.start(
        &[DmaRange {
            iova: 0,
            length: 4 * MB as u64,
        }],
        4096,
    )
    .unwrap();
    for _ in 0..2 {
        let r = g.report(0, 4 * MB as u64, 4096).unwrap();
        assert_eq!(r.iter_dirty().collect::<Vec<_>>(), vec![0x3000, 0x9000]);
    }
}

#[test]
fn off_reports_nothing() {
    let mut g = gtt(DirtyTracking::Off);
    g.write_entry(0, pte(0x3000, true)).unwrap();
    g.start(
        &[DmaRange {
            iova: 0,
            length: MB as u64,
        }],
        4096,
    )
    .unwrap();
    g.dma_write(0, &[1, 2, 3]).unwrap();
    assert_eq!(g.report(0, MB as u64, 4096).unwrap().count(), 0);
    // Switching to precise tracking takes effect for the next write.
    g.set_tracking(DirtyTracking::ShadowPt);
    assert_eq!(g.tracking(), DirtyTracking::ShadowPt);
    g.dma_write(0, &[1]).unwrap();
    assert_eq!(g.report(0, MB as u64, 4096).unwrap().count(), 1);
}

// vfio.h / vfio_main.c on DMA logging: page_size on START is a hint and the device returns
// what it tracks; overlapping ranges and more than LOG_MAX_RANGES are refused; a report
// takes any power of two of at least 4 KiB (the device converts); STOP without START is
// accepted.
#[test]
fn logging_follows_the_uapi_rules() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    let r = |iova, length| DmaRange { iova, length };
    assert!(g.start(&[], 4096).is_err());
    assert!(g.start(&[r(0, 0)], 4096).is_err());
    assert!(g.start(&[r(u64::MAX - 4095, 8192)], 4096).is_err());
    assert!(matches!(
        g.start(&[r(0, 8192), r(4096, 4096)], 4096),
        Err(DirtyError::Overlapping { .. })
    ));
    let many: Vec<_> = (0..=mdev_core::LOG_MAX_RANGES as u64)
        .map(|i| r(i * 8192, 4096))
        .collect();
    assert!(matches!(
        g.start(&many, 4096),
        Err(DirtyError::TooManyRanges { .. })
    ));
    assert!(
        g.start(&[r(0, !4095)], 4096).is_err(),
        "more iova space than the tracker holds"
    );
    assert!(!g.is_logging());
    assert_eq!(g.stop(), Ok(()), "STOP without START");
    // Hints: below 4 KiB or zero -> 4 KiB; not a power of two -> the one below.
    for (hint, tracked) in [(0, 4096), (2048, 4096), (12288, 8192), (1 << 21, 1 << 21)] {
        assert_eq!(g.start(&[r(100, 4096)], hint), Ok(tracked), "hint {hint}");
        g.stop().unwrap();
    }
    // Tracked at 8 KiB: a write is reported at 4 KiB as both halves of its tracked page,
    // at 16 KiB as the page holding it.
    assert_eq!(g.start(&[r(0, 1 << 16)], 8192), Ok(8192));
    g.write_entry(0, pte(0, true)).unwrap();
    g.dma_write(100, &[1]).unwrap();
    let rep = g.report(0, 1 << 16, 4096).unwrap();
    assert_eq!(rep.iter_dirty().collect::<Vec<_>>(), vec![0, 4096]);
    g.dma_write(100, &[1]).unwrap();
    let rep = g.report(0, 1 << 16, 1 << 14).unwrap();
    assert_eq!(rep.iter_dirty().collect::<Vec<_>>(), vec![0]);
    // A report covering half a tracked page reports that half and keeps the page dirty.
    g.dma_write(100, &[1]).unwrap();
    let rep = g.report(4096, 4096, 4096).unwrap();
    assert_eq!(rep.count(), 1);
    assert_eq!(g.report(0, 4096, 4096).unwrap().count(), 1, "still dirty");
    assert_eq!(
        g.report(0, 1 << 16, 4096).unwrap().count(),
        2,
        "the whole tracked page"
    );
    assert_eq!(g.report(0, 1 << 16, 4096).unwrap().count(), 0, "now clean");
    assert!(g.report(0, 1 << 16, 2048).is_err(), "below 4 KiB");
    assert!(g.report(4096, 8192, 8192).is_err(), "unaligned");
    assert!(g.report(0, 0, 8192).is_err());
}

#[test]
fn rebuild_gives_identical_translations() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    g.write_entry(0, pte(0x3000, true)).unwrap();
    g.write_entry(5, pte(2 * MB as u64 + 0x1000, false))
        .unwrap();
    g.write_entry(6, pte(MB as u64, true)).unwrap();
    g.write_entry(7, 0x4000).unwrap();
    let state = g.state();
    assert_eq!(state.entries, g.guest_entries());
    let l = Logger::root(slog::Discard, slog::o!());
    let h = ShadowGtt::from_state(
        g.guest_memory().clone(),
        DirtyTracking::ShadowPt,
        l.clone(),
        &state,
    )
    .unwrap();
    assert_eq!(h.state(), state);
    for i in 0..64 {
        assert_eq!(h.translation(i), g.translation(i), "entry {i}");
    }
    // Rebuild on an existing table replaces everything and reports what it found.
    let mut k = gtt(DirtyTracking::ShadowPt);
    k.write_entry(9, pte(0x8000, true)).unwrap();
    assert_eq!(
        k.rebuild(&state.entries),
        Ok(RebuildSummary {
            mapped: 2,
            scratch: 1
        })
    );
    assert_eq!(k.state(), state);
    // A change changes the state.
    k.write_entry(1, pte(0x1000, true)).unwrap();
    assert_ne!(k.state(), state);
    // Wrong count: refused, nothing changed.
    let before = k.state();
    assert_eq!(
        k.rebuild(&[0; 3]),
        Err(ShadowError::EntryCount {
            got: 3,
            expected: 64
        })
    );
    assert_eq!(k.state(), before);
    assert!(ShadowGtt::from_state(
        mem(),
        DirtyTracking::Off,
        l,
        &ShadowGttState { entries: vec![] }
    )
    .is_err());
    k.clear();
    assert!(k.guest_entries().iter().all(|&v| v == 0));
    assert_eq!(k.translation(0), Ok(Translation::NotPresent));
}

#[test]
fn bad_inputs_never_panic() {
    let mut g = gtt(DirtyTracking::ShadowPt);
    g.start(
        &[DmaRange {
            iova: 0,
            length: 4 * MB as u64,
        }],
        4096,
    )
    .unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; 9000];
    for _ in 0..5000 {
        let v = next();
        let idx = next() % 80;
        let entry = match v % 4 {
            0 => v,
            1 => (v & 0x3f_f000) | PTE_PRESENT | PTE_WRITABLE,
            2 => v & !PTE_RESERVED_MASK,
            _ => 0,
        };
        let _ = g.write_entry(idx, entry);
        let off = match next() % 3 {
            0 => next(),
            _ => next() % (70 * 4096),
        };
        let len = (next() % 9000) as usize;
        let _ = g.dma_write(off, &buf[..len]);
        let _ = g.dma_read(off, &mut buf[..len]);
    }
    let _ = g.report(0, 4 * MB as u64, 4096).unwrap();
}
