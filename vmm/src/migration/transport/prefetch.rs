//! The target's side of the transport: a thread that drains the source's socket ahead of
//! the parser, splitting data frames from control frames (see the framing in
//! [`super`]).

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};

use super::super::clock::{is_timeout, monotonic_ns, set_slices, Liveness};
use super::super::control::{self, CONTROL_MAGIC};
use super::super::error::{MigrationError, Result};
use super::{DATA_MAGIC, FRAME_HEADER};

/// What the prefetch thread hands on: stream bytes (buffer, length), or how it ended.
type Chunk = (Vec<u8>, usize);

/// The target's reads of the source: a thread drains the socket into buffers, so parsing
/// and applying overlap with the transfer instead of stalling the sender whenever the
/// socket buffer is full. Stream bytes come out of `Read`; control messages out of
/// [`PrefetchReader::recv_control`]; keep-alives only refresh the deadline. Every wait ends
/// once the source has shown no sign of life for the peer timeout.
#[derive(Debug)]
pub struct PrefetchReader {
    rx: Receiver<Chunk>,
    ctrl: Receiver<Vec<u8>>,
    back: std::sync::mpsc::Sender<Vec<u8>>,
    ended: Arc<Mutex<Option<(io::ErrorKind, String)>>>,
    stop: Arc<AtomicBool>,
    live: Arc<Liveness>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
}

/// Bytes the prefetch thread asks for per read.
const PREFETCH_BUF: usize = 256 << 10;

impl PrefetchReader {
    /// Start draining `sock` (at most `depth` buffers ahead) under `live`'s deadline.
    pub fn spawn(sock: TcpStream, depth: usize, live: Arc<Liveness>) -> Self {
        let (tx, rx) = sync_channel::<Chunk>(depth.max(1));
        let (ctx, ctrl) = channel::<Vec<u8>>();
        let (back, spent) = channel::<Vec<u8>>();
        let ended = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let _ = set_slices(&sock, &live);
        let (e, s, l) = (ended.clone(), stop.clone(), live.clone());
        let _ = std::thread::Builder::new()
            .name("migration-recv".into())
            .spawn(move || {
                let mut src = Drain {
                    sock,
                    live: l,
                    stop: s,
                };
                if let Err(err) = src.frames(&tx, &ctx, &spent) {
                    if let Ok(mut slot) = e.lock() {
                        *slot = Some((err.kind(), err.to_string()));
                    }
                }
            });
        Self {
            rx,
            ctrl,
            back,
            ended,
            stop,
            live,
            cur: Vec::new(),
            len: 0,
            pos: 0,
            done: false,
        }
    }

    /// The deadline this reader keeps (set its phase as the migration moves on).
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.live
    }

    /// How the prefetch thread ended, as an error, if it ended with one.
    fn ended(&self) -> Option<io::Error> {
        let e = self.ended.lock().ok()?;
        e.as_ref().map(|(k, t)| io::Error::new(*k, t.clone()))
    }

    /// The next control message from the source if one comes within `wait` (`None` if
    /// not), decoded as `T`.
    pub fn recv_control_within<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &str,
        wait: std::time::Duration,
    ) -> Result<Option<T>> {
        match self.ctrl.recv_timeout(wait) {
            Ok(body) => control::decode(&body, what).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(MigrationError::Peer {
                what: format!("the source closed the connection before the {what}"),
            }),
        }
    }

    /// The next control message from the source, decoded as `T`.
    pub fn recv_control<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T> {
        let since = monotonic_ns();
        loop {
            match self.ctrl.recv_timeout(self.live.slice()) {
                Ok(body) => return control::decode(&body, what),
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(e) = self.live.expired(since, "sending") {
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(match self.ended() {
                        Some(e) => MigrationError::from_io(e, || {
                            format!("connection lost while waiting for the {what}")
                        }),
                        None => MigrationError::Peer {
                            what: format!("the source closed the connection before the {what}"),
                        },
                    })
                }
            }
        }
    }
}

impl Drop for PrefetchReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl io::BufRead for PrefetchReader {
    /// The stream bytes of the buffer the prefetch thread filled last (empty at the end):
    /// a parser takes them from here without a copy.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let since = monotonic_ns();
        while self.pos == self.len {
            if self.done {
                return Ok(&[]);
            }
            match self.rx.recv_timeout(self.live.slice()) {
                Ok((b, n)) => {
                    let old = std::mem::replace(&mut self.cur, b);
                    if old.len() == PREFETCH_BUF {
                        let _ = self.back.send(old);
                    }
                    self.len = n;
                    self.pos = 0;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(e) = self.live.expired(since, "sending") {
                        return Err(e.into_io());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    return match self.ended() {
                        Some(e) => Err(e),
                        None => Ok(&[]),
                    };
                }
            }
        }
        Ok(&self.cur[self.pos..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
    }
}

impl Read for PrefetchReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use io::BufRead;
        let buf = self.fill_buf()?;
        let n = out.len().min(buf.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The prefetch thread's side of the socket.
struct Drain {
    sock: TcpStream,
    live: Arc<Liveness>,
    stop: Arc<AtomicBool>,
}

impl Drain {
    /// Read into `out`: `Ok(0)` at the end of the connection (or when the reader is gone).
    fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(0);
            }
            match self.sock.read(out) {
                Ok(n) => {
                    if n > 0 {
                        self.live.heard();
                    }
                    return Ok(n);
                }
                // The deadline is the consumer's to judge (it knows whether it waits).
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fill `out`; `Ok(false)` if the connection ended before its first byte.
    fn read_full(&mut self, out: &mut [u8], what: &str) -> io::Result<bool> {
        let mut got = 0;
        while got < out.len() {
            match self.read_some(&mut out[got..])? {
                0 if got == 0 => return Ok(false),
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the source closed the connection inside {what}"),
                    ))
                }
                n => got += n,
            }
        }
        Ok(true)
    }

    /// Read frames until the end of the connection: stream bytes to `tx`, control
    /// messages other than keep-alives to `ctx`.
    fn frames(
        &mut self,
        tx: &SyncSender<Chunk>,
        ctx: &std::sync::mpsc::Sender<Vec<u8>>,
        spent: &Receiver<Vec<u8>>,
    ) -> io::Result<()> {
        let mut head = [0u8; FRAME_HEADER];
        loop {
            if !self.read_full(&mut head, "a frame header")? {
                return Ok(());
            }
            let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
            if head[..8] == DATA_MAGIC {
                let mut left = len;
                while left > 0 {
                    // Reuse a consumed buffer: zeroing a fresh 1 MiB for every read would
                    // cost more than the read. Buffers keep their full length.
                    let mut buf = spent.try_recv().unwrap_or_else(|_| vec![0u8; PREFETCH_BUF]);
                    let want = left.min(buf.len());
                    let n = self.read_some(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the source closed the connection inside a data frame",
                        ));
                    }
                    left -= n;
                    if tx.send((buf, n)).is_err() {
                        return Ok(());
                    }
                }
            } else if head[..8] == CONTROL_MAGIC {
                if len > control::MAX_CONTROL as usize {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a control message of {len} bytes, over the cap"),
                    ));
                }
                let mut body = vec![0u8; len];
                if len > 0 && !self.read_full(&mut body, "a control message")? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source closed the connection inside a control message",
                    ));
                }
                if !control::is_keepalive(&body) && ctx.send(body).is_err() {
                    return Ok(());
                }
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "expected a frame from the source, got bytes {:02x?}",
                        &head[..8]
                    ),
                ));
            }
        }
    }
}
