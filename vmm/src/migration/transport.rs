//! TCP transport: addresses, and a sender thread that writes the stream at a capped rate
//! while the guest keeps running on the main thread.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::{MigrationError, Result};
use super::rate::TokenBucket;

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

/// Connect, retrying for up to `wait` (the target may still be starting).
pub fn connect(url: &str, wait: Duration) -> Result<TcpStream> {
    let addr = parse_url(url)?;
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if start.elapsed() < wait => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(MigrationError::Peer {
                    what: format!("cannot connect to {url}: {e}"),
                })
            }
        }
    }
}

/// Listen on `tcp://HOST:PORT`.
pub fn listen(url: &str) -> Result<TcpListener> {
    let addr = parse_url(url)?;
    TcpListener::bind(addr).map_err(|e| MigrationError::Peer {
        what: format!("cannot listen on {url}: {e}"),
    })
}

/// Counters shared with the sender thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes handed to the sender thread and not yet written.
    pub backlog: AtomicU64,
    /// Bytes written to the socket.
    pub sent: AtomicU64,
}

/// A `Write` that hands buffers to a sender thread.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    /// Buffers the sender thread has written, back for reuse (a fresh 256 KiB buffer per
    /// ship would cost an mmap, 64 page faults and an munmap).
    spent: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    counters: Arc<Counters>,
    error: Arc<Mutex<Option<String>>>,
    handle: Option<JoinHandle<()>>,
}

const BUF: usize = 256 << 10;

impl ChannelWriter {
    /// Start a sender thread writing to `sock` at most `rate` bytes/s (`None`: uncapped).
    pub fn spawn(mut sock: TcpStream, rate: Option<u64>) -> Self {
        let (tx, rx) = sync_channel::<Vec<u8>>(64);
        let (back, spent) = channel::<Vec<u8>>();
        let counters = Arc::new(Counters::default());
        let error = Arc::new(Mutex::new(None));
        let (c, e) = (counters.clone(), error.clone());
        let handle = std::thread::Builder::new()
            .name("migration-send".into())
            .spawn(move || {
                let mut bucket = rate.map(TokenBucket::new);
                for buf in rx {
                    if let Some(b) = bucket.as_mut() {
                        b.take(buf.len());
                    }
                    if let Err(err) = sock.write_all(&buf) {
                        if let Ok(mut slot) = e.lock() {
                            *slot = Some(err.to_string());
                        }
                        c.backlog.store(0, Ordering::Relaxed);
                        return;
                    }
                    let n = buf.len() as u64;
                    c.sent.fetch_add(n, Ordering::Relaxed);
                    c.backlog.fetch_sub(n, Ordering::Relaxed);
                    let mut buf = buf;
                    buf.clear();
                    let _ = back.send(buf);
                }
                let _ = sock.flush();
            })
            .ok();
        Self {
            tx: Some(tx),
            spent,
            buf: Vec::with_capacity(BUF),
            counters,
            error,
            handle,
        }
    }

    /// The shared counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Bytes queued but not yet on the wire.
    pub fn backlog(&self) -> u64 {
        self.counters.backlog.load(Ordering::Relaxed) + self.buf.len() as u64
    }

    fn peer_error(&self) -> io::Error {
        let msg = self
            .error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "the sender stopped".into());
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("connection to the target lost: {msg}"),
        )
    }

    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spent
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUF));
        let buf = std::mem::replace(&mut self.buf, next);
        self.counters
            .backlog
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let err = self.peer_error_if_any();
        if let Some(e) = err {
            return Err(e);
        }
        match &self.tx {
            Some(tx) => tx.send(buf).map_err(|_| self.peer_error()),
            None => Err(self.peer_error()),
        }
    }

    /// The sender thread's error, if the connection broke.
    pub fn peer_error_now(&self) -> Option<io::Error> {
        self.peer_error_if_any()
    }

    fn peer_error_if_any(&self) -> Option<io::Error> {
        let has = self.error.lock().ok().is_some_and(|e| e.is_some());
        has.then(|| self.peer_error())
    }

    /// Flush, close the channel and wait until every byte is on the wire.
    pub fn finish(&mut self) -> io::Result<()> {
        self.ship()?;
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        match self.peer_error_if_any() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait (without closing) until the backlog is at most `max` bytes.
    pub fn drain_to(&mut self, max: u64) -> io::Result<()> {
        self.ship()?;
        while self.counters.backlog.load(Ordering::Relaxed) > max {
            if let Some(e) = self.peer_error_if_any() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.peer_error_if_any() {
            return Err(e);
        }
        // Fill fixed-size buffers (reused, so already faulted in) rather than growing one:
        // a buffer grown to a 4 MiB record would be a fresh mapping, faulted page by page.
        let mut rest = data;
        while !rest.is_empty() {
            let room = BUF - self.buf.len().min(BUF);
            let (now, later) = rest.split_at(rest.len().min(room));
            self.buf.extend_from_slice(now);
            rest = later;
            if self.buf.len() >= BUF {
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
    use super::*;
    use std::io::Read;

    #[test]
    fn sends_everything_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let sock = connect(&format!("tcp://{addr}"), Duration::from_secs(5)).unwrap();
        let mut w = ChannelWriter::spawn(sock, None);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        for c in data.chunks(70_001) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(w.backlog(), 0);
        assert_eq!(reader.join().unwrap(), data);
    }

    #[test]
    fn a_dead_peer_is_an_error_not_a_hang() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let closer = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            drop(s);
        });
        let sock = connect(&format!("tcp://{addr}"), Duration::from_secs(5)).unwrap();
        closer.join().unwrap();
        let mut w = ChannelWriter::spawn(sock, None);
        let chunk = vec![0u8; 1 << 20];
        let mut failed = false;
        for _ in 0..256 {
            if w.write_all(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        let fin = w.finish();
        assert!(
            failed || fin.is_err(),
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

/// A `Read` fed by a thread that drains the socket into buffers, so the target's parsing
/// and applying overlap with the transfer instead of stalling the sender whenever the
/// socket buffer is full.
#[derive(Debug)]
pub struct PrefetchReader {
    rx: Receiver<io::Result<(Vec<u8>, usize)>>,
    back: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
}

impl PrefetchReader {
    /// Start draining `sock` (at most `depth` buffers of 1 MiB ahead).
    pub fn spawn(mut sock: TcpStream, depth: usize) -> Self {
        use std::io::Read;
        let (tx, rx) = sync_channel::<io::Result<(Vec<u8>, usize)>>(depth.max(1));
        let (back, spent) = channel::<Vec<u8>>();
        let _ = std::thread::Builder::new()
            .name("migration-recv".into())
            .spawn(move || loop {
                // Reuse a consumed buffer: zeroing a fresh 1 MiB for every read would cost
                // more than the read.
                // Buffers keep their full length, so a reused one is never zeroed again.
                let mut buf = spent.try_recv().unwrap_or_else(|_| vec![0u8; PREFETCH_BUF]);
                match sock.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.send(Ok((buf, n))).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            });
        Self {
            rx,
            back,
            cur: Vec::new(),
            len: 0,
            pos: 0,
            done: false,
        }
    }
}

/// Bytes the prefetch thread asks for per read.
const PREFETCH_BUF: usize = 1 << 20;

impl io::Read for PrefetchReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok((b, n))) => {
                    let old = std::mem::replace(&mut self.cur, b);
                    if old.len() == PREFETCH_BUF {
                        let _ = self.back.send(old);
                    }
                    self.len = n;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
