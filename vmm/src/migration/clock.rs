//! The clocks of a migration: the downtime measurement and the deadlines on the peer.
//!
//! **Downtime never compares two machines' clocks.** It runs from the source's vCPU stop
//! to the target's vCPU resume, two events on two hosts whose `CLOCK_MONOTONIC`s share
//! neither epoch nor rate. The source measures it on its own clock alone
//! ([`SourceDowntime`]): from its stop to the arrival of the target's "resumed"
//! acknowledgement, minus the acknowledgement's one-way trip, taken as half the path's
//! round-trip time that the source's own TCP stack measured on the migration socket
//! ([`tcp_path_rtt`]; its minimum, which leaves queueing out). A path with delay D each
//! way thus adds D to the downtime (the last bytes must cross it before the target can
//! resume) and not 2D. The assumption is NTP's: the path is symmetric. The target's parts
//! (load, config, resume) are durations on the target's own clock, which need no common
//! epoch either; what the two clocks say in absolute terms is never subtracted.
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

/// Milliseconds between two `monotonic_ns` readings of the same clock (one host's).
pub fn ms_between(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1e6
}

/// The round-trip time of a TCP connection's path, as the local kernel measured it on its
/// own clock (`TCP_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PathRtt {
    /// The smallest round trip seen on the connection, ms (no queueing in it).
    pub min_ms: f64,
    /// The smoothed round trip, ms.
    pub smoothed_ms: f64,
}

/// The path round-trip time of `sock` (`getsockopt(TCP_INFO)`), or `None` where the kernel
/// does not say (then the downtime counts the acknowledgement's trip too, and says so).
pub fn tcp_path_rtt(sock: &TcpStream) -> Option<PathRtt> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large, and
    // `len` back; the fd is the open socket `sock` borrows.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.6 have no tcpi_min_rtt: fall back to the smoothed value.
    let min_end = std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) + 4;
    if rc != 0 || info.tcpi_rtt == 0 {
        return None;
    }
    let smoothed_ms = f64::from(info.tcpi_rtt) / 1e3;
    let min_ms = if (len as usize) >= min_end && info.tcpi_min_rtt > 0 {
        f64::from(info.tcpi_min_rtt) / 1e3
    } else {
        smoothed_ms
    };
    Some(PathRtt {
        min_ms,
        smoothed_ms,
    })
}

/// The downtime as the source measures it, on its own clock only.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceDowntime {
    /// Source vCPU stop to target vCPU resume, ms.
    pub downtime_ms: f64,
    /// Source vCPU stop to the target's acknowledgement arriving, ms (source clock).
    pub stop_to_ack_ms: f64,
    /// The acknowledgement's one-way trip taken off, ms (half the path's minimum RTT).
    pub ack_trip_ms: f64,
    /// How it was measured, for people.
    pub method: String,
}

impl SourceDowntime {
    /// From the source's stop (`t_stop_ns`) and the acknowledgement's arrival (`t_ack_ns`),
    /// both readings of the source's clock, and the path's round trip as the source's TCP
    /// stack measured it. No reading of the target's clock enters.
    pub fn measure(t_stop_ns: u64, t_ack_ns: u64, rtt: Option<PathRtt>) -> Self {
        let stop_to_ack_ms = ms_between(t_stop_ns, t_ack_ns);
        let (ack_trip_ms, method) = match rtt {
            Some(r) => (
                (r.min_ms / 2.0).min(stop_to_ack_ms),
                format!(
                    concat!(
                        "source clock only: stop to the target's ack ({:.2} ms) ",
                        "minus half the path's minimum RTT ({:.2} ms, TCP_INFO); no cross-host ",
                        "clock comparison",
                    ),
                    stop_to_ack_ms, r.min_ms
                ),
            ),
            None => (
                0.0,
                format!(
                    concat!(
                        "source clock only: stop to the target's ack ({:.2} ms), ",
                        "the ack's trip included (the kernel gave no RTT)",
                    ),
                    stop_to_ack_ms
                ),
            ),
        };
        Self {
            downtime_ms: stop_to_ack_ms - ack_trip_ms,
            stop_to_ack_ms,
            ack_trip_ms,
            method,
        }
    }

    /// What is left of the downtime once the source's parts (stop, drain, wire) and the
    /// target's own durations (load, config, resume) are taken off: the residue in flight
    /// and its parsing on the target. Never negative.
    pub fn receive_ms(&self, source_parts_ms: f64, target_parts_ms: f64) -> f64 {
        (self.downtime_ms - source_parts_ms - target_parts_ms).max(0.0)
    }
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

    /// The path round-trip time of the connection, as this side's kernel measured it.
    pub fn path_rtt(&self) -> Option<PathRtt> {
        tcp_path_rtt(&self.sock)
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

    /// A migration's timeline on two hosts whose clocks differ by `offset_ns` (target =
    /// source + offset), with `one_way_ns` of delay each way: the events as each side's
    /// clock reads them.
    struct TwoHosts {
        offset_ns: i64,
        one_way_ns: u64,
    }

    impl TwoHosts {
        fn target_clock(&self, source_ns: u64) -> u64 {
            source_ns.wrapping_add_signed(self.offset_ns)
        }
    }

    #[test]
    fn downtime_is_right_whatever_the_target_clock_reads() {
        // Source stops at 10 s on its clock; the true downtime is 30 ms (the last bytes'
        // trip included); the ack then takes the one-way delay back.
        let t_stop = 10_000_000_000u64;
        let true_downtime_ns = 30_000_000u64;
        for (offset_ns, one_way_ns) in [
            (0i64, 0u64),
            (0, 20_000_000),
            (3_600_000_000_000, 20_000_000),
            (-9_000_000_000, 1_000_000),
            (i64::MAX / 4, 50_000_000),
        ] {
            let h = TwoHosts {
                offset_ns,
                one_way_ns,
            };
            let resumed_on_source_clock = t_stop + true_downtime_ns;
            let resumed_on_target_clock = h.target_clock(resumed_on_source_clock);
            let t_ack = resumed_on_source_clock + h.one_way_ns;
            let rtt = PathRtt {
                min_ms: 2.0 * h.one_way_ns as f64 / 1e6,
                smoothed_ms: 2.5 * h.one_way_ns as f64 / 1e6,
            };
            let d = SourceDowntime::measure(t_stop, t_ack, Some(rtt));
            assert!(
                (d.downtime_ms - 30.0).abs() < 1e-6,
                "offset {offset_ns}, delay {one_way_ns}: {d:?}"
            );
            assert!((d.ack_trip_ms - one_way_ns as f64 / 1e6).abs() < 1e-6);
            assert!(
                d.method.contains("no cross-host clock comparison"),
                "{}",
                d.method
            );
            // Subtracting the two clocks' readings, as a shared clock would allow, is
            // wrong by the offset on two hosts.
            let naive = ms_between(t_stop, resumed_on_target_clock);
            if offset_ns != 0 {
                assert!((naive - 30.0).abs() > 20.0, "naive {naive}");
            }
        }
    }

    #[test]
    fn without_an_rtt_the_ack_trip_stays_in_and_the_method_says_so() {
        let d = SourceDowntime::measure(1_000_000, 41_000_000, None);
        assert_eq!(d.downtime_ms, 40.0);
        assert_eq!(d.ack_trip_ms, 0.0);
        assert!(d.method.contains("ack's trip included"), "{}", d.method);
        // An RTT larger than the whole interval (a clock step, a bogus sample) never makes
        // the downtime negative.
        let rtt = PathRtt {
            min_ms: 500.0,
            smoothed_ms: 500.0,
        };
        let d = SourceDowntime::measure(1_000_000, 41_000_000, Some(rtt));
        assert_eq!(d.downtime_ms, 0.0);
        assert_eq!(d.receive_ms(1.0, 1.0), 0.0);
        let d = SourceDowntime::measure(0, 50_000_000, None);
        assert_eq!(d.receive_ms(10.0, 15.0), 25.0);
    }

    #[test]
    fn a_loopback_connection_has_a_small_measured_rtt() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        // A few exchanges give the kernel RTT samples.
        for _ in 0..4 {
            c.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            s.write_all(b"pong").unwrap();
            c.read_exact(&mut b).unwrap();
        }
        let r = tcp_path_rtt(&c).expect("TCP_INFO on a connected socket");
        assert!(
            r.min_ms > 0.0 && r.min_ms <= r.smoothed_ms.max(r.min_ms),
            "{r:?}"
        );
        // Loopback: far below a second on any machine.
        assert!(r.min_ms < 1000.0, "{r:?}");
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
