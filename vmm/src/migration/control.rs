//! Control messages beside the stream: the target's hello, the source's decision, the
//! target's resume acknowledgement and its final result, and keep-alives both ways.
//!
//! Framing: `"VGPUCTRL"`, a u32 little-endian length (at most [`MAX_CONTROL`]), then a JSON
//! object. Control messages are small and rare, so readability wins over compactness.
//!
//! ```text
//!  source                                         target
//!    |  <------------------------------------ Hello (features: KEEPALIVE, ...)
//!    |  Start ---------------------------------->
//!    |  [data frames | KeepAlive]* ------------->   (transport: VGPUDATA frames)
//!    |  <------------ [Synced | KeepAlive]* , Ack , [KeepAlive]* , Outcome
//!    |  Summary -------------------------------->
//! ```
//!
//! Keep-alives: each side sends a [`KeepAlive`] when it has had nothing else to send for
//! [`KEEPALIVE_INTERVAL`] — the source's sender thread while its guest runs with the link
//! idle, the target's keep-alive thread all the time (it may be busy applying a round,
//! committing the device or running the workload). A side gives up on its peer once it has
//! heard nothing, not even a keep-alive, for its peer timeout (`--peer-timeout`, at least
//! [`MIN_PEER_TIMEOUT`]); every message and byte resets the clock.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::clock::{monotonic_ns, DeadlineReader, DeadlineWriter, Liveness};
use super::error::{MigrationError, Result};

/// Magic of a control message.
pub const CONTROL_MAGIC: [u8; 8] = *b"VGPUCTRL";
/// Largest control message.
pub const MAX_CONTROL: u32 = 1 << 20;

/// Features a target offers (bits of [`Hello::features`]).
pub mod features {
    /// Accepts the v1 region protocol.
    pub const PROTOCOL_REGION: u32 = 1 << 0;
    /// Accepts the v2 protocol.
    pub const PROTOCOL_V2: u32 = 1 << 1;
    /// Reports downtime breakdown with CLOCK_MONOTONIC timestamps.
    pub const MONOTONIC_ACK: u32 = 1 << 2;
    /// Sends keep-alives and reads the source's input as frames (transport's `VGPUDATA`
    /// and control messages, keep-alives among them).
    pub const KEEPALIVE: u32 = 1 << 3;
    /// Resumes only after the source's HANDOVER: PREPARED, HANDOVER, RESUMED (so the
    /// guest never runs on both sides).
    pub const HANDOVER: u32 = 1 << 4;
    /// Accepts guest RAM on extra connections ([`crate::migration::multifd`]), named by
    /// the hello's session.
    pub const MULTIFD: u32 = 1 << 5;
}

/// How long a side stays silent at most before it sends a [`KeepAlive`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);
/// The shortest peer timeout: five keep-alive intervals.
pub const MIN_PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// The peer timeout unless told otherwise.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A sign of life from a side that has nothing else to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {
    /// Counts the sender's keep-alives from 1.
    pub seq: u64,
}

/// The source's control messages that are not part of the handshake or the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromSource {
    /// The source is alive (sent while it has no stream bytes to send).
    KeepAlive(KeepAlive),
    /// The source hands the guest over: from here it will not run the guest again, and
    /// the target resumes it.
    Handover,
    /// The source gives up before the handover (its guest runs on there): the target
    /// discards what it received.
    Abort {
        /// Why.
        reason: String,
    },
}

/// Whether a control message's body is the source's keep-alive.
pub fn is_keepalive(body: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<FromSource>(body),
        Ok(FromSource::KeepAlive(_))
    )
}

/// The target's opening message: what it is and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// mdev type of the target's instance.
    pub mdev_type: String,
    /// Stream format version the target reads (major, minor).
    pub stream_version: (u16, u16),
    /// Device context format version the target's device reads (major, minor).
    pub context_version: (u16, u16),
    /// Feature bits ([`features`]).
    pub features: u32,
    /// This migration's number, which the source's RAM channels give back (0 from a
    /// target without [`features::MULTIFD`]).
    #[serde(default)]
    pub session: u64,
}

/// The source's answer to the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// The stream follows, driven with this protocol.
    Go {
        /// "region" or "v2".
        protocol: String,
        /// RAM channels the source opens after this message (0: guest RAM goes on the
        /// main stream).
        #[serde(default)]
        channels: u32,
    },
    /// The source refuses; nothing follows.
    Refuse {
        /// Why.
        reason: String,
    },
}

/// The target's answer once the stream ended: resumed, or rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Ack {
    /// The target verified and loaded the whole state (device committed, config replayed,
    /// vCPU restored) and resumes the guest on the source's HANDOVER.
    Prepared {
        /// Bytes received.
        bytes: u64,
    },
    /// The target runs the guest now.
    Resumed {
        /// CLOCK_MONOTONIC ns when the target's vCPU resumed.
        resumed_ns: u64,
        /// CLOCK_MONOTONIC ns when the switchover record arrived.
        switchover_seen_ns: u64,
        /// ms from switchover record to the end record (the residue on the wire).
        residue_ms: f64,
        /// ms for the device to validate and commit (RESUMING -> STOP).
        load_ms: f64,
        /// ms for config replay and map installation.
        config_ms: f64,
        /// ms for vCPU restore and device RUNNING.
        resume_ms: f64,
        /// Bytes received.
        bytes: u64,
    },
    /// The target rejected the stream and discarded everything.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// The target's result after running the workload to its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Frames rendered.
    pub frames: u64,
    /// Final frame checksum (hex).
    pub final_checksum: String,
    /// Whether checksum log and final RAM/graphics digests equal a run that never migrated.
    pub verified: bool,
    /// What differed, if anything.
    pub detail: String,
}

/// What the source tells the target once it acknowledged the resume: the figures only the
/// source knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Pre-copy rounds.
    pub rounds: usize,
    /// Migration start to target resume, ms.
    pub total_ms: f64,
    /// Source vCPU stop to target vCPU resume, ms.
    pub downtime_ms: f64,
    /// Bytes on the wire.
    pub bytes_total: u64,
    /// Where the downtime went (the source's `Breakdown`, as JSON).
    pub breakdown: serde_json::Value,
}

/// Everything the target sends after its hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromTarget {
    /// Everything before the stream's `SYNC { seq }` record is consumed.
    Synced {
        /// The record's sequence number.
        seq: u64,
    },
    /// The stream ended: resumed or rejected.
    Ack(Ack),
    /// The workload's end on the target.
    Outcome(Outcome),
    /// The target is alive (sent every [`KEEPALIVE_INTERVAL`] from its hello to its outcome).
    KeepAlive(KeepAlive),
}

/// The target's messages as the source sees them: read on a thread (so the source can keep
/// its guest running while it waits), each wait bounded by the peer timeout.
#[derive(Debug)]
pub struct TargetEvents {
    rx: Receiver<Result<FromTarget>>,
    live: Arc<Liveness>,
}

impl TargetEvents {
    /// Read the target's messages from `r` on a thread, under `live`'s deadline.
    pub fn spawn(mut r: DeadlineReader, live: Arc<Liveness>) -> Self {
        let (tx, rx) = channel();
        let _ = std::thread::Builder::new()
            .name("migration-control".into())
            .spawn(move || loop {
                let m = recv::<_, FromTarget>(&mut r, "target's message");
                let stop = m.is_err();
                if tx.send(m).is_err() || stop {
                    return;
                }
            });
        Self { rx, live }
    }

    /// The deadline these messages keep (set its phase as the migration moves on).
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.live
    }

    fn closed(&self) -> MigrationError {
        MigrationError::Peer {
            what: format!(
                "the target closed the connection during {}",
                self.live.phase()
            ),
        }
    }

    /// The next message if one came, `None` if none yet; an error if the target closed the
    /// connection, failed, or stayed silent for the peer timeout since `since_ns`.
    pub fn poll(&self, since_ns: u64) -> Result<Option<FromTarget>> {
        match self.rx.try_recv() {
            Ok(m) => m.map(Some),
            Err(TryRecvError::Empty) => match self.live.expired(since_ns, "answering") {
                Some(e) => Err(e),
                None => Ok(None),
            },
            Err(TryRecvError::Disconnected) => Err(self.closed()),
        }
    }

    /// Wait for the next message other than a keep-alive, at most the peer timeout after
    /// the target's last sign of life.
    pub fn next(&self) -> Result<FromTarget> {
        let since = monotonic_ns();
        loop {
            match self.rx.recv_timeout(self.live.slice()) {
                Ok(Ok(FromTarget::KeepAlive(_))) => {}
                Ok(m) => return m,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(e) = self.live.expired(since, "answering") {
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.closed()),
            }
        }
    }
}

/// Control messages to the peer, from any thread (one message at a time), each write
/// bounded by the peer deadline.
#[derive(Debug, Clone)]
pub struct ControlWriter {
    inner: Arc<Mutex<DeadlineWriter>>,
}

impl ControlWriter {
    /// Write to `sock` under `live`'s deadline.
    pub fn new(sock: TcpStream, live: Arc<Liveness>) -> Result<Self> {
        super::clock::set_slices(&sock, &live)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(DeadlineWriter::new(sock, live))),
        })
    }

    /// Send one message.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<()> {
        let mut w = self.inner.lock().map_err(|_| MigrationError::Peer {
            what: "the control connection is unusable (a sender panicked)".into(),
        })?;
        send(&mut *w, msg)
    }

    /// Shut the connection down both ways: the peer sees the end at once, and every
    /// thread blocked on it wakes.
    pub fn shutdown(&self) {
        if let Ok(w) = self.inner.lock() {
            w.shutdown();
        }
    }
}

/// A thread that sends the target's keep-alives until dropped (or until a send fails).
#[derive(Debug)]
pub struct KeepAliveThread {
    _stop: Sender<()>,
}

impl KeepAliveThread {
    /// Send [`FromTarget::KeepAlive`] on `ctrl` every [`KEEPALIVE_INTERVAL`].
    pub fn spawn(ctrl: ControlWriter) -> Self {
        let (stop, stopped) = channel::<()>();
        let _ = std::thread::Builder::new()
            .name("migration-keepalive".into())
            .spawn(move || {
                let mut seq = 0;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(KEEPALIVE_INTERVAL)
                {
                    seq += 1;
                    if ctrl
                        .send(&FromTarget::KeepAlive(KeepAlive { seq }))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        Self { _stop: stop }
    }
}

/// One control message, framed.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(|e| MigrationError::Protocol {
        what: format!("cannot encode a control message: {e}"),
    })?;
    let mut frame = Vec::with_capacity(12 + body.len());
    frame.extend_from_slice(&CONTROL_MAGIC);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Write one control message.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let frame = encode(msg)?;
    w.write_all(&frame)
        .and_then(|_| w.flush())
        .map_err(|e| MigrationError::from_io(e, || "cannot send a control message".into()))
}

/// Decode a control message's body as `T` (the `what` it should be).
pub fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| MigrationError::Protocol {
        what: format!("the {what} is malformed: {e}"),
    })
}

/// Read one control message of type `T`.
pub fn recv<R: Read, T: DeserializeOwned>(r: &mut R, what: &'static str) -> Result<T> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(|e| {
        MigrationError::from_io(e, || {
            format!("connection lost while waiting for the {what}")
        })
    })?;
    if head[..8] != CONTROL_MAGIC {
        return Err(MigrationError::Protocol {
            what: format!("expected the {what}, got bytes {:02x?}", &head[..8]),
        });
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_CONTROL {
        return Err(MigrationError::Protocol {
            what: format!("the {what} is {len} bytes, over the {MAX_CONTROL}-byte cap"),
        });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(|e| MigrationError::from_io(e, || format!("connection lost inside the {what}")))?;
    decode(&body, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let h = Hello {
            mdev_type: "vgpu-64".into(),
            stream_version: (1, 0),
            context_version: (1, 0),
            features: 7,
            session: 99,
        };
        let mut buf = Vec::new();
        send(&mut buf, &h).unwrap();
        let back: Hello = recv(&mut &buf[..], "hello").unwrap();
        assert_eq!(back, h);
        let mut bad = buf.clone();
        bad[0] = b'X';
        let e = recv::<_, Hello>(&mut &bad[..], "hello").unwrap_err();
        assert!(e.to_string().contains("expected the hello"), "{e}");
        let e = recv::<_, Hello>(&mut &buf[..buf.len() - 1], "hello").unwrap_err();
        assert!(e.to_string().contains("connection lost"), "{e}");
        let mut huge = buf.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(recv::<_, Hello>(&mut &huge[..], "hello").is_err());
    }

    #[test]
    fn keepalives_are_their_own_messages() {
        let ka = encode(&FromSource::KeepAlive(KeepAlive { seq: 3 })).unwrap();
        assert!(is_keepalive(&ka[12..]));
        let start = encode(&Start::Go {
            protocol: "v2".into(),
            channels: 0,
        })
        .unwrap();
        assert!(!is_keepalive(&start[12..]));
        // The target's messages kept their names; the keep-alive is a new one.
        let synced = serde_json::to_string(&FromTarget::Synced { seq: 1 }).unwrap();
        assert_eq!(synced, r#"{"Synced":{"seq":1}}"#);
        let ka = serde_json::to_string(&FromTarget::KeepAlive(KeepAlive { seq: 2 })).unwrap();
        assert_eq!(ka, r#"{"KeepAlive":{"seq":2}}"#);
    }
}
