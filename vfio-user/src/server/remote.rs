//! DMA by message: the device reaches client memory mapped without a descriptor through
//! `DMA_READ`/`DMA_WRITE` requests the server sends to the client on the same socket.
//!
//! ```text
//!  client ── REGION_WRITE (clock ADVANCE) ──► server: device runs ──► ShadowGtt
//!     ▲                                                               │ Translation::Remote
//!     │  waits for its reply, serving                                 ▼
//!     └── DMA_READ/DMA_WRITE requests ◄──────────── SocketPort (one per max_data_xfer_size)
//! ```
//!
//! The device runs only while the server handles one of the client's requests, so the
//! client is waiting on the socket: the port sends its request and reads the client's
//! reply, with the server's deadline. A command that arrives meanwhile (the client posted
//! a no-reply write and went on with its next request before it saw the port's request) is
//! kept, in order, for the server's loop to handle next ([`SocketPort::take_deferred`]).
//! A stale reply (to a request that timed out) is skipped by its message id.
//!
//! Every failure is a DMA fault for the device, never a panic or a hang: an error reply, a
//! reply of the wrong size, address or count, or garbage faults that one access; a client
//! that does not answer within the deadline, or leaves, makes the port dead, so every later
//! access faults at once instead of waiting again.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shadow_pt::{RemoteDma, RemoteDmaError, RemoteMemory};
use slog::{debug, warn, Logger};

use crate::proto::{Command, Header, Reader, Writer, FLAGS_ERROR, FLAGS_TYPE_COMMAND, HEADER_SIZE};
use crate::wire::{self, Message, WireError};

/// Most client commands kept while the port waits for one reply.
const MAX_DEFERRED: usize = 64;

/// The socket to the client, as a session needs it to build a port.
#[derive(Debug)]
pub(crate) struct Peer {
    /// A second handle on the connection's socket.
    pub(crate) sock: UnixStream,
    /// The server's deadline.
    pub(crate) deadline: Duration,
    /// Largest whole message accepted.
    pub(crate) cap: usize,
    /// Most descriptors accepted with a message.
    pub(crate) max_fds: usize,
}

#[derive(Debug)]
struct PortState {
    sock: UnixStream,
    next_id: u16,
    dead: Option<String>,
    deferred: VecDeque<Message>,
    /// Requests answered well, and their data bytes.
    served: (u64, u64),
}

/// The server's [`RemoteDma`]: `DMA_READ`/`DMA_WRITE` to the client (see the module docs).
#[derive(Debug)]
pub(crate) struct SocketPort {
    state: Mutex<PortState>,
    deadline: Duration,
    max_xfer: usize,
    cap: usize,
    max_fds: usize,
    log: Logger,
}

impl SocketPort {
    /// A port on `peer`, sending at most `max_xfer` bytes of data per message.
    pub(crate) fn new(peer: Peer, max_xfer: usize, log: Logger) -> Self {
        Self {
            state: Mutex::new(PortState {
                sock: peer.sock,
                next_id: 0,
                dead: None,
                deferred: VecDeque::new(),
                served: (0, 0),
            }),
            deadline: peer.deadline,
            max_xfer: max_xfer.max(1),
            cap: peer.cap,
            max_fds: peer.max_fds,
            log,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PortState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests the client answered well so far, and their data bytes.
    pub(crate) fn served(&self) -> (u64, u64) {
        self.lock().served
    }

    /// The oldest client command that arrived while the port waited for a reply.
    pub(crate) fn take_deferred(&self) -> Option<Message> {
        self.lock().deferred.pop_front()
    }

    /// One request and its reply. `data` goes out (a write); `into` is filled (a read).
    fn exchange(
        &self,
        st: &mut PortState,
        cmd: Command,
        gpa: u64,
        data: &[u8],
        into: &mut [u8],
    ) -> Result<(), String> {
        if let Some(why) = &st.dead {
            return Err(format!("the client is unreachable ({why})"));
        }
        st.next_id = st.next_id.wrapping_add(1);
        let id = st.next_id;
        let count = data.len().max(into.len());
        let mut w = Writer::with_capacity(16);
        w.u64(gpa).u64(count as u64);
        let h = Header {
            msg_id: id,
            command: cmd as u16,
            size: (HEADER_SIZE + 16 + data.len()) as u32,
            flags: FLAGS_TYPE_COMMAND,
            error: 0,
        };
        if let Err(e) = wire::send(&st.sock, &h, &[&w.0, data], &[], self.deadline) {
            return Err(self.kill(st, e.to_string()));
        }
        let started = Instant::now();
        let reply = loop {
            // A client that keeps sending other messages cannot hold the device past the
            // deadline either.
            if started.elapsed() > self.deadline {
                let e = WireError::Timeout {
                    deadline: self.deadline,
                };
                return Err(self.kill(st, e.to_string()));
            }
            let m = match wire::recv(&st.sock, false, self.deadline, self.cap, self.max_fds) {
                Ok(Some(m)) => m,
                Ok(None) => return Err(self.kill(st, "the client closed the connection".into())),
                Err(e) => return Err(self.kill(st, e.to_string())),
            };
            if !m.header.is_reply() {
                if st.deferred.len() >= MAX_DEFERRED {
                    let why = format!("{MAX_DEFERRED} commands arrived instead of the reply");
                    return Err(self.kill(st, why));
                }
                st.deferred.push_back(m);
                continue;
            }
            if m.header.msg_id == id {
                break m;
            }
            debug!(self.log, "stale reply skipped"; "id" => m.header.msg_id, "want" => id);
        };
        check_reply(&reply, cmd, gpa, count, into)?;
        st.served.0 += 1;
        st.served.1 += count as u64;
        Ok(())
    }

    fn kill(&self, st: &mut PortState, why: String) -> String {
        warn!(self.log, "client unreachable for DMA: every later DMA by message faults"; "why" => &why);
        st.dead = Some(why.clone());
        why
    }

    /// Transfer `len` bytes at `gpa` in messages of at most `max_xfer` bytes.
    fn transfer(
        &self,
        cmd: Command,
        gpa: u64,
        len: usize,
        mut step: impl FnMut(&Self, &mut PortState, u64, std::ops::Range<usize>) -> Result<(), String>,
    ) -> Result<(), RemoteDmaError> {
        let mut st = self.lock();
        let mut done = 0usize;
        while done < len {
            let n = self.max_xfer.min(len - done);
            let at = gpa.wrapping_add(done as u64);
            step(self, &mut st, at, done..done + n).map_err(|why| RemoteDmaError {
                gpa: at,
                len: n,
                why: format!("{cmd:?}: {why}"),
            })?;
            done += n;
        }
        Ok(())
    }
}

/// Check a reply to `cmd` of `count` bytes at `gpa`; a read's data goes to `into`.
fn check_reply(
    m: &Message,
    cmd: Command,
    gpa: u64,
    count: usize,
    into: &mut [u8],
) -> Result<(), String> {
    if m.header.command != cmd as u16 {
        return Err(format!("the reply is for command {}", m.header.command));
    }
    if m.header.flags & FLAGS_ERROR != 0 {
        return Err(format!(
            "the client refused: {}",
            std::io::Error::from_raw_os_error(m.header.error as i32)
        ));
    }
    let mut r = Reader::new(&m.payload, "DMA reply");
    let addr = r.u64().map_err(|e| e.to_string())?;
    // DMA_WRITE's reply count is 4 bytes in the spec's table and 8 in libvfio-user's
    // replies: the low 4 bytes are the same either way.
    let got = u64::from(r.u32().map_err(|e| e.to_string())?);
    if addr != gpa || got != count as u64 {
        return Err(format!(
            "the reply is for {got} bytes at {addr:#x}, not {count} at {gpa:#x}"
        ));
    }
    if cmd == Command::DmaRead {
        let data = m.payload.get(16..).unwrap_or(&[]);
        if m.payload.get(12..16) != Some(&[0; 4]) || data.len() != count {
            return Err(format!(
                "the reply carries {} data bytes for a read of {count}",
                data.len()
            ));
        }
        into.copy_from_slice(data);
    }
    Ok(())
}

impl RemoteDma for SocketPort {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError> {
        let len = buf.len();
        self.transfer(Command::DmaRead, gpa, len, |me, st, at, r| {
            me.exchange(st, Command::DmaRead, at, &[], &mut buf[r])
        })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), RemoteDmaError> {
        self.transfer(Command::DmaWrite, gpa, buf.len(), |me, st, at, r| {
            me.exchange(st, Command::DmaWrite, at, &buf[r], &mut [])
        })
    }
}

/// A port for a session with no socket (a session driven by hand): every access faults.
#[derive(Debug)]
struct NoPeer;

impl RemoteDma for NoPeer {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError> {
        Err(RemoteDmaError {
            gpa,
            len: buf.len(),
            why: "no socket to the client".into(),
        })
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), RemoteDmaError> {
        Err(RemoteDmaError {
            gpa,
            len: buf.len(),
            why: "no socket to the client".into(),
        })
    }
}

/// The remote memory of `ranges` (the maps without a descriptor), and the socket port
/// serving it if there is a `peer`; nothing when there are no such maps.
pub(crate) fn remote_memory(
    ranges: Vec<(u64, u64)>,
    peer: Option<&Peer>,
    max_xfer: usize,
    log: &Logger,
) -> Result<(Option<RemoteMemory>, Option<Arc<SocketPort>>), String> {
    if ranges.is_empty() {
        return Ok((None, None));
    }
    let Some(peer) = peer else {
        return Ok((Some(RemoteMemory::new(ranges, Arc::new(NoPeer))), None));
    };
    let sock = peer
        .sock
        .try_clone()
        .map_err(|e| format!("cannot duplicate the client's socket: {e}"))?;
    let port = Arc::new(SocketPort::new(
        Peer { sock, ..*peer },
        max_xfer,
        log.clone(),
    ));
    Ok((Some(RemoteMemory::new(ranges, port.clone())), Some(port)))
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
