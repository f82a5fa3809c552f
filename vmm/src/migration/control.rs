//! Control messages beside the stream: the target's hello, the source's decision, the
//! target's resume acknowledgement and its final result.
//!
//! Framing: `"VGPUCTRL"`, a u32 little-endian length (at most [`MAX_CONTROL`]), then a JSON
//! object. Control messages are small and rare, so readability wins over compactness.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
}

/// The source's answer to the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// The stream follows, driven with this protocol.
    Go {
        /// "region" or "v2".
        protocol: String,
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
}

/// Read the target's messages on a thread, so the source can keep its guest running while
/// it waits for one.
pub fn spawn_reader(mut r: std::net::TcpStream) -> std::sync::mpsc::Receiver<Result<FromTarget>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("migration-control".into())
        .spawn(move || loop {
            let m = recv::<_, FromTarget>(&mut r, "target's message");
            let stop = m.is_err();
            if tx.send(m).is_err() || stop {
                return;
            }
        });
    rx
}

/// Write one control message.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| MigrationError::Protocol {
        what: format!("cannot encode a control message: {e}"),
    })?;
    let mut frame = Vec::with_capacity(12 + body.len());
    frame.extend_from_slice(&CONTROL_MAGIC);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)
        .and_then(|_| w.flush())
        .map_err(|e| MigrationError::Peer {
            what: format!("cannot send a control message: {e}"),
        })
}

/// Read one control message of type `T`.
pub fn recv<R: Read, T: DeserializeOwned>(r: &mut R, what: &'static str) -> Result<T> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(|e| MigrationError::Peer {
        what: format!("connection lost while waiting for the {what}: {e}"),
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
    r.read_exact(&mut body).map_err(|e| MigrationError::Peer {
        what: format!("connection lost inside the {what}: {e}"),
    })?;
    serde_json::from_slice(&body).map_err(|e| MigrationError::Protocol {
        what: format!("the {what} is malformed: {e}"),
    })
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
}
