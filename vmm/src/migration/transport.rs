//! TCP transport: addresses, deadlines on every read and write of the peer, and the two
//! threads that move the stream — a sender on the source that writes it at a capped rate
//! (and a keep-alive whenever it has had nothing to send for a while) while the guest keeps
//! running on the main thread, and a prefetch reader on the target that drains the socket
//! ahead of the parser.
//!
//! After the target's hello, the source sends frames, each `magic:[u8; 8] length:u32le
//! payload`: [`CONTROL_MAGIC`] frames are control messages (the start, keep-alives, the
//! summary; see [`control`](super::control)), [`DATA_MAGIC`] frames carry consecutive
//! pieces of the migration stream. Every socket read and write waits in slices of
//! [`Liveness::slice`] and gives up once the peer has shown no sign of life for the peer
//! timeout (see [`clock`](super::clock)).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::clock::{set_slices, write_all_live, Liveness};
use super::control::{self, FromSource, KeepAlive, KEEPALIVE_INTERVAL};
use super::error::{MigrationError, Result};
use super::rate::TokenBucket;

mod prefetch;
pub use prefetch::PrefetchReader;

/// Magic of a frame that carries a piece of the migration stream.
pub const DATA_MAGIC: [u8; 8] = *b"VGPUDATA";
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 12;

/// Parse `tcp://HOST:PORT`.
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("tcp://")
        .ok_or_else(|| MigrationError::Peer {
            what: format!("'{url}' is not a tcp://HOST:PORT address"),
        })?;
    rest.to_socket_addrs()
        .map_err(|e| MigrationError::Peer {
            what: format!("cannot resolve '{url}': {e}"),
        })?
        .next()
        .ok_or_else(|| MigrationError::Peer {
            what: format!("'{url}' resolves to no address"),
        })
}

/// Connect, retrying for up to `wait` (the target may still be starting); each attempt
/// waits at most a second.
pub fn connect(url: &str, wait: Duration) -> Result<TcpStream> {
    let addr = parse_url(url)?;
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(_) if start.elapsed() < wait => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(MigrationError::Peer {
                    what: format!("cannot connect to {url}: {e}"),
                })
            }
        }
    }
}

/// Listen on `tcp://HOST:PORT` (port 0: any free port; see [`local_url`]).
pub fn listen(url: &str) -> Result<TcpListener> {
    let addr = parse_url(url)?;
    TcpListener::bind(addr).map_err(|e| MigrationError::Peer {
        what: format!("cannot listen on {url}: {e}"),
    })
}

/// The `tcp://HOST:PORT` a listener is bound to (the port it was given, if it asked for 0).
pub fn local_url(listener: &TcpListener) -> Result<String> {
    listener
        .local_addr()
        .map(|a| format!("tcp://{a}"))
        .map_err(|e| MigrationError::Peer {
            what: format!("cannot read the listening address: {e}"),
        })
}

/// Counters shared with the sender thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// Stream bytes handed to the sender thread and not yet written.
    pub backlog: AtomicU64,
    /// Stream bytes written to the socket (frame headers and keep-alives not counted).
    pub sent: AtomicU64,
}

/// Why the sender thread stopped: a peer timeout (kept whole, to be reported as it is), or
/// a socket error's kind and text.
#[derive(Debug)]
struct SendFailure {
    timeout: Option<MigrationError>,
    kind: io::ErrorKind,
    text: String,
}

impl SendFailure {
    fn of(e: io::Error) -> Self {
        let kind = e.kind();
        let text = e.to_string();
        let timeout = MigrationError::from_io(e, String::new);
        Self {
            timeout: timeout.is_peer_timeout().then_some(timeout),
            kind,
            text,
        }
    }

    fn to_io(&self) -> io::Error {
        match &self.timeout {
            Some(MigrationError::PeerTimeout {
                peer,
                verb,
                phase,
                secs,
            }) => MigrationError::PeerTimeout {
                peer,
                verb,
                phase: phase.clone(),
                secs: secs.clone(),
            }
            .into_io(),
            _ => io::Error::new(
                self.kind,
                format!("connection to the target lost: {}", self.text),
            ),
        }
    }
}

/// What the sender thread writes: a frame whose buffer starts with room for its header,
/// or a bulk buffer (`buf[..len]`) taken whole, whose frame header it writes first.
#[derive(Debug)]
enum Out {
    Frame(Vec<u8>),
    Bulk(Vec<u8>, usize),
}

/// A `Write` that hands buffers to a sender thread, which writes them as data frames.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: Option<SyncSender<Out>>,
    /// Buffers the sender thread has written, back for reuse (a fresh 256 KiB buffer per
    /// ship would cost an mmap, 64 page faults and an munmap).
    spent: Receiver<Vec<u8>>,
    /// Bulk buffers the sender thread has written, back for reuse.
    spent_bulk: Receiver<Vec<u8>>,
    /// Bulk buffers handed back by the caller, for reuse.
    kept: Vec<Vec<u8>>,
    /// The next frame: a header's room, then stream bytes.
    buf: Vec<u8>,
    counters: Arc<Counters>,
    error: Arc<Mutex<Option<SendFailure>>>,
    handle: Option<JoinHandle<()>>,
    /// The rate cap, shared with the RAM channels.
    bucket: Option<Arc<Mutex<TokenBucket>>>,
    /// RAM channels beside this stream, if the migration opened any.
    ram: Option<crate::migration::multifd::RamChannels>,
}

/// Stream bytes per data frame.
const BUF: usize = 256 << 10;

/// A fresh frame buffer with room for its header.
fn frame_buf(mut b: Vec<u8>) -> Vec<u8> {
    b.clear();
    b.extend_from_slice(&[0u8; FRAME_HEADER]);
    b
}

/// Bytes per write under a rate cap: about a tenth of a second's worth (at least 4 KiB, at
/// most 64 KiB), so that bytes keep flowing — and the peer keeps seeing them — however low
/// the cap.
fn piece(rate: u64) -> usize {
    ((rate / 10) as usize).clamp(4 << 10, 64 << 10)
}

/// Write all of `data` under `live`'s deadline and, with a `bucket`, under its cap: in
/// pieces, each waiting for its tokens outside the bucket's lock (the main stream's sender
/// and the RAM channels share one). `on_piece` is told each piece's length once written.
pub(crate) fn write_capped<W: Write>(
    w: &mut W,
    data: &[u8],
    bucket: Option<&Mutex<TokenBucket>>,
    live: &Liveness,
    on_piece: &mut dyn FnMut(usize),
) -> io::Result<()> {
    let Some(b) = bucket else {
        write_all_live(w, data, live)?;
        on_piece(data.len());
        return Ok(());
    };
    let rate = b.lock().map_or(1 << 30, |b| b.rate());
    for p in data.chunks(piece(rate)) {
        let wait = b.lock().ok().and_then(|mut b| b.reserve(p.len()));
        if let Some(wait) = wait {
            std::thread::sleep(wait);
        }
        write_all_live(w, p, live)?;
        on_piece(p.len());
    }
    Ok(())
}

impl ChannelWriter {
    /// Start a sender thread writing to `sock` at most `rate` bytes/s (`None`: uncapped),
    /// under `live`'s deadline; it sends a keep-alive after [`KEEPALIVE_INTERVAL`] without
    /// data.
    pub fn spawn(sock: TcpStream, rate: Option<u64>, live: Arc<Liveness>) -> Self {
        let (tx, rx) = sync_channel::<Out>(64);
        let (back, spent) = channel::<Vec<u8>>();
        let (back_bulk, spent_bulk) = channel::<Vec<u8>>();
        let counters = Arc::new(Counters::default());
        let error = Arc::new(Mutex::new(None));
        let (c, e) = (counters.clone(), error.clone());
        let bucket = rate.map(|r| Arc::new(Mutex::new(TokenBucket::new(r))));
        let b = bucket.clone();
        let _ = set_slices(&sock, &live);
        let handle = std::thread::Builder::new()
            .name("migration-send".into())
            .spawn(move || {
                // The channel's receiver lives until the error is recorded: whoever finds
                // the channel closed then finds the reason too.
                let back = [back, back_bulk];
                if let Err(err) = send_loop(sock, &rx, b, &live, &c, &back) {
                    if let Ok(mut slot) = e.lock() {
                        *slot = Some(SendFailure::of(err));
                    }
                    c.backlog.store(0, Ordering::Relaxed);
                }
            })
            .ok();
        Self {
            tx: Some(tx),
            spent,
            spent_bulk,
            kept: Vec::new(),
            buf: frame_buf(Vec::with_capacity(FRAME_HEADER + BUF)),
            counters,
            error,
            handle,
            bucket,
            ram: None,
        }
    }

    /// The rate cap's bucket (shared with whatever else must stay under the same cap).
    pub fn bucket(&self) -> Option<Arc<Mutex<TokenBucket>>> {
        self.bucket.clone()
    }

    /// Send guest RAM on `channels` from now on (see [`Self::ram_channels`]).
    pub fn attach_ram_channels(&mut self, channels: crate::migration::multifd::RamChannels) {
        self.ram = Some(channels);
    }

    /// The RAM channels, if the migration opened any.
    pub fn ram_channels(&mut self) -> Option<&mut crate::migration::multifd::RamChannels> {
        self.ram.as_mut()
    }

    /// Take the RAM channels (to end them).
    pub fn take_ram_channels(&mut self) -> Option<crate::migration::multifd::RamChannels> {
        self.ram.take()
    }

    /// A buffer of at least `len` bytes to fill and hand to
    /// [`write_bulk`](crate::stream::BulkWrite::write_bulk): a spent one when there is one
    /// (already faulted in), else a fresh one.
    pub fn bulk_buffer(&mut self, len: usize) -> Vec<u8> {
        while let Some(b) = self.kept.pop().or_else(|| self.spent_bulk.try_recv().ok()) {
            if b.len() >= len {
                return b;
            }
        }
        vec![0u8; len]
    }

    /// Keep `buf` (from [`Self::bulk_buffer`], not handed on) for the next one.
    pub fn keep_bulk_buffer(&mut self, buf: Vec<u8>) {
        self.kept.push(buf);
    }

    /// The shared counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Stream bytes queued but not yet on the wire.
    pub fn backlog(&self) -> u64 {
        self.counters.backlog.load(Ordering::Relaxed) + self.pending() as u64
    }

    fn pending(&self) -> usize {
        self.buf.len() - FRAME_HEADER
    }

    fn peer_error(&self) -> io::Error {
        match self.error.lock().ok().as_deref().and_then(Option::as_ref) {
            Some(f) => f.to_io(),
            None => io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection to the target lost: the sender stopped",
            ),
        }
    }

    fn ship(&mut self) -> io::Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let next = self
            .spent
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FRAME_HEADER + BUF));
        let mut buf = std::mem::replace(&mut self.buf, frame_buf(next));
        let n = buf.len() - FRAME_HEADER;
        buf[..8].copy_from_slice(&DATA_MAGIC);
        buf[8..FRAME_HEADER].copy_from_slice(&(n as u32).to_le_bytes());
        self.counters.backlog.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(e) = self.peer_error_now() {
            return Err(e);
        }
        match &self.tx {
            Some(tx) => tx.send(Out::Frame(buf)).map_err(|_| self.peer_error()),
            None => Err(self.peer_error()),
        }
    }

    /// The sender thread's error, if the connection broke or the peer timed out; or a
    /// RAM channel's. (The target reads its channels on threads that do nothing else, so
    /// a channel it left unread for the peer timeout fails the migration even while its
    /// main connection's keep-alives say it is busy.)
    pub fn peer_error_now(&self) -> Option<io::Error> {
        if let Some(e) = self.ram.as_ref().and_then(|r| r.failure()) {
            return Some(e.into_io());
        }
        let has = self.error.lock().ok().is_some_and(|e| e.is_some());
        has.then(|| self.peer_error())
    }

    /// Flush, close the channel and wait until every byte is on the wire (at most the
    /// peer timeout after the peer's last sign of life).
    pub fn finish(&mut self) -> io::Result<()> {
        self.ship()?;
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        match self.peer_error_now() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait (without closing) until the backlog is at most `max` bytes.
    pub fn drain_to(&mut self, max: u64) -> io::Result<()> {
        self.ship()?;
        while self.counters.backlog.load(Ordering::Relaxed) > max {
            if let Some(e) = self.peer_error_now() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

/// The sender thread: data frames as they come, a keep-alive whenever none came for
/// [`KEEPALIVE_INTERVAL`].
fn send_loop(
    mut sock: TcpStream,
    rx: &Receiver<Out>,
    bucket: Option<Arc<Mutex<TokenBucket>>>,
    live: &Liveness,
    c: &Counters,
    back: &[std::sync::mpsc::Sender<Vec<u8>>; 2],
) -> io::Result<()> {
    let mut seq = 0u64;
    loop {
        let out = match rx.recv_timeout(KEEPALIVE_INTERVAL) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => {
                seq += 1;
                let msg = control::encode(&FromSource::KeepAlive(KeepAlive { seq }))
                    .map_err(MigrationError::into_io)?;
                write_all_live(&mut sock, &msg, live)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let (head, body, pool) = match &out {
            Out::Frame(b) => (None, &b[..], 0),
            Out::Bulk(b, len) => {
                let mut h = [0u8; FRAME_HEADER];
                h[..8].copy_from_slice(&DATA_MAGIC);
                h[8..].copy_from_slice(&(*len as u32).to_le_bytes());
                (Some(h), &b[..*len], 1)
            }
        };
        for part in head.as_ref().map(|h| &h[..]).into_iter().chain([body]) {
            write_capped(&mut sock, part, bucket.as_deref(), live, &mut |_| {})?;
        }
        let n = (body.len() - if pool == 0 { FRAME_HEADER } else { 0 }) as u64;
        c.sent.fetch_add(n, Ordering::Relaxed);
        c.backlog.fetch_sub(n, Ordering::Relaxed);
        let _ = back[pool].send(match out {
            Out::Frame(b) | Out::Bulk(b, _) => b,
        });
    }
}

impl crate::stream::BulkWrite for ChannelWriter {
    fn write_bulk(&mut self, buf: Vec<u8>, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(buf);
        }
        // What was written before goes first.
        self.ship()?;
        let next = self.bulk_buffer(buf.len());
        self.counters
            .backlog
            .fetch_add(len as u64, Ordering::Relaxed);
        if let Some(e) = self.peer_error_now() {
            return Err(e);
        }
        match &self.tx {
            Some(tx) => tx
                .send(Out::Bulk(buf, len))
                .map_err(|_| self.peer_error())?,
            None => return Err(self.peer_error()),
        }
        Ok(next)
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.peer_error_now() {
            return Err(e);
        }
        // Fill fixed-size buffers (reused, so already faulted in) rather than growing one:
        // a buffer grown to a 4 MiB record would be a fresh mapping, faulted page by page.
        let mut rest = data;
        while !rest.is_empty() {
            let room = BUF - self.pending().min(BUF);
            let (now, later) = rest.split_at(rest.len().min(room));
            self.buf.extend_from_slice(now);
            rest = later;
            if self.pending() >= BUF {
                self.ship()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ship()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A source's writer and a target's reader over loopback, with `timeout`.
    fn pair(timeout: Duration) -> (ChannelWriter, PrefetchReader) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = local_url(&l).unwrap();
        let sock = connect(&url, Duration::from_secs(5)).unwrap();
        let (peer, _) = l.accept().unwrap();
        let w = ChannelWriter::spawn(sock, None, Liveness::new("target", timeout));
        let r = PrefetchReader::spawn(peer, 8, Liveness::new("source", timeout));
        (w, r)
    }

    #[test]
    fn sends_everything_in_order_between_control_messages() {
        let (mut w, mut r) = pair(Duration::from_secs(60));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        for c in data.chunks(70_001) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(w.backlog(), 0);
        drop(w);
        assert_eq!(reader.join().unwrap(), data);
    }

    #[test]
    fn bulk_buffers_go_out_in_order_with_copied_writes() {
        use crate::stream::BulkWrite;
        let (mut w, mut r) = pair(Duration::from_secs(60));
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        let mut want = Vec::new();
        for i in 0..40u32 {
            let small: Vec<u8> = (0..1000 + i).map(|j| (i ^ j) as u8).collect();
            w.write_all(&small).unwrap();
            want.extend_from_slice(&small);
            let mut buf = w.bulk_buffer(1 << 20);
            let len = (i as usize * 9973) % buf.len();
            for (j, b) in buf[..len].iter_mut().enumerate() {
                *b = (j as u32 * 7 + i) as u8;
            }
            want.extend_from_slice(&buf[..len]);
            let next = w.write_bulk(buf, len).unwrap();
            assert!(next.len() >= 1 << 20);
            w.keep_bulk_buffer(next);
        }
        w.finish().unwrap();
        assert_eq!(w.backlog(), 0);
        drop(w);
        assert_eq!(reader.join().unwrap(), want);
    }

    #[test]
    fn a_dead_peer_is_an_error_not_a_hang() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = local_url(&l).unwrap();
        let closer = std::thread::spawn(move || drop(l.accept().unwrap()));
        let sock = connect(&url, Duration::from_secs(5)).unwrap();
        closer.join().unwrap();
        let live = Liveness::new("target", Duration::from_secs(60));
        let mut w = ChannelWriter::spawn(sock, None, live);
        let chunk = vec![0u8; 1 << 20];
        let failed = (0..256).any(|_| w.write_all(&chunk).is_err());
        assert!(
            failed || w.finish().is_err(),
            "writing 256 MiB to a closed socket must fail"
        );
    }

    #[test]
    fn bad_urls() {
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("tcp://127.0.0.1").is_err());
        assert!(parse_url("tcp://127.0.0.1:4444").is_ok());
    }
}
