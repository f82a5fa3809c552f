//! The target's RAM channels: accepting them, and one thread each that applies units to
//! guest RAM.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slog::{warn, Logger};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileMemoryError};
use xxhash_rust::xxh3::Xxh3;

use super::{ChannelHello, Unit, UnitKind, HELLO_LEN, MAX_CHANNELS, UNIT_HEADER};
use crate::memory::{self, GuestMem, PAGE_SIZE};
use crate::migration::clock::{is_timeout, monotonic_ns, Liveness};
use crate::migration::error::{MigrationError, Result};
use crate::ratelimit::RateLimit;

/// Accept the source's `count` RAM channels for `session` on `listener`, within the peer
/// timeout. A connection that is not one of them (no hello within a second, another
/// session, a channel already taken) is closed and the wait goes on.
pub fn accept_channels(
    listener: &TcpListener,
    session: u64,
    count: u32,
    live: &Liveness,
    log: &Logger,
) -> Result<Vec<TcpStream>> {
    if count == 0 || count > MAX_CHANNELS {
        return Err(MigrationError::Protocol {
            what: format!("the source asks for {count} RAM channels (1 to {MAX_CHANNELS})"),
        });
    }
    let io = |what: &str| {
        let what = what.to_string();
        move |e| MigrationError::PeerIo { what, source: e }
    };
    listener
        .set_nonblocking(true)
        .map_err(io("cannot poll the listener"))?;
    let deadline = Instant::now() + live.timeout();
    let mut socks: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let mut warned = RateLimit::default();
    let res = loop {
        let missing = socks.iter().filter(|s| s.is_none()).count();
        if missing == 0 {
            break Ok(());
        }
        match listener.accept() {
            Ok((s, peer)) => match channel_hello(&s) {
                Ok(h) if h.session == session && h.count == count && h.index < count => {
                    let slot = &mut socks[h.index as usize];
                    if slot.is_none() {
                        *slot = Some(s);
                    } else if warned.allow() {
                        warn!(log, "a second RAM channel with the same index; closed"; "from" => %peer, "index" => h.index);
                    }
                }
                other => {
                    if warned.allow() {
                        warn!(log, "a connection that is not one of this migration's RAM channels; closed"; "from" => %peer, "hello" => ?other.ok());
                    }
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(MigrationError::Peer {
                        what: format!(
                            "{missing} of the source's {count} RAM channels did not connect within {} s",
                            live.timeout().as_secs_f64()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(io("accepting a RAM channel failed")(e)),
        }
    };
    listener
        .set_nonblocking(false)
        .map_err(io("cannot restore the listener"))?;
    res?;
    let socks: Vec<TcpStream> = socks.into_iter().flatten().collect();
    for s in &socks {
        s.set_nonblocking(false)
            .and_then(|_| s.set_read_timeout(Some(live.slice())))
            .map_err(io("cannot set up a RAM channel"))?;
    }
    Ok(socks)
}

/// A new connection's hello, read within a second.
fn channel_hello(s: &TcpStream) -> io::Result<ChannelHello> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut b = [0u8; HELLO_LEN];
    (&*s).read_exact(&mut b)?;
    ChannelHello::decode(&b).ok_or_else(|| io::Error::other("no channel magic"))
}

/// What a receiving thread shares with the target's migration thread.
#[derive(Debug, Default)]
struct State {
    /// One more than the last round whose MARK was applied (0: none yet).
    mark: AtomicU64,
    /// The END arrived and its digest matched.
    done: AtomicBool,
    /// Why the channel failed.
    failed: Mutex<Option<String>>,
    /// Page bytes applied.
    ram: AtomicU64,
    /// Bytes read after the hello (as the source counts what it wrote).
    wire: AtomicU64,
}

/// The target's RAM channels, each applied to guest RAM by its own thread.
#[derive(Debug)]
pub struct RamReceivers {
    states: Vec<Arc<State>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    live: Arc<Liveness>,
}

impl RamReceivers {
    /// Start applying `socks` (from [`accept_channels`]) to `mem`.
    pub fn spawn(socks: Vec<TcpStream>, mem: &GuestMem, live: Arc<Liveness>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut states = Vec::new();
        let mut handles = Vec::new();
        for (index, sock) in socks.into_iter().enumerate() {
            let state = Arc::new(State::default());
            let mut t = Receiver {
                sock,
                mem: mem.clone(),
                ram_size: memory::size(mem),
                live: live.clone(),
                stop: stop.clone(),
                state: state.clone(),
                hash: Xxh3::new(),
            };
            let h = std::thread::Builder::new()
                .name(format!("ram-recv-{index}"))
                .spawn(move || {
                    if let Err(why) = t.run() {
                        if let Ok(mut f) = t.state.failed.lock() {
                            f.get_or_insert(why);
                        }
                    }
                })
                .map_err(|e| MigrationError::PeerIo {
                    what: "cannot start a RAM channel thread".into(),
                    source: e,
                })?;
            states.push(state);
            handles.push(h);
        }
        Ok(Self {
            states,
            handles,
            stop,
            live,
        })
    }

    /// Wait until every channel satisfies `done` or one fails, within the source's
    /// liveness (bytes on any of its connections count).
    fn wait(&self, done: impl Fn(&State) -> bool) -> Result<()> {
        let since = monotonic_ns();
        loop {
            for (i, s) in self.states.iter().enumerate() {
                if let Some(why) = s.failed.lock().ok().and_then(|f| f.clone()) {
                    return Err(MigrationError::Channel {
                        index: i as u32,
                        what: why,
                    });
                }
            }
            if self.states.iter().all(|s| done(s)) {
                return Ok(());
            }
            if let Some(e) = self.live.expired(since, "sending") {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Wait until every channel has applied round `seq` (its MARK).
    pub fn wait_mark(&self, seq: u64) -> Result<()> {
        self.wait(|s| s.mark.load(Ordering::Relaxed) > seq)
    }

    /// Wait for every channel's END (digest checked); the bytes that came on the
    /// channels (after their hellos), as the source counts the bytes it wrote.
    pub fn finish(mut self) -> Result<u64> {
        self.wait(|s| s.done.load(Ordering::Relaxed))?;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        Ok(self
            .states
            .iter()
            .map(|s| s.wire.load(Ordering::Relaxed))
            .sum())
    }
}

impl Drop for RamReceivers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes read, hashed and written to guest RAM at a time (stays in the cache between).
const PIECE: usize = 64 << 10;

/// One channel's thread.
struct Receiver {
    sock: TcpStream,
    mem: GuestMem,
    ram_size: u64,
    live: Arc<Liveness>,
    stop: Arc<AtomicBool>,
    state: Arc<State>,
    hash: Xxh3,
}

impl Receiver {
    fn run(&mut self) -> std::result::Result<(), String> {
        let mut buf = vec![0u8; PIECE];
        let zero = [0u8; PAGE_SIZE as usize];
        loop {
            let mut head = [0u8; UNIT_HEADER];
            if !self.read_exact(&mut head)? {
                return Err("the source closed the channel before its end".into());
            }
            let u = Unit::decode(&head)?;
            self.hash.update(&head);
            match u.kind {
                UnitKind::Pages | UnitKind::Zero => {
                    let len = u64::from(u.pages) * PAGE_SIZE;
                    if u.gpa % PAGE_SIZE != 0
                        || u.gpa.checked_add(len).is_none_or(|e| e > self.ram_size)
                    {
                        return Err(format!(
                            "{} pages at {:#x} are outside guest RAM ({} MiB) or unaligned",
                            u.pages,
                            u.gpa,
                            self.ram_size >> 20
                        ));
                    }
                    let write = |at: u64, b: &[u8]| {
                        memory::write(&self.mem, at, b).map_err(|e| e.to_string())
                    };
                    if u.kind == UnitKind::Zero {
                        for p in 0..u64::from(u.pages) {
                            write(u.gpa + p * PAGE_SIZE, &zero)?;
                        }
                        continue;
                    }
                    let mut off = 0u64;
                    while off < len {
                        let n = ((len - off) as usize).min(PIECE);
                        if !self.read_into_guest(u.gpa + off, n)? {
                            // Across a memory region's end: through the buffer.
                            if !self.read_exact(&mut buf[..n])? {
                                return Err("the source closed the channel inside a unit".into());
                            }
                            self.hash.update(&buf[..n]);
                            memory::write(&self.mem, u.gpa + off, &buf[..n])
                                .map_err(|e| e.to_string())?;
                        }
                        off += n as u64;
                    }
                    self.state.ram.fetch_add(len, Ordering::Relaxed);
                }
                UnitKind::Mark => {
                    if u.gpa != 0 || u.seq.checked_add(1).is_none() {
                        return Err(format!(
                            "a bad mark (round {}, address {:#x})",
                            u.seq, u.gpa
                        ));
                    }
                    self.state.mark.fetch_max(u.seq + 1, Ordering::Relaxed);
                }
                UnitKind::End => {
                    if u.gpa != 0 || u.seq != 0 {
                        return Err("a bad end unit".into());
                    }
                    let mut digest = [0u8; 16];
                    if !self.read_exact(&mut digest)? {
                        return Err("the source closed the channel inside its end".into());
                    }
                    if digest != self.hash.digest128().to_le_bytes() {
                        return Err(
                            "its XXH3-128 digest does not match what arrived: corrupted in transit"
                                .into(),
                        );
                    }
                    self.state.done.store(true, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
    }

    /// Read `n` bytes of a unit's payload from the socket straight into guest RAM at
    /// `gpa` and hash them there, while they are in this core's cache (one copy, the
    /// kernel's). `Ok(false)` if the range is not one mapping (the caller goes through
    /// its buffer).
    fn read_into_guest(&mut self, gpa: u64, n: usize) -> std::result::Result<bool, String> {
        let Ok(slice) = self.mem.get_slice(GuestAddress(gpa), n) else {
            return Ok(false);
        };
        let mut got = 0;
        while got < n {
            if self.stop.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            let mut rest = slice.offset(got).map_err(|e| e.to_string())?;
            match self.sock.read_volatile(&mut rest) {
                Ok(0) => return Err("the source closed the channel inside a unit".into()),
                Ok(k) => {
                    got += k;
                    self.live.heard();
                    self.state.wire.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(VolatileMemoryError::IOError(e))
                    if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading failed: {e}")),
            }
        }
        let guard = slice.ptr_guard();
        // SAFETY: `guard` points to the `n` bytes of guest RAM just read, mapped while
        // `slice` (and the memory it borrows) lives. Nothing else writes them while they
        // are hashed: the target's vCPU has not started, its device is RESUMING (no DMA),
        // and no other channel carries these pages now (a round's pages are distinct, and
        // the source sends nothing of the next round before the target answered this
        // round's SYNC, which it does only after every channel applied its MARK).
        let bytes = unsafe { std::slice::from_raw_parts(guard.as_ptr(), n) };
        self.hash.update(bytes);
        Ok(true)
    }

    /// Fill `out`; `Ok(false)` if the connection ended before its first byte. Waits in
    /// slices, until the migration thread stops this one (it judges the deadline).
    fn read_exact(&mut self, out: &mut [u8]) -> std::result::Result<bool, String> {
        let mut got = 0;
        while got < out.len() {
            if self.stop.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            match self.sock.read(&mut out[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err("the source closed the channel inside a unit".into()),
                Ok(n) => {
                    got += n;
                    self.live.heard();
                    self.state.wire.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading failed: {e}")),
            }
        }
        Ok(true)
    }
}
