//! Tests of DMA through a [`RemoteDma`] port: translation, runs, checks, faults, dirty log.

use std::sync::{Arc, Mutex};

use mdev_core::{DmaDirtyLog, DmaRange};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::remote;

const MB: u64 = 1 << 20;
/// The remote range: 4 MiB..5 MiB (mapped RAM is 0..1 MiB).
const REMOTE: u64 = 4 * MB;

/// A port over a plain buffer that records every call (write?, gpa, len).
#[derive(Debug, Default)]
struct FakePort {
    mem: Mutex<Vec<u8>>,
    calls: Mutex<Vec<(bool, u64, usize)>>,
    broken: bool,
}

impl FakePort {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            mem: Mutex::new(vec![0; MB as usize]),
            ..Self::default()
        })
    }
    fn at(&self, gpa: u64, len: usize) -> Result<std::ops::Range<usize>, RemoteDmaError> {
        let fail = |why: &str| RemoteDmaError {
            gpa,
            len,
            why: why.into(),
        };
        if self.broken {
            return Err(fail("the peer is gone"));
        }
        let start = gpa.checked_sub(REMOTE).ok_or_else(|| fail("below"))? as usize;
        let end = start + len;
        if end as u64 > MB {
            return Err(fail("above"));
        }
        Ok(start..end)
    }
}

impl RemoteDma for FakePort {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError> {
        self.calls.lock().unwrap().push((false, gpa, buf.len()));
        let r = self.at(gpa, buf.len())?;
        buf.copy_from_slice(&self.mem.lock().unwrap()[r]);
        Ok(())
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), RemoteDmaError> {
        self.calls.lock().unwrap().push((true, gpa, buf.len()));
        let r = self.at(gpa, buf.len())?;
        self.mem.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
}

fn gtt(port: Arc<FakePort>) -> ShadowGtt {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MB as usize)]).unwrap();
    let remote = RemoteMemory::new(vec![(REMOTE, MB)], port);
    ShadowGtt::new(
        64,
        mem,
        DirtyTracking::ShadowPt,
        Logger::root(slog::Discard, slog::o!()),
    )
    .unwrap()
    .with_remote(Some(remote))
}

fn pte(gpa: u64, writable: bool) -> u64 {
    gpa | PTE_PRESENT | if writable { PTE_WRITABLE } else { 0 }
}

#[test]
fn entries_in_remote_ranges_translate_to_the_port() {
    let mut g = gtt(FakePort::new());
    assert_eq!(
        g.write_entry(0, pte(REMOTE + 0x2000, true)),
        Ok(EntryStatus::Mapped {
            gpa: REMOTE + 0x2000,
            writable: true
        })
    );
    assert_eq!(
        g.translation(0),
        Ok(Translation::Remote {
            gpa: REMOTE + 0x2000,
            writable: true
        })
    );
    // The last page of the range is in; the page after it, and the hole, are not.
    g.write_entry(1, pte(REMOTE + MB - 0x1000, false)).unwrap();
    assert!(matches!(g.translation(1), Ok(Translation::Remote { .. })));
    assert!(g.write_entry(2, pte(REMOTE + MB, true)).unwrap().is_error());
    assert!(g.write_entry(3, pte(2 * MB, true)).unwrap().is_error());
    // Mapped RAM still wins where it exists.
    g.write_entry(4, pte(0x3000, true)).unwrap();
    assert!(matches!(g.translation(4), Ok(Translation::Ram { .. })));
    // Without a port the same entry is outside guest RAM.
    let mut plain = gtt(FakePort::new()).with_remote(None);
    assert!(plain.write_entry(0, pte(REMOTE, true)).unwrap().is_error());
}

#[test]
fn consecutive_pages_go_in_one_call_and_are_logged() {
    let port = FakePort::new();
    let mut g = gtt(port.clone());
    // Entries 0..3 map consecutive remote pages; entry 3 jumps; entry 4 is local RAM.
    for i in 0..3 {
        g.write_entry(i, pte(REMOTE + 0x10000 + i * 0x1000, true))
            .unwrap();
    }
    g.write_entry(3, pte(REMOTE + 0x50000, true)).unwrap();
    g.write_entry(4, pte(0x3000, true)).unwrap();
    g.start(
        &[
            DmaRange {
                iova: 0,
                length: MB,
            },
            DmaRange {
                iova: REMOTE,
                length: MB,
            },
        ],
        4096,
    )
    .unwrap();
    let data: Vec<u8> = (0..4 * 4096 + 100).map(|i| (i * 13 + 5) as u8).collect();
    g.dma_write(100, &data).unwrap();
    assert_eq!(
        *port.calls.lock().unwrap(),
        vec![
            (true, REMOTE + 0x10000 + 100, 3 * 4096 - 100),
            (true, REMOTE + 0x50000, 4096)
        ]
    );
    let mut back = vec![0u8; data.len()];
    g.dma_read(100, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(port.calls.lock().unwrap().len(), 4);
    assert_eq!(
        &port.mem.lock().unwrap()[0x10000 + 100..0x10000 + 200],
        &data[..100]
    );
    let dirty: Vec<u64> = g.report(REMOTE, MB, 4096).unwrap().iter_dirty().collect();
    assert_eq!(
        dirty,
        vec![
            REMOTE + 0x10000,
            REMOTE + 0x11000,
            REMOTE + 0x12000,
            REMOTE + 0x50000
        ]
    );
    assert_eq!(g.report(0, MB, 4096).unwrap().count(), 1);
    // Remote pages count as pinned for the conservative mode.
    assert_eq!(g.pinned_pages().count(), 5);
}

#[test]
fn checks_fault_before_the_port_and_port_failures_fault() {
    let port = FakePort::new();
    let mut g = gtt(port.clone());
    g.write_entry(0, pte(REMOTE, true)).unwrap();
    g.write_entry(1, pte(REMOTE + 0x1000, false)).unwrap();
    assert_eq!(
        g.dma_write(10, &[0; 5000]),
        Err(DmaError::ReadOnly { offset: 4096 })
    );
    assert_eq!(
        g.dma_read(4096, &mut [0; 8192]),
        Err(DmaError::NotPresent { offset: 8192 })
    );
    assert!(port.calls.lock().unwrap().is_empty());
    let broken = Arc::new(FakePort {
        broken: true,
        ..FakePort::default()
    });
    let mut b = gtt(broken);
    b.write_entry(0, pte(REMOTE, true)).unwrap();
    assert_eq!(
        b.dma_read(8, &mut [0; 4]),
        Err(DmaError::Remote { offset: 8 })
    );
    assert_eq!(b.dma_write(8, &[1]), Err(DmaError::Remote { offset: 8 }));
    assert_eq!(DmaError::Remote { offset: 8 }.offset(), 8);
}

#[test]
fn install_scopes_the_remote_memory_to_the_build() {
    assert!(remote::installed().is_none());
    let r = RemoteMemory::new(vec![(REMOTE, MB)], FakePort::new());
    let seen = remote::install(Some(r), || remote::installed().map(|r| r.ranges().to_vec()));
    assert_eq!(seen, Some(vec![(REMOTE, MB)]));
    assert!(remote::installed().is_none());
    let r = RemoteMemory::new(vec![(REMOTE, 0x1000)], FakePort::new());
    assert_eq!(r.range_of(REMOTE), Some((REMOTE, 0x1000)));
    assert!(r.contains_page(REMOTE));
    assert!(!r.contains_page(REMOTE + 1));
    assert!(!r.contains_page(u64::MAX - 10));
}

#[test]
fn a_run_stops_at_the_end_of_its_range() {
    // Two adjacent ranges: consecutive pages across their border go in two calls (the
    // peer checks each access against one map).
    let port = FakePort::new();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MB as usize)]).unwrap();
    let remote = RemoteMemory::new(
        vec![(REMOTE, 0x2000), (REMOTE + 0x2000, MB - 0x2000)],
        port.clone(),
    );
    let mut g = ShadowGtt::new(
        8,
        mem,
        DirtyTracking::ShadowPt,
        Logger::root(slog::Discard, slog::o!()),
    )
    .unwrap()
    .with_remote(Some(remote));
    for i in 0..4 {
        g.write_entry(i, pte(REMOTE + i * 0x1000, true)).unwrap();
    }
    g.dma_write(0, &[3; 4 * 4096]).unwrap();
    assert_eq!(
        *port.calls.lock().unwrap(),
        vec![(true, REMOTE, 0x2000), (true, REMOTE + 0x2000, 0x2000)]
    );
}
