//! The client's connection: one request at a time, with a deadline on every wait, and the
//! device's interrupts taken from their eventfds after each reply.
//!
//! A simulated device signals only while it handles a request (a register write, an engine
//! step through the clock region); the server writes the eventfd before it sends the
//! reply, so draining the eventfds right after the reply delivers every interrupt at the
//! same point of the guest's execution as an in-process device would: runs stay
//! deterministic.
//!
//! While it waits for a reply, the client answers the server's `DMA_READ`/`DMA_WRITE`
//! requests (the device running inside the request reaches guest RAM mapped without a
//! descriptor) from guest RAM, bounds-checked against its maps ([`super::dma`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mdev_core::IrqSink;
use slog::{warn, Logger};
use snafu::Snafu;

use crate::proto::{
    Caps, Command, Header, FLAGS_ERROR, FLAGS_NO_REPLY, FLAGS_TYPE_COMMAND, HEADER_SIZE,
};
use crate::wire::{self, WireError};

use vm_memory::GuestMemoryMmap;

use super::dma::DmaServe;

/// Errors of the client.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum ClientError {
    /// The connection could not be opened.
    #[snafu(display("cannot connect to the device process at {path}: {source}"))]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The socket failed; the device process is gone or hung.
    #[snafu(display("device process: {source}"))]
    Wire {
        /// Cause.
        source: WireError,
    },
    /// The device process went away earlier.
    #[snafu(display("device process unreachable ({why})"))]
    Dead {
        /// The first failure.
        why: String,
    },
    /// The server refused a request.
    #[snafu(display("device process refused {command:?}: {}", std::io::Error::from_raw_os_error(*errno as i32)))]
    Refused {
        /// The command.
        command: Command,
        /// errno from the reply.
        errno: u32,
    },
    /// The reply is malformed.
    #[snafu(display("device process sent a bad reply to {command:?}: {what}"))]
    BadReply {
        /// The command.
        command: Command,
        /// What is wrong.
        what: String,
    },
    /// Guest memory is not backed by a file the server could map.
    #[snafu(display(
        "guest RAM at {gpa:#x} is not shared memory (a memfd); the device process cannot map it"
    ))]
    NotShared {
        /// Start of the region.
        gpa: u64,
    },
    /// Something else in the setup.
    #[snafu(display("{what}"))]
    Setup {
        /// What failed.
        what: String,
    },
}

impl ClientError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ClientError::Refused { errno, .. } => Some(*errno as i32),
            _ => None,
        }
    }
}

/// `Result` with a [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Eventfds of one `SET_IRQS`, and where their signals go.
#[derive(Debug)]
struct IrqWire {
    index: u32,
    start: u32,
    fds: Vec<OwnedFd>,
    sink: Arc<dyn IrqSink>,
}

/// The connection (behind a lock, shared by the device, its migration and its clock).
#[derive(Debug)]
pub struct Conn {
    sock: UnixStream,
    next_id: u16,
    pub(crate) caps: Caps,
    deadline: Duration,
    irqs: Vec<IrqWire>,
    /// Guest RAM for the server's DMA requests.
    dma: Option<DmaServe>,
    /// DMA requests served so far.
    dma_served: u64,
    dead: Option<String>,
    /// Requests sent so far: a snapshot of device state taken at one value is current
    /// only while no other request went out.
    generation: u64,
    pub(crate) log: Logger,
}

/// A shared connection.
pub type SharedConn = Arc<Mutex<Conn>>;

/// Lock a connection (a poisoned lock is still usable: the state is only the socket).
pub fn lock(c: &SharedConn) -> MutexGuard<'_, Conn> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// A connection on `sock` (VERSION not yet sent).
    pub fn new(sock: UnixStream, deadline: Duration, log: Logger) -> Self {
        Self {
            sock,
            next_id: 0,
            caps: Caps::default(),
            deadline,
            irqs: Vec::new(),
            dma: None,
            dma_served: 0,
            dead: None,
            generation: 0,
            log,
        }
    }

    /// Whether the device process is still reachable (no failure seen so far).
    pub fn alive(&self) -> Result<()> {
        match &self.dead {
            Some(why) => Err(ClientError::Dead { why: why.clone() }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: WireError) -> ClientError {
        warn!(self.log, "device process lost"; "why" => %e);
        self.dead = Some(e.to_string());
        ClientError::Wire { source: e }
    }

    /// Requests sent so far (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn header(&mut self, cmd: Command, len: usize, flags: u32) -> Header {
        self.next_id = self.next_id.wrapping_add(1);
        self.generation += 1;
        Header {
            msg_id: self.next_id,
            command: cmd as u16,
            size: (HEADER_SIZE + len) as u32,
            flags: FLAGS_TYPE_COMMAND | flags,
            error: 0,
        }
    }

    /// Send a command that wants no reply.
    pub fn post(&mut self, cmd: Command, parts: &[&[u8]]) -> Result<()> {
        self.alive()?;
        let len = parts.iter().map(|p| p.len()).sum();
        let h = self.header(cmd, len, FLAGS_NO_REPLY);
        wire::send(&self.sock, &h, parts, &[], self.deadline).map_err(|e| self.fail(e))
    }

    /// Send a command with `fds` and wait (with the deadline) for its reply payload.
    pub fn request(&mut self, cmd: Command, parts: &[&[u8]], fds: &[RawFd]) -> Result<Vec<u8>> {
        self.alive()?;
        let len = parts.iter().map(|p| p.len()).sum();
        let h = self.header(cmd, len, 0);
        wire::send(&self.sock, &h, parts, fds, self.deadline).map_err(|e| self.fail(e))?;
        let cap = HEADER_SIZE + self.caps.max_data_xfer_size as usize + 4096;
        let mut started = std::time::Instant::now();
        let reply = loop {
            // A server that keeps sending other messages cannot hold the client past the
            // deadline either (a DMA request it answers is progress: the device runs).
            if started.elapsed() > self.deadline {
                return Err(self.fail(WireError::Timeout {
                    deadline: self.deadline,
                }));
            }
            let m = match wire::recv(&self.sock, false, self.deadline, cap, 4) {
                Ok(Some(m)) => m,
                Ok(None) => return Err(self.fail(WireError::Closed { mid_message: false })),
                Err(e) => return Err(self.fail(e)),
            };
            if m.header.is_reply() && m.header.msg_id == h.msg_id {
                break m;
            }
            if !m.header.is_reply()
                && matches!(
                    Command::from_u16(m.header.command),
                    Command::DmaRead | Command::DmaWrite
                )
            {
                self.serve_dma(&m)?;
                started = std::time::Instant::now();
                continue;
            }
            warn!(self.log, "unexpected message from the device process ignored";
                  "id" => m.header.msg_id, "command" => m.header.command);
        };
        self.drain_irqs();
        if reply.header.command != h.command {
            return Err(ClientError::BadReply {
                command: cmd,
                what: format!("reply is for command {}", reply.header.command),
            });
        }
        if reply.header.flags & FLAGS_ERROR != 0 {
            return Err(ClientError::Refused {
                command: cmd,
                errno: reply.header.error,
            });
        }
        Ok(reply.payload)
    }

    /// Answer one of the server's DMA requests (an error reply without guest RAM).
    fn serve_dma(&mut self, m: &wire::Message) -> Result<()> {
        let max = self.max_xfer();
        let (h, payload) = match &self.dma {
            Some(d) => d.answer(m, max),
            None => DmaServe::new(GuestMemoryMmap::new(), Vec::new()).answer(m, max),
        };
        if h.flags & FLAGS_ERROR != 0 {
            warn!(self.log, "DMA request from the device process refused";
                  "command" => m.header.command, "errno" => h.error);
        }
        self.dma_served += 1;
        if m.header.flags & FLAGS_NO_REPLY != 0 {
            return Ok(());
        }
        wire::send(&self.sock, &h, &[&payload], &[], self.deadline).map_err(|e| self.fail(e))
    }

    /// Serve the server's DMA requests from `dma`.
    pub(crate) fn set_dma(&mut self, dma: DmaServe) {
        self.dma = Some(dma);
    }

    /// DMA requests from the server answered so far.
    pub fn dma_served(&self) -> u64 {
        self.dma_served
    }

    /// The negotiated largest data transfer.
    pub fn max_xfer(&self) -> usize {
        self.caps.max_data_xfer_size as usize
    }

    /// Remember the eventfds of a `SET_IRQS` (replacing earlier ones on the same vectors).
    pub(crate) fn wire_irqs(
        &mut self,
        index: u32,
        start: u32,
        fds: Vec<OwnedFd>,
        sink: Arc<dyn IrqSink>,
    ) {
        let end = start + fds.len() as u32;
        self.irqs.retain(|w| {
            w.index != index || w.start + w.fds.len() as u32 <= start || end <= w.start
        });
        self.irqs.push(IrqWire {
            index,
            start,
            fds,
            sink,
        });
    }

    /// Forget the eventfds of vectors `start..start+count` of `index`.
    pub(crate) fn unwire_irqs(&mut self, index: u32, start: u32, count: u32) {
        let end = start.saturating_add(count);
        self.irqs.retain(|w| {
            w.index != index
                || (count != 0 && (w.start + w.fds.len() as u32 <= start || end <= w.start))
        });
    }

    /// Deliver every signal waiting on the eventfds.
    pub fn drain_irqs(&self) {
        for w in &self.irqs {
            for (i, fd) in w.fds.iter().enumerate() {
                let mut v = [0u8; 8];
                // SAFETY: reads 8 bytes into a live buffer from an eventfd this connection
                // owns; the eventfd is non-blocking, so an empty counter returns EAGAIN.
                let n = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
                if n == 8 {
                    let count = u64::from_le_bytes(v).min(64);
                    for _ in 0..count {
                        w.sink.signal(w.index, w.start + i as u32);
                    }
                }
            }
        }
    }
}

/// A new non-blocking eventfd.
pub(crate) fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(ClientError::Setup {
            what: format!(
                "cannot create an eventfd: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
