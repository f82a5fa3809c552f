//! One monotonic clock for both processes of a migration.
//!
//! Downtime is measured from the source's vCPU stop to the target's vCPU resume. Both run
//! on one host in the demo and tests, so `CLOCK_MONOTONIC` (system-wide, unlike Rust's
//! opaque `Instant`) gives timestamps the two processes can subtract.
//!
//! The same clock keeps the deadlines on the peer ([`Liveness`], [`DeadlineReader`],
//! [`DeadlineWriter`]): no wait on the other process lasts longer than the peer timeout
//! after its last sign of life.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{MigrationError, Result};

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on
    // Linux, and clock_gettime writes nothing beyond the struct.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds between two `monotonic_ns` readings.
pub fn ms_between(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1e6
}

/// When the peer was last heard from, what the migration is doing, and the deadline that
/// follows: a wait on the peer fails once nothing (no byte, no keep-alive) came from it for
/// the peer timeout, counted from the later of its last sign of life and the wait's start.
/// Shared by every thread that reads from or writes to one peer.
#[derive(Debug)]
pub struct Liveness {
    peer: &'static str,
    timeout: Duration,
    last_heard: AtomicU64,
    phase: Mutex<String>,
}

impl Liveness {
    /// A peer named `peer` ("target", "source"), heard from just now.
    pub fn new(peer: &'static str, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            peer,
            timeout,
            last_heard: AtomicU64::new(monotonic_ns()),
            phase: Mutex::new("the handshake".into()),
        })
    }

    /// The peer showed a sign of life (a byte or a message arrived).
    pub fn heard(&self) {
        self.last_heard.fetch_max(monotonic_ns(), Ordering::Relaxed);
    }

    /// Name the phase that a timeout from now on reports, e.g. "pre-copy round 2".
    pub fn set_phase(&self, phase: impl Into<String>) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.into();
        }
    }

    /// The phase a timeout would report now.
    pub fn phase(&self) -> String {
        self.phase.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The peer timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long one blocking call on the socket may wait before the deadline is checked
    /// again (a tenth of the timeout, between 10 and 100 ms).
    pub fn slice(&self) -> Duration {
        (self.timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(100))
    }

    /// The timeout error, if nothing came from the peer for the timeout since the later of
    /// its last sign of life and `since_ns` (CLOCK_MONOTONIC). `verb` is what the peer
    /// stopped doing: "answering", "reading", "sending".
    pub fn expired(&self, since_ns: u64, verb: &'static str) -> Option<MigrationError> {
        let basis = self.last_heard.load(Ordering::Relaxed).max(since_ns);
        let silent = monotonic_ns().saturating_sub(basis);
        (silent > self.timeout.as_nanos() as u64).then(|| self.error(verb))
    }

    /// The timeout error for the current phase.
    pub fn error(&self, verb: &'static str) -> MigrationError {
        MigrationError::PeerTimeout {
            peer: self.peer,
            verb,
            phase: self.phase(),
            secs: format!("{}", self.timeout.as_secs_f64()),
        }
    }
}

/// Make every blocking read and write on `sock` (and its clones) return after at most
/// `live`'s slice, so that the caller can check its deadline.
pub fn set_slices(sock: &TcpStream, live: &Liveness) -> Result<()> {
    sock.set_read_timeout(Some(live.slice()))
        .and_then(|_| sock.set_write_timeout(Some(live.slice())))
        .map_err(|e| MigrationError::PeerIo {
            what: "cannot set the socket's timeouts".into(),
            source: e,
        })
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Write all of `data`, failing once the peer neither took a byte nor showed a sign of
/// life for the peer timeout.
pub(crate) fn write_all_live<W: Write>(
    w: &mut W,
    mut data: &[u8],
    live: &Liveness,
) -> io::Result<()> {
    let mut since = monotonic_ns();
    while !data.is_empty() {
        match w.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                since = monotonic_ns();
            }
            Err(e) if is_timeout(&e) => {
                if let Some(err) = live.expired(since, "reading") {
                    return Err(err.into_io());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket's reads with the peer deadline: a read fails once nothing came from the peer
/// for the peer timeout. Bytes read count as signs of life.
#[derive(Debug)]
pub struct DeadlineReader {
    sock: TcpStream,
    live: Arc<Liveness>,
}

impl DeadlineReader {
    /// Read `sock` (whose slices [`set_slices`] set) under `live`'s deadline.
    pub fn new(sock: TcpStream, live: Arc<Liveness>) -> Self {
        Self { sock, live }
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let since = monotonic_ns();
        loop {
            match self.sock.read(out) {
                Ok(n) => {
                    if n > 0 {
                        self.live.heard();
                    }
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    if let Some(err) = self.live.expired(since, "answering") {
                        return Err(err.into_io());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A socket's writes with the peer deadline (see [`DeadlineReader`]).
#[derive(Debug)]
pub struct DeadlineWriter {
    sock: TcpStream,
    live: Arc<Liveness>,
}

impl DeadlineWriter {
    /// Write `sock` (whose slices [`set_slices`] set) under `live`'s deadline.
    pub fn new(sock: TcpStream, live: Arc<Liveness>) -> Self {
        Self { sock, live }
    }

    /// Shut the connection down both ways (the peer sees the end at once).
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

impl Write for DeadlineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        write_all_live(&mut self.sock, data, &self.live).map(|_| data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_monotonic() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b > a && ms_between(a, b) >= 2.0, "{a} {b}");
    }

    #[test]
    fn liveness_expires_only_after_the_timeout_and_names_the_phase() {
        // Silent since boot (last heard at 0), and a wait that began then: expired.
        let short = Liveness::new("target", Duration::from_millis(50));
        short.set_phase("pre-copy round 3");
        short.last_heard.store(0, Ordering::Relaxed);
        let e = short.expired(0, "answering").expect("expired");
        assert_eq!(
            e.to_string(),
            "target stopped answering during pre-copy round 3 (nothing from it in 0.05 s)"
        );
        // With an hour's timeout: a sign of life, or a wait that starts now, is in time.
        let long = Liveness::new("source", Duration::from_secs(3600));
        long.last_heard.store(0, Ordering::Relaxed);
        assert!(long.expired(monotonic_ns(), "sending").is_none());
        long.heard();
        assert!(long.expired(0, "sending").is_none());
    }
}
