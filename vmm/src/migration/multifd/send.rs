//! The source's RAM channels: one connection and one thread each.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use xxhash_rust::xxh3::Xxh3;

use super::{ChannelHello, Unit, UnitKind, MAX_UNIT_PAGES};
use crate::memory::{self, GuestMem, PAGE_SIZE};
use crate::migration::clock::{set_slices, write_all_live, Liveness};
use crate::migration::error::{MigrationError, Result};
use crate::migration::rate::TokenBucket;
use crate::migration::transport::write_capped;
use crate::migration::transport::Counters;

/// Work for a channel thread.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Send `pages` pages from `gpa`: non-zero ones with their bytes; zero ones as ZERO
    /// units when `zeros` (the target's RAM starts zeroed, so round 0 skips them).
    Pages { gpa: u64, pages: u32, zeros: bool },
    /// The end of round `seq`.
    Mark(u64),
    /// The channel's end.
    End,
}

/// What the channel threads share with the migration thread.
#[derive(Debug, Default)]
struct Shared {
    /// The first failure: the channel and its error.
    failed: Mutex<Option<(u32, io::Error)>>,
    /// Whether a channel failed (read without the lock, on every write of the main
    /// stream).
    any_failed: std::sync::atomic::AtomicBool,
    /// Non-zero pages sent.
    nonzero: AtomicU64,
    /// Zero pages seen (sent as ZERO units, or skipped).
    zero: AtomicU64,
    /// Page bytes sent.
    ram: AtomicU64,
    /// Every byte written on the channels.
    wire: AtomicU64,
}

/// Jobs queued per channel: 4 units of 512 KiB.
const DEPTH: usize = 4;

/// The source's RAM channels ([`super`]): the migration thread hands them runs of dirty
/// pages ([`RamChannels::offer`], [`RamChannels::send`]) and marks the end of each round.
#[derive(Debug)]
pub struct RamChannels {
    txs: Vec<SyncSender<Job>>,
    handles: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    next: usize,
}

/// What the channels moved, once they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelTotals {
    /// Page bytes.
    pub ram: u64,
    /// Every byte written on the channels (hellos excepted).
    pub wire: u64,
}

impl RamChannels {
    /// Open `count` channels to `url` for the target's `session`. Their bytes count in
    /// `counters` (sent, backlog) and under `bucket`'s cap with the main stream's. A
    /// channel's writes give up once the target took nothing from it for `peer_timeout`:
    /// its deadline counts from its own progress, so the main connection's keep-alives
    /// cannot keep a channel the target stopped reading waiting for ever.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        url: &str,
        session: u64,
        count: u32,
        mem: &GuestMem,
        bucket: Option<Arc<Mutex<TokenBucket>>>,
        counters: Arc<Counters>,
        peer_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let mut txs = Vec::new();
        let mut handles = Vec::new();
        for index in 0..count {
            let mut sock = crate::migration::transport::connect(url, connect_timeout)?;
            let live = Liveness::new("target", peer_timeout);
            live.set_phase(format!("RAM channel {index}"));
            set_slices(&sock, &live)?;
            let hello = ChannelHello {
                session,
                index,
                count,
            };
            write_all_live(&mut sock, &hello.encode(), &live)
                .map_err(|e| MigrationError::from_io(e, || format!("RAM channel {index}")))?;
            let (tx, rx) = sync_channel::<Job>(DEPTH);
            let mut t = Thread {
                sock,
                mem: mem.clone(),
                live: live.clone(),
                shared: shared.clone(),
                counters: counters.clone(),
                bucket: bucket.clone(),
                hash: Xxh3::new(),
            };
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("ram-send-{index}"))
                .spawn(move || {
                    if let Err(e) = t.run(&rx) {
                        if let Ok(mut f) = s.failed.lock() {
                            f.get_or_insert((index, e));
                        }
                        s.any_failed.store(true, Ordering::Relaxed);
                    }
                })
                .map_err(|e| MigrationError::PeerIo {
                    what: "cannot start a RAM channel thread".into(),
                    source: e,
                })?;
            txs.push(tx);
            handles.push(h);
        }
        Ok(Self {
            txs,
            handles,
            shared,
            counters,
            next: 0,
        })
    }

    /// Channels.
    pub fn count(&self) -> usize {
        self.txs.len()
    }

    /// The first channel's failure, as a migration error, if a channel failed (taken: a
    /// later call says a channel stopped, without the cause).
    pub fn failure(&self) -> Option<MigrationError> {
        if !self.shared.any_failed.load(Ordering::Relaxed) {
            return None;
        }
        let mut f = self.shared.failed.lock().ok()?;
        let (index, e) = f.take()?;
        Some(MigrationError::from_io(e, || {
            format!("RAM channel {index} to the target lost")
        }))
    }

    fn lost(&self) -> MigrationError {
        self.failure().unwrap_or_else(|| MigrationError::Peer {
            what: "a RAM channel to the target stopped".into(),
        })
    }

    /// Queue `pages` pages from `gpa` on the next channel with room; `Ok(false)` if every
    /// channel's queue is full (the caller runs the guest meanwhile and offers again).
    pub fn offer(&mut self, gpa: u64, pages: u32, zeros: bool) -> Result<bool> {
        debug_assert!((1..=MAX_UNIT_PAGES).contains(&pages));
        let job = Job::Pages { gpa, pages, zeros };
        for _ in 0..self.txs.len() {
            let i = self.next;
            self.next = (self.next + 1) % self.txs.len();
            match self.txs[i].try_send(job) {
                Ok(()) => {
                    self.counters
                        .backlog
                        .fetch_add(u64::from(pages) * PAGE_SIZE, Ordering::Relaxed);
                    return Ok(true);
                }
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return Err(self.lost()),
            }
        }
        Ok(false)
    }

    /// Queue `pages` pages from `gpa` on the next channel, waiting for room.
    pub fn send(&mut self, gpa: u64, pages: u32, zeros: bool) -> Result<()> {
        if self.offer(gpa, pages, zeros)? {
            return Ok(());
        }
        let i = self.next;
        self.next = (self.next + 1) % self.txs.len();
        self.counters
            .backlog
            .fetch_add(u64::from(pages) * PAGE_SIZE, Ordering::Relaxed);
        self.txs[i]
            .send(Job::Pages { gpa, pages, zeros })
            .map_err(|_| self.lost())
    }

    /// The end of round `seq` on every channel (after every run queued before it).
    pub fn mark(&mut self, seq: u64) -> Result<()> {
        for i in 0..self.txs.len() {
            self.txs[i].send(Job::Mark(seq)).map_err(|_| self.lost())?;
        }
        Ok(())
    }

    /// Non-zero and zero pages the channels processed since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.shared.nonzero.swap(0, Ordering::Relaxed),
            self.shared.zero.swap(0, Ordering::Relaxed),
        )
    }

    /// End every channel (its digest last) and wait until each has written everything.
    pub fn finish(mut self) -> Result<ChannelTotals> {
        for i in 0..self.txs.len() {
            self.txs[i].send(Job::End).map_err(|_| self.lost())?;
        }
        self.txs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        if let Some(e) = self.failure() {
            return Err(e);
        }
        Ok(ChannelTotals {
            ram: self.shared.ram.load(Ordering::Relaxed),
            wire: self.shared.wire.load(Ordering::Relaxed),
        })
    }
}

/// One channel's thread.
struct Thread {
    sock: TcpStream,
    mem: GuestMem,
    live: Arc<Liveness>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    bucket: Option<Arc<Mutex<TokenBucket>>>,
    hash: Xxh3,
}

impl Thread {
    fn run(&mut self, rx: &Receiver<Job>) -> io::Result<()> {
        let mut buf = vec![0u8; MAX_UNIT_PAGES as usize * PAGE_SIZE as usize];
        // A source that gives up drops the queue: the thread just stops.
        while let Ok(job) = rx.recv() {
            match job {
                Job::Pages { gpa, pages, zeros } => {
                    let len = pages as usize * PAGE_SIZE as usize;
                    let res = self.pages(&mut buf[..len], gpa, zeros);
                    self.counters
                        .backlog
                        .fetch_sub(len as u64, Ordering::Relaxed);
                    res?;
                }
                Job::Mark(seq) => self.unit(UnitKind::Mark, 0, 0, seq, &[])?,
                Job::End => {
                    let head = Unit {
                        kind: UnitKind::End,
                        pages: 0,
                        gpa: 0,
                        seq: 0,
                    }
                    .encode();
                    self.hash.update(&head);
                    let digest = self.hash.digest128().to_le_bytes();
                    self.write(&head)?;
                    self.write(&digest)?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Read the run from guest RAM (one copy, into this thread's cache) and send its
    /// non-zero pages in runs, its zero pages as ZERO units when `zeros`.
    fn pages(&mut self, buf: &mut [u8], gpa: u64, zeros: bool) -> io::Result<()> {
        memory::read(&self.mem, gpa, buf).map_err(io::Error::other)?;
        let page = PAGE_SIZE as usize;
        let n = buf.len() / page;
        let zero = |i: usize| memory::is_zero(&buf[i * page..(i + 1) * page]);
        let mut i = 0;
        while i < n {
            let z = zero(i);
            let mut j = i + 1;
            while j < n && zero(j) == z {
                j += 1;
            }
            let at = gpa + (i * page) as u64;
            let count = (j - i) as u32;
            if z {
                self.shared
                    .zero
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                if zeros {
                    self.unit(UnitKind::Zero, count, at, 0, &[])?;
                }
            } else {
                self.shared
                    .nonzero
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                self.unit(UnitKind::Pages, count, at, 0, &buf[i * page..j * page])?;
                self.shared
                    .ram
                    .fetch_add(((j - i) * page) as u64, Ordering::Relaxed);
            }
            i = j;
        }
        Ok(())
    }

    /// One unit: header and payload into the digest, then onto the wire.
    fn unit(
        &mut self,
        kind: UnitKind,
        pages: u32,
        gpa: u64,
        seq: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        let head = Unit {
            kind,
            pages,
            gpa,
            seq,
        }
        .encode();
        self.hash.update(&head);
        self.hash.update(payload);
        self.write(&head)?;
        self.write(payload)
    }

    /// Write under the shared cap (see [`write_capped`]), counting what went out.
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let (sent, wire) = (&self.counters.sent, &self.shared.wire);
        write_capped(
            &mut self.sock,
            data,
            self.bucket.as_deref(),
            &self.live,
            &mut |n| {
                sent.fetch_add(n as u64, Ordering::Relaxed);
                wire.fetch_add(n as u64, Ordering::Relaxed);
            },
        )
    }
}
