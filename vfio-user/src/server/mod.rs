//! The server: one device in this process, reached by one client at a time over a UNIX
//! socket.
//!
//! ```text
//!  accept loop (serve) ── busy? ── close the newcomer at once (one client at a time)
//!        │
//!        └─ connection thread: recv (bounded, deadline once a message started)
//!              └─ Session::handle ──► DmaTable (checked maps) ──► the device, built on
//!                                     the first device request from the mapped memory
//!                                     (maps without a descriptor: DMA by message, remote.rs)
//!              └─ reply (error bit + errno, or the payload)
//! ```
//!
//! A message the server cannot frame (a size outside the cap, a peer that stops or leaves
//! mid-message) ends the connection; a message it can frame but not honour (unknown
//! command, wrong length, out-of-range offset, too many descriptors, a device error) gets
//! an error reply and the connection goes on. When the client leaves, its maps and its irq
//! eventfds are dropped and the device's state is kept for the next client ([`retain`]:
//! saved whole through the device's own migration interface, since the device model is
//! built on the client's memory and cannot outlive it, and loaded into the next client's
//! device).

mod dma;
mod feature;
mod remote;
mod retain;
mod session;

use std::fmt::Debug;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mdev_core::VfioDevice;
use slog::{debug, info, o, warn, Logger};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::GuestMemoryMmap;

use crate::clock::Hardware;
use crate::proto::{
    Caps, Header, MigrationCaps, FLAGS_ERROR, FLAGS_NO_REPLY, FLAGS_TYPE_REPLY, HEADER_SIZE,
};
use crate::wire::{self, WireError};

pub use session::Session;

/// A device as the server hosts it: the VFIO face and, for a simulated device, its engine
/// (advanced through the clock region).
#[derive(Debug)]
pub struct ServedDevice {
    /// The device.
    pub device: Box<dyn VfioDevice>,
    /// Its engine, if it has one the platform advances.
    pub hardware: Option<Box<dyn Hardware>>,
}

/// Builds the served device on the client's memory.
pub trait DeviceFactory: Send + Sync + Debug {
    /// Build a device whose DMA reaches `mem` (the client's DMA maps at their iovas).
    fn create(
        &self,
        mem: &GuestMemoryMmap<AtomicBitmap>,
        log: &Logger,
    ) -> Result<ServedDevice, String>;
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// What the server offers in `VERSION`.
    pub caps: Caps,
    /// Deadline for the rest of a message once it started, and for sending a reply.
    pub deadline: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            caps: Caps {
                max_msg_fds: 16,
                max_data_xfer_size: 1 << 20,
                pgsizes: dma::DMA_PAGE,
                max_dma_maps: 64,
                migration: Some(MigrationCaps {
                    pgsize: dma::DMA_PAGE,
                    max_bitmap_size: 1 << 20,
                }),
            },
            deadline: Duration::from_secs(5),
        }
    }
}

/// How long a new client waits for the slot of one that is leaving.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(1);

/// Slack above `max_data_xfer_size` for the fixed part of a data message.
const MSG_SLACK: usize = 4096;

/// How a connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the socket between messages.
    Closed,
    /// The connection was dropped because of this.
    Dropped(WireError),
}

/// A vfio-user server for one device.
#[derive(Debug, Clone)]
pub struct Server {
    factory: Arc<dyn DeviceFactory>,
    cfg: ServerConfig,
    /// The device state the last client left, for the next one (see [`retain`]).
    kept: Arc<Mutex<Option<retain::Retained>>>,
    log: Logger,
}

impl Server {
    /// A server that builds its device with `factory`.
    pub fn new(factory: Arc<dyn DeviceFactory>, cfg: ServerConfig, log: Logger) -> Self {
        Self {
            factory,
            cfg,
            kept: Arc::new(Mutex::new(None)),
            log,
        }
    }

    /// Accept clients on `listener` until `stop` is set (checked between accepts), one at
    /// a time: a client that connects while another is served waits up to
    /// [`RECONNECT_GRACE`] for the slot (a client that reconnects at once while the server
    /// still tears down the last session), and is closed at once after that.
    pub fn serve(&self, listener: UnixListener, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let slot = Arc::new((Mutex::new(false), Condvar::new()));
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    warn!(self.log, "accept failed"; "error" => %e);
                    continue;
                }
            };
            {
                let (busy, freed) = &*slot;
                let guard = busy.lock().unwrap_or_else(|p| p.into_inner());
                let (mut guard, _) = freed
                    .wait_timeout_while(guard, RECONNECT_GRACE, |b| *b)
                    .unwrap_or_else(|p| p.into_inner());
                if *guard {
                    warn!(
                        self.log,
                        "a second client was refused: one client at a time"
                    );
                    drop(stream);
                    continue;
                }
                *guard = true;
            }
            let me = self.clone();
            let slot = slot.clone();
            std::thread::spawn(move || {
                me.serve_connection(&stream);
                // Free the slot before the socket closes, so a client that reconnects as
                // soon as it sees the close is served.
                let (busy, freed) = &*slot;
                *busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
                freed.notify_all();
                drop(stream);
            });
        }
        Ok(())
    }

    /// Serve one client until it leaves or breaks the protocol.
    pub fn serve_connection(&self, sock: &UnixStream) -> SessionEnd {
        let log = self
            .log
            .new(o!("client" => format!("{:?}", sock.peer_addr().ok())));
        info!(log, "client connected");
        let mut session = Session::new(self.factory.clone(), self.cfg.caps.clone(), log.clone());
        let cap = HEADER_SIZE + self.cfg.caps.max_data_xfer_size as usize + MSG_SLACK;
        let max_fds = self.cfg.caps.max_msg_fds as usize;
        if let Err(e) = wire::arm(sock, self.cfg.deadline) {
            warn!(log, "connection dropped"; "why" => %e);
            return SessionEnd::Dropped(e);
        }
        session.keep(self.kept.lock().unwrap_or_else(|p| p.into_inner()).take());
        match sock.try_clone() {
            Ok(s) => session.attach_peer(remote::Peer {
                sock: s,
                deadline: self.cfg.deadline,
                cap,
                max_fds,
            }),
            Err(e) => warn!(log, "no DMA by message on this connection"; "why" => %e),
        }
        let end = loop {
            // Commands that came while the device waited for a DMA reply go first.
            let next = match session.take_deferred() {
                Some(m) => Ok(Some(m)),
                None => wire::recv(sock, true, self.cfg.deadline, cap, max_fds),
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => break SessionEnd::Closed,
                Err(e) => break SessionEnd::Dropped(e),
            };
            if msg.header.is_reply() {
                warn!(log, "unexpected reply from the client ignored"; "id" => msg.header.msg_id);
                continue;
            }
            let no_reply = msg.header.flags & FLAGS_NO_REPLY != 0;
            let h = msg.header;
            let result = session.handle(msg);
            let (flags, error, payload, fds) = match result {
                Ok(r) => (FLAGS_TYPE_REPLY, 0, r.payload, r.fds),
                Err((errno, why)) => {
                    if errno == libc::ENOMSG {
                        // Nothing to read in PRE_COPY for now: routine, not a fault.
                        debug!(log, "request refused"; "command" => h.command, "errno" => errno, "why" => why);
                    } else {
                        warn!(log, "request refused"; "command" => h.command, "errno" => errno, "why" => why);
                    }
                    (
                        FLAGS_TYPE_REPLY | FLAGS_ERROR,
                        errno as u32,
                        Vec::new(),
                        Vec::new(),
                    )
                }
            };
            if no_reply {
                continue;
            }
            let reply = Header {
                msg_id: h.msg_id,
                command: h.command,
                size: (HEADER_SIZE + payload.len()) as u32,
                flags,
                error,
            };
            let raw: Vec<_> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
            if let Err(e) = wire::send(sock, &reply, &[&payload], &raw, self.cfg.deadline) {
                break SessionEnd::Dropped(e);
            }
        };
        // The device's state outlives the client (the spec's "retained"); its maps and
        // eventfds do not.
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = session.park();
        match &end {
            SessionEnd::Closed => {
                let (messages, bytes) = session.dma_by_message();
                info!(log, "client disconnected"; "dma_maps" => session.dma_maps(),
                      "dma_messages" => messages, "dma_message_bytes" => bytes)
            }
            SessionEnd::Dropped(e) => warn!(log, "connection dropped"; "why" => %e),
        }
        end
    }
}
