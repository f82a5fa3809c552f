//! One client's session: negotiation, DMA maps, and every command on the device.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use mdev_core::{DataStream, DeviceError, IrqSink, RegionInfo};
use slog::{debug, info, Logger};
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_info_cap_header, vfio_irq_info, vfio_region_info,
    vfio_region_info_cap_type, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_FLAG_CAPS,
};

use super::dma::DmaTable;
use super::remote::{self, Peer, SocketPort};
use super::retain::Retained;
use super::{DeviceFactory, ServedDevice};
use crate::clock::{self, ClockRegs};
use crate::proto::{Caps, Command, Reader, Version, Writer, VERSION_MAJOR, VERSION_MINOR};
use crate::wire::Message;

/// A refusal: errno and why (for the server's log; the reply carries only the errno).
pub(crate) type Refusal = (i32, String);

/// What a command answers.
#[derive(Debug, Default)]
pub struct Reply {
    /// Reply payload.
    pub payload: Vec<u8>,
    /// Descriptors to attach.
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    pub(crate) fn data(payload: Vec<u8>) -> Result<Self, Refusal> {
        Ok(Self {
            payload,
            fds: Vec::new(),
        })
    }
}

pub(crate) fn inval(why: impl Into<String>) -> Refusal {
    (libc::EINVAL, why.into())
}

pub(crate) fn short(e: crate::proto::ProtoError) -> Refusal {
    inval(e.to_string())
}

/// The errno a device error stands for (as a VFIO driver would return it).
pub(crate) fn device_errno(e: &DeviceError) -> Refusal {
    let errno = match e {
        DeviceError::NotPermitted { .. } => libc::EPERM,
        DeviceError::InvalidState { .. } => libc::EBUSY,
        _ => libc::EINVAL,
    };
    (errno, e.to_string())
}

/// Signals a device vector on the client's eventfd.
#[derive(Debug)]
struct EventFdSink {
    start: u32,
    fds: Vec<OwnedFd>,
}

impl IrqSink for EventFdSink {
    fn signal(&self, _index: u32, vector: u32) {
        let Some(fd) = vector
            .checked_sub(self.start)
            .and_then(|i| self.fds.get(i as usize))
        else {
            return;
        };
        let one = 1u64.to_le_bytes();
        // SAFETY: writes 8 bytes from a live buffer to a descriptor this sink owns; the
        // descriptor is non-blocking, so a full counter (or a client's odd fd) cannot stall
        // the device, and a failed write is a lost edge the client can recover from.
        unsafe {
            libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
    }
}

/// One client's session with the device.
#[derive(Debug)]
pub struct Session {
    factory: Arc<dyn DeviceFactory>,
    ours: Caps,
    caps: Option<Caps>,
    pub(super) dma: DmaTable,
    pub(super) dev: Option<ServedDevice>,
    clock: ClockRegs,
    /// The data session the last state change opened (vfio-user has no data_fd: the
    /// MIG_DATA_* messages go to the open session).
    pub(super) stream: Option<DataStream>,
    /// The client's socket, for DMA by message (none for a session driven by hand).
    peer: Option<Peer>,
    /// The port of DMA by message, once the device is built on maps without descriptors.
    port: Option<Arc<SocketPort>>,
    /// The device state the last client left (loaded into this client's device at the
    /// first request that can see it; see [`super::retain`]).
    pub(super) kept: Option<Retained>,
    pub(super) log: Logger,
}

/// The refusal of a data message without an open session.
pub(crate) fn no_session() -> Refusal {
    inval("no migration data session is open")
}

impl Session {
    /// A session offering `ours` in `VERSION`.
    pub fn new(factory: Arc<dyn DeviceFactory>, ours: Caps, log: Logger) -> Self {
        Self {
            factory,
            dma: DmaTable::new(ours.max_dma_maps as usize),
            ours,
            caps: None,
            dev: None,
            clock: ClockRegs::default(),
            stream: None,
            peer: None,
            port: None,
            kept: None,
            log,
        }
    }

    /// Reach the client on `peer` for DMA by message (maps without descriptors).
    pub(super) fn attach_peer(&mut self, peer: Peer) {
        self.peer = Some(peer);
    }

    /// DMA requests by message the client answered, and their data bytes.
    pub(super) fn dma_by_message(&self) -> (u64, u64) {
        self.port.as_ref().map_or((0, 0), |p| p.served())
    }

    /// A client command that arrived while the device waited for a DMA reply: the next
    /// one to handle.
    pub(super) fn take_deferred(&self) -> Option<Message> {
        self.port.as_ref().and_then(|p| p.take_deferred())
    }

    /// Number of DMA maps.
    pub fn dma_maps(&self) -> usize {
        self.dma.len()
    }

    /// The DMA maps' ranges (iova, size).
    pub(super) fn dma_ranges(&self) -> Vec<(u64, u64)> {
        self.dma.ranges()
    }

    /// The negotiated largest data transfer.
    pub(super) fn max_xfer(&self) -> usize {
        self.caps
            .as_ref()
            .map_or(0, |c| c.max_data_xfer_size as usize)
    }

    /// The device, built on the mapped memory at the first request that needs it.
    pub(super) fn dev(&mut self) -> Result<&mut ServedDevice, Refusal> {
        if self.dev.is_none() {
            let mem = self.dma.guest_mem().map_err(|e| (libc::ENOMEM, e))?;
            let ranges = self.dma.remote_ranges();
            let by_message = ranges.len();
            let (remote, port) =
                remote::remote_memory(ranges, self.peer.as_ref(), self.max_xfer(), &self.log)
                    .map_err(|e| (libc::ENOMEM, e))?;
            // The factory chain passes only mapped memory; the rest is installed for the
            // build (shadow_pt::remote).
            let d = shadow_pt::remote::install(remote, || self.factory.create(&mem, &self.log))
                .map_err(|e| (libc::ENODEV, e))?;
            info!(self.log, "device created"; "dma_maps" => self.dma.len(), "by_message" => by_message);
            self.port = port;
            self.dev = Some(d);
        }
        self.dev
            .as_mut()
            .ok_or_else(|| (libc::ENODEV, "no device".into()))
    }

    /// Handle one command.
    pub fn handle(&mut self, msg: Message) -> Result<Reply, Refusal> {
        let cmd = Command::from_u16(msg.header.command);
        debug!(self.log, "command"; "cmd" => ?cmd, "len" => msg.payload.len(), "fds" => msg.fds.len());
        if msg.fds_truncated {
            return Err(inval(format!(
                "more descriptors than max_msg_fds ({})",
                self.ours.max_msg_fds
            )));
        }
        if !matches!(cmd, Command::DmaMap | Command::DeviceSetIrqs) && !msg.fds.is_empty() {
            return Err(inval(format!("{cmd:?} takes no file descriptors")));
        }
        if cmd != Command::Version && self.caps.is_none() {
            return Err(inval("the first message must be VERSION"));
        }
        // The last client's device state goes into the device at the first request that
        // can see it; a client that resets the device first (a VMM starting a new VM)
        // never pays for the load.
        match cmd {
            Command::DeviceReset => self.kept = None,
            Command::Version
            | Command::DmaMap
            | Command::DmaUnmap
            | Command::DeviceGetInfo
            | Command::DeviceGetRegionInfo
            | Command::DeviceGetIrqInfo => {}
            _ => self.restore_kept()?,
        }
        let p = &msg.payload[..];
        match cmd {
            Command::Version => self.version(p),
            Command::DmaMap => self.dma_map(p, msg.fds),
            Command::DmaUnmap => self.dma_unmap(p),
            Command::DeviceGetInfo => self.get_info(p),
            Command::DeviceGetRegionInfo => self.region_info(p),
            Command::DeviceGetIrqInfo => self.irq_info(p),
            Command::DeviceSetIrqs => self.set_irqs(p, msg.fds),
            Command::RegionRead => self.region_read(p),
            Command::RegionWrite => self.region_write(p),
            Command::DeviceReset => {
                self.dev()?.device.reset().map_err(|e| device_errno(&e))?;
                self.stream = None;
                Reply::data(Vec::new())
            }
            Command::DeviceFeature => self.feature(p),
            Command::MigDataRead => self.mig_read(p),
            Command::MigDataWrite => self.mig_write(p),
            other => Err((
                libc::ENOTSUP,
                format!(
                    "command {other:?} ({}) is not supported",
                    msg.header.command
                ),
            )),
        }
    }

    fn version(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        if self.caps.is_some() {
            return Err(inval("VERSION was already negotiated"));
        }
        let v = Version::decode(p).map_err(short)?;
        if v.major != VERSION_MAJOR {
            return Err((
                libc::ENOTSUP,
                format!(
                    "protocol major {} (this server speaks {VERSION_MAJOR})",
                    v.major
                ),
            ));
        }
        let mut caps = self.ours.clone();
        // The reply's capabilities are a subset of those proposed.
        if v.caps.migration.is_none() {
            caps.migration = None;
        }
        caps.max_data_xfer_size = caps
            .max_data_xfer_size
            .min(v.caps.max_data_xfer_size)
            .max(4096);
        if let Some(m) = caps.migration.as_mut() {
            m.max_bitmap_size = m.max_bitmap_size.min(u64::from(caps.max_data_xfer_size));
        }
        let reply = Version {
            major: VERSION_MAJOR,
            minor: v.minor.min(VERSION_MINOR),
            caps: caps.clone(),
        };
        info!(self.log, "version negotiated"; "max_data_xfer_size" => caps.max_data_xfer_size,
              "client_max_msg_fds" => v.caps.max_msg_fds);
        self.caps = Some(caps);
        Reply::data(reply.encode())
    }

    fn get_info(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let argsz = Reader::new(p, "DEVICE_GET_INFO").u32().map_err(short)?;
        // vfio-user's reply is the first 16 bytes of `vfio_device_info` (no caps).
        if argsz < 16 {
            return Err(inval(format!("argsz {argsz} is below the 16-byte reply")));
        }
        let info = self.device_info()?;
        let mut w = Writer::default();
        w.u32(16)
            .u32(info.flags)
            .u32(info.num_regions)
            .u32(info.num_irqs);
        Reply::data(w.0)
    }

    /// The device's info, with the clock region counted when the device has an engine.
    fn device_info(&mut self) -> Result<vfio_device_info, Refusal> {
        let d = self.dev()?;
        let mut info = d.device.device_info();
        if d.hardware.is_some() {
            info.num_regions += 1;
        }
        Ok(info)
    }

    /// Index of the clock region, if there is one.
    fn clock_index(&mut self) -> Result<Option<u32>, Refusal> {
        let d = self.dev()?;
        Ok(d.hardware
            .is_some()
            .then(|| d.device.device_info().num_regions))
    }

    fn region_info(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "DEVICE_GET_REGION_INFO");
        let argsz = r.u32().map_err(short)?;
        let _flags = r.u32().map_err(short)?;
        let index = r.u32().map_err(short)?;
        r.take(20).map_err(short)?;
        let info = if Some(index) == self.clock_index()? {
            RegionInfo {
                info: vfio_region_info {
                    argsz: 32,
                    flags: clock::CLOCK_REGION_FLAGS,
                    index,
                    cap_offset: 0,
                    size: clock::CLOCK_REGION_SIZE,
                    offset: u64::from(index) << 40,
                },
                cap_type: Some(vfio_region_info_cap_type {
                    header: vfio_info_cap_header::default(),
                    type_: clock::CLOCK_REGION_TYPE,
                    subtype: clock::CLOCK_REGION_SUBTYPE,
                }),
            }
        } else {
            self.dev()?
                .device
                .region_info(index)
                .map_err(|e| device_errno(&e))?
        };
        Reply::data(encode_region_info(&info, argsz))
    }

    fn irq_info(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "DEVICE_GET_IRQ_INFO");
        let argsz = r.u32().map_err(short)?;
        let _flags = r.u32().map_err(short)?;
        let index = r.u32().map_err(short)?;
        if (argsz as usize) < std::mem::size_of::<vfio_irq_info>() {
            return Err(inval(format!("argsz {argsz} is below the 16-byte reply")));
        }
        let i = self
            .dev()?
            .device
            .irq_info(index)
            .map_err(|e| device_errno(&e))?;
        let mut w = Writer::default();
        w.u32(16).u32(i.flags).u32(i.index).u32(i.count);
        Reply::data(w.0)
    }

    fn set_irqs(&mut self, p: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "DEVICE_SET_IRQS");
        let _argsz = r.u32().map_err(short)?;
        let flags = r.u32().map_err(short)?;
        let (index, start, count) = (
            r.u32().map_err(short)?,
            r.u32().map_err(short)?,
            r.u32().map_err(short)?,
        );
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if flags & !(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK) != 0 {
            return Err(inval(format!(
                "SET_IRQS flags {flags:#x} has undefined bits"
            )));
        }
        if action != VFIO_IRQ_SET_ACTION_TRIGGER {
            return Err((
                libc::ENOTSUP,
                format!("SET_IRQS action {action:#x}: only TRIGGER is supported"),
            ));
        }
        let dev = &mut self.dev()?.device;
        let avail = dev.irq_info(index).map_err(|e| device_errno(&e))?.count;
        if start.checked_add(count).is_none_or(|end| end > avail) {
            return Err(inval(format!(
                "vectors {start}+{count} outside irq {index}'s {avail}"
            )));
        }
        let sink: Option<Arc<dyn IrqSink>> = match data {
            VFIO_IRQ_SET_DATA_EVENTFD if fds.len() == count as usize && count > 0 => {
                for fd in &fds {
                    // SAFETY: F_GETFL/F_SETFL only change the status flags of a descriptor
                    // this process owns.
                    unsafe {
                        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                        if fl < 0
                            || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0
                        {
                            return Err(inval("an irq descriptor is not usable"));
                        }
                    }
                }
                Some(Arc::new(EventFdSink { start, fds }))
            }
            VFIO_IRQ_SET_DATA_EVENTFD if fds.is_empty() => None,
            VFIO_IRQ_SET_DATA_NONE if fds.is_empty() && count == 0 => None,
            _ => {
                return Err(inval(format!(
                    "SET_IRQS data {data:#x} with {} descriptors for {count} vectors",
                    fds.len()
                )))
            }
        };
        dev.set_irqs(index, start, count, sink)
            .map_err(|e| device_errno(&e))?;
        Reply::data(Vec::new())
    }

    fn region_read(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "REGION_READ");
        let (offset, region, count) = (
            r.u64().map_err(short)?,
            r.u32().map_err(short)?,
            r.u32().map_err(short)?,
        );
        if count as usize > self.max_xfer() {
            return Err(inval(format!(
                "count {count} is above max_data_xfer_size {}",
                self.max_xfer()
            )));
        }
        let mut buf = vec![0u8; count as usize];
        let clock = self.clock_index()?;
        let (d, regs) = (
            self.dev.as_mut().ok_or_else(|| inval("no device"))?,
            &mut self.clock,
        );
        if Some(region) == clock {
            let hw = d.hardware.as_deref_mut().ok_or_else(|| inval("no clock"))?;
            if !regs.read(hw, offset, &mut buf) {
                return Err(inval(format!("clock region: bad read at {offset:#x}")));
            }
        } else if region == VFIO_PCI_CONFIG_REGION_INDEX {
            for (at, len) in config_pieces(offset, buf.len()) {
                let o = (at - offset) as usize;
                d.device
                    .region_read(region, at, &mut buf[o..o + len])
                    .map_err(|e| device_errno(&e))?;
            }
        } else {
            d.device
                .region_read(region, offset, &mut buf)
                .map_err(|e| device_errno(&e))?;
        }
        let mut w = Writer::with_capacity(16 + buf.len());
        w.u64(offset).u32(region).u32(count).bytes(&buf);
        Reply::data(w.0)
    }

    fn region_write(&mut self, p: &[u8]) -> Result<Reply, Refusal> {
        let mut r = Reader::new(p, "REGION_WRITE");
        let (offset, region, count) = (
            r.u64().map_err(short)?,
            r.u32().map_err(short)?,
            r.u32().map_err(short)?,
        );
        let data = r.rest();
        if data.len() != count as usize {
            return Err(inval(format!(
                "count {count} but {} data bytes",
                data.len()
            )));
        }
        if count as usize > self.max_xfer() {
            return Err(inval(format!(
                "count {count} is above max_data_xfer_size {}",
                self.max_xfer()
            )));
        }
        let clock = self.clock_index()?;
        let (d, regs) = (
            self.dev.as_mut().ok_or_else(|| inval("no device"))?,
            &mut self.clock,
        );
        if Some(region) == clock {
            let hw = d.hardware.as_deref_mut().ok_or_else(|| inval("no clock"))?;
            if !regs.write(hw, offset, data) {
                return Err(inval(format!("clock region: bad write at {offset:#x}")));
            }
        } else if region == VFIO_PCI_CONFIG_REGION_INDEX {
            for (at, len) in config_pieces(offset, data.len()) {
                let o = (at - offset) as usize;
                d.device
                    .region_write(region, at, &data[o..o + len])
                    .map_err(|e| device_errno(&e))?;
            }
        } else {
            d.device
                .region_write(region, offset, data)
                .map_err(|e| device_errno(&e))?;
        }
        let mut w = Writer::default();
        w.u64(offset).u32(region).u32(count);
        Reply::data(w.0)
    }
}

/// A config-space access of any length as the naturally aligned 4-, 2- and 1-byte
/// accesses it covers, in order, as the kernel's vfio-pci splits a `pread`/`pwrite` of the
/// config region: a client may read the whole config space in one message.
fn config_pieces(offset: u64, len: usize) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let (mut at, end) = (offset, offset.saturating_add(len as u64));
    while at < end {
        let left = end - at;
        let n: u64 = if at % 4 == 0 && left >= 4 {
            4
        } else if at % 2 == 0 && left >= 2 {
            2
        } else {
            1
        };
        out.push((at, n as usize));
        at += n;
    }
    out
}

/// `vfio_region_info` with its type capability, as much as `argsz` has room for (the rest
/// is announced through `argsz`, as the kernel does).
pub(crate) fn encode_region_info(info: &RegionInfo, argsz: u32) -> Vec<u8> {
    let base = std::mem::size_of::<vfio_region_info>() as u32;
    let cap_len = std::mem::size_of::<vfio_region_info_cap_type>() as u32;
    let mut i = info.info;
    let mut w = Writer::default();
    match info.cap_type {
        Some(c) => {
            i.flags |= VFIO_REGION_INFO_FLAG_CAPS;
            let full = base + cap_len;
            let fits = argsz >= full;
            w.u32(full)
                .u32(i.flags)
                .u32(i.index)
                .u32(if fits { base } else { 0 })
                .u64(i.size)
                .u64(i.offset);
            if fits {
                w.u16(VFIO_REGION_INFO_CAP_TYPE as u16)
                    .u16(1)
                    .u32(0)
                    .u32(c.type_)
                    .u32(c.subtype);
            }
        }
        None => {
            w.u32(base)
                .u32(i.flags)
                .u32(i.index)
                .u32(0)
                .u64(i.size)
                .u64(i.offset);
        }
    }
    w.0
}
