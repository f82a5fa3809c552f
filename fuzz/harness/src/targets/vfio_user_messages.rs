//! The vfio-user server's message parser and dispatcher (`vfio_user::proto::Header::parse`
//! and `vfio_user::server::Session::handle`), serving a `vgpu-64` built on the client's
//! DMA maps, as a device process serves whatever a client sends.
//!
//! Input: messages. An op byte with the top bit set takes 16 raw header bytes (parsed
//! against the server's size cap) and the payload the header claims; otherwise the op
//! picks a command and the next u16 is the payload length. `DMA_MAP` messages carry a
//! fresh 4 MiB memfd, `DEVICE_SET_IRQS` messages up to two eventfds, as over the socket.
//!
//! Invariants: no panic; every message is answered by a reply or a refusal with a
//! positive errno; no reply is larger than the negotiated transfer size plus the fixed
//! part of a message.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use slog::{o, Discard, Logger};
use vfio_user::proto::{Caps, Command, Header, Version, HEADER_SIZE};
use vfio_user::server::{DeviceFactory, ServedDevice, ServerConfig, Session};
use vfio_user::wire::Message;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::GuestMemoryMmap;

use crate::input::Output;
use crate::Input;

/// The largest whole message the server takes (its transfer size plus slack).
pub const CAP: usize = (1 << 20) + 4096;
/// Bytes of the memfd each `DMA_MAP` carries.
pub const MAP_SIZE: u64 = 4 << 20;

/// Commands the structured op picks from.
pub const COMMANDS: [Command; 16] = [
    Command::Version,
    Command::DmaMap,
    Command::DmaUnmap,
    Command::DeviceGetInfo,
    Command::DeviceGetRegionInfo,
    Command::DeviceGetRegionIoFds,
    Command::DeviceGetIrqInfo,
    Command::DeviceSetIrqs,
    Command::RegionRead,
    Command::RegionWrite,
    Command::DeviceReset,
    Command::RegionWriteMulti,
    Command::DeviceFeature,
    Command::MigDataRead,
    Command::MigDataWrite,
    Command::Invalid,
];

/// Builds a `vgpu-64` on the session's DMA maps.
#[derive(Debug)]
pub struct VgpuFactory;

impl DeviceFactory for VgpuFactory {
    fn create(
        &self,
        mem: &GuestMemoryMmap<AtomicBitmap>,
        _log: &Logger,
    ) -> Result<ServedDevice, String> {
        let dev = crate::device::fresh_on(mem.clone(), state_region::DEFAULT_WINDOW);
        Ok(ServedDevice {
            device: Box::new(dev),
            hardware: None,
        })
    }
}

fn memfd(size: u64) -> Option<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create takes a NUL-terminated name and flags, and returns a new fd or
    // -1; the fd is owned by the OwnedFd below and by nothing else.
    let fd = unsafe { libc::memfd_create(c"fuzz-dma".as_ptr(), flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: ftruncate on a descriptor we own, with a size that fits off_t.
    let rc = unsafe { libc::ftruncate(raw, size as i64) };
    // A client seals its maps against shrinking (the server refuses one that is not).
    // SAFETY: F_ADD_SEALS on a memfd we own, made with MFD_ALLOW_SEALING.
    let sealed = unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    (rc == 0 && sealed == 0).then_some(fd)
}

fn eventfd() -> Option<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    replay(data);
}

/// Handle every message of `data`; per message handled, the reply's length or the
/// refusal's errno.
pub fn replay(data: &[u8]) -> Vec<Result<usize, i32>> {
    let mut out = Vec::new();
    let mut i = Input::new(data);
    let caps = ServerConfig::default().caps;
    let max_xfer = caps.max_data_xfer_size as usize;
    let mut s = Session::new(Arc::new(VgpuFactory), caps, Logger::root(Discard, o!()));
    let mut id = 0u16;
    let mut steps = 0;
    while !i.is_empty() && steps < 128 {
        steps += 1;
        id = id.wrapping_add(1);
        let op = i.u8();
        let header = if op & 0x80 != 0 {
            let raw: [u8; HEADER_SIZE] = {
                let mut b = [0u8; HEADER_SIZE];
                let got = i.bytes(HEADER_SIZE);
                b[..got.len()].copy_from_slice(got);
                b
            };
            match Header::parse(&raw, CAP) {
                Ok(h) => h,
                Err(_) => continue,
            }
        } else {
            let len = usize::from(i.u16());
            Header {
                msg_id: id,
                command: COMMANDS[usize::from(op) % COMMANDS.len()] as u16,
                size: (HEADER_SIZE + len) as u32,
                flags: 0,
                error: 0,
            }
        };
        let payload = i.bytes(header.payload_len()).to_vec();
        let fds: Vec<OwnedFd> = match Command::from_u16(header.command) {
            Command::DmaMap => memfd(MAP_SIZE).into_iter().collect(),
            Command::DeviceSetIrqs => (0..op % 3).filter_map(|_| eventfd()).collect(),
            _ => Vec::new(),
        };
        let msg = Message {
            header,
            payload,
            fds,
            fds_truncated: false,
        };
        match s.handle(msg) {
            Ok(reply) => {
                let n = reply.payload.len();
                assert!(n <= max_xfer + 4096, "a {n}-byte reply");
                out.push(Ok(n));
            }
            Err((errno, _)) => {
                assert!(errno > 0, "a refusal without an errno");
                out.push(Err(errno));
            }
        }
    }
    out
}

fn message(o: &mut Output, cmd: Command, payload: &[u8]) {
    let sel = COMMANDS.iter().position(|c| *c == cmd).expect("a command") as u8;
    o.u8(sel).u16(payload.len() as u16).raw(payload);
}

/// A session as a client opens it: VERSION, DMA_MAP of the 4 MiB at address 0, device
/// info, region info of BAR0, a register read and write, a config read, reset.
pub fn seed() -> Vec<u8> {
    let mut o = Output::default();
    let v = Version {
        major: vfio_user::proto::VERSION_MAJOR,
        minor: 0,
        caps: Caps::default(),
    };
    message(&mut o, Command::Version, &v.encode());
    let mut map = Output::default();
    map.u32(32).u32(3).u64(0).u64(0).u64(MAP_SIZE);
    message(&mut o, Command::DmaMap, &map.bytes);
    message(&mut o, Command::DeviceGetInfo, &16u32.to_le_bytes());
    let mut ri = Output::default();
    ri.u32(32).u32(0).u32(0).raw(&[0; 20]);
    message(&mut o, Command::DeviceGetRegionInfo, &ri.bytes);
    let mut rd = Output::default();
    rd.u64(0).u32(0).u32(4);
    message(&mut o, Command::RegionRead, &rd.bytes);
    let mut wr = Output::default();
    wr.u64(0x104).u32(0).u32(4).u32(0);
    message(&mut o, Command::RegionWrite, &wr.bytes);
    let mut cfg = Output::default();
    cfg.u64(0).u32(7).u32(64);
    message(&mut o, Command::RegionRead, &cfg.bytes);
    message(&mut o, Command::DeviceReset, &[]);
    o.bytes
}
