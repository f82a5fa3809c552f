//! The client: a device served by another process, as a [`VfioDevice`].
//!
//! [`Client::connect`] negotiates `VERSION`, maps every region of guest RAM to the server
//! with its file descriptor (guest RAM must be shared memory) or, with
//! [`ClientConfig::dma_by_message`], without one (the client then answers the device's
//! `DMA_READ`/`DMA_WRITE` requests, see [`conn`]), and reads the device, region and irq
//! info once (they do not change). Region accesses, irqs and reset are one request
//! each; the v2 migration, the DMA dirty log and the simulation clock are in
//! [`migration`]. Every wait has the configured deadline; after the first socket failure
//! the client answers every request with an error at once, so a dead or hung device
//! process costs one deadline, never a hang.

mod conn;
mod dma;
pub mod migration;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdev_core::{DeviceError, DmaDirtyLog, IrqSink, MigrationDevice, RegionInfo, VfioDevice};
use slog::{debug, info, Logger};
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_info_cap_header, vfio_irq_info, vfio_region_info,
    vfio_region_info_cap_type, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_INFO_FLAG_CAPS,
};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::clock::{CLOCK_REGION_SUBTYPE, CLOCK_REGION_TYPE};
use crate::proto::{
    Caps, Command, Reader, Version, Writer, DMA_FLAG_READ, DMA_FLAG_WRITE, VERSION_MAJOR,
    VERSION_MINOR,
};

pub use conn::{ClientError, Conn, Result, SharedConn};
pub use migration::{RemoteClock, RemoteDirtyLog, RemoteMigration};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of every wait on the device process.
    pub deadline: Duration,
    /// How long to retry connecting while the device process starts.
    pub connect_wait: Duration,
    /// The largest data transfer the client proposes.
    pub max_data_xfer_size: u32,
    /// Map guest RAM without its file descriptors: the device reaches it by
    /// `DMA_READ`/`DMA_WRITE` messages the client answers while it waits for its replies
    /// (guest RAM need not be shared memory; every DMA is a round trip).
    pub dma_by_message: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            connect_wait: Duration::from_secs(5),
            max_data_xfer_size: 1 << 20,
            dma_by_message: false,
        }
    }
}

/// A vfio-user device, reached over its socket.
#[derive(Debug)]
pub struct Client {
    conn: SharedConn,
    info: vfio_device_info,
    regions: Vec<RegionInfo>,
    irqs: Vec<vfio_irq_info>,
    mig: Option<RemoteMigration>,
    dirty: Option<RemoteDirtyLog>,
    clock: Option<u32>,
    /// The config region as read at a connection generation (see [`Client::read_config`]).
    config: Option<(u64, Vec<u8>)>,
}

impl Client {
    /// Connect to the server at `path` and give it guest RAM `mem` for DMA (iova = guest
    /// physical address).
    pub fn connect(
        path: &Path,
        mem: &GuestMemoryMmap<AtomicBitmap>,
        cfg: &ClientConfig,
        log: &Logger,
    ) -> Result<Self> {
        let started = Instant::now();
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if started.elapsed() < cfg.connect_wait => {
                    debug!(log, "device process not ready"; "error" => %e);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        };
        crate::wire::arm(&sock, cfg.deadline).map_err(|source| ClientError::Wire { source })?;
        let mut c = Conn::new(sock, cfg.deadline, log.clone());
        let ours = Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            caps: Caps {
                max_msg_fds: 4,
                max_data_xfer_size: cfg.max_data_xfer_size,
                migration: Some(crate::proto::MigrationCaps {
                    pgsize: 4096,
                    max_bitmap_size: u64::from(cfg.max_data_xfer_size),
                }),
                ..Caps::default()
            },
        };
        let reply = c.request(Command::Version, &[&ours.encode()], &[])?;
        let theirs = Version::decode(&reply).map_err(|e| ClientError::BadReply {
            command: Command::Version,
            what: e.to_string(),
        })?;
        if theirs.major != VERSION_MAJOR {
            return Err(ClientError::Setup {
                what: format!(
                    "device process speaks protocol {}.{}",
                    theirs.major, theirs.minor
                ),
            });
        }
        c.caps = theirs.caps.clone();
        c.caps.max_data_xfer_size = c
            .caps
            .max_data_xfer_size
            .min(cfg.max_data_xfer_size)
            .max(4096);
        let ranges = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        c.set_dma(dma::DmaServe::new(mem.clone(), ranges));
        for region in mem.iter() {
            let gpa = region.start_addr().0;
            let fo = match (cfg.dma_by_message, region.file_offset()) {
                (true, _) => None,
                (false, Some(fo)) => Some(fo),
                (false, None) => return Err(ClientError::NotShared { gpa }),
            };
            let mut w = Writer::default();
            w.u32(32)
                .u32(DMA_FLAG_READ | DMA_FLAG_WRITE)
                .u64(fo.map_or(0, |f| f.start()))
                .u64(gpa)
                .u64(region.len());
            let fds: Vec<_> = fo.iter().map(|f| f.file().as_raw_fd()).collect();
            c.request(Command::DmaMap, &[&w.0], &fds)?;
        }
        let conn = Arc::new(Mutex::new(c));
        let mut g = conn::lock(&conn);
        let info = device_info(&mut g)?;
        let mut regions = Vec::with_capacity(info.num_regions.min(64) as usize);
        for i in 0..info.num_regions.min(64) {
            regions.push(region_info(&mut g, i)?);
        }
        let mut irqs = Vec::new();
        for i in 0..info.num_irqs.min(16) {
            irqs.push(irq_info(&mut g, i)?);
        }
        let clock = regions
            .iter()
            .find(|r| {
                r.cap_type.is_some_and(|c| {
                    c.type_ == CLOCK_REGION_TYPE && c.subtype == CLOCK_REGION_SUBTYPE
                })
            })
            .map(|r| r.info.index);
        drop(g);
        let mig = RemoteMigration::probe(&conn)?;
        let dirty = RemoteDirtyLog::probe(&conn)?;
        info!(log, "vfio-user device attached"; "socket" => %path.display(), "regions" => info.num_regions,
              "migration" => mig.is_some(), "dma_log" => dirty.is_some(), "clock" => clock.is_some(), "dma_by_message" => cfg.dma_by_message,
              "max_data_xfer_size" => conn::lock(&conn).max_xfer());
        Ok(Self {
            conn,
            info,
            regions,
            irqs,
            mig,
            dirty,
            clock,
            config: None,
        })
    }

    /// The simulation clock of the device's engine, if the server offers one.
    pub fn clock(&self) -> Option<RemoteClock> {
        self.clock
            .map(|index| RemoteClock::new(self.conn.clone(), index))
    }

    /// Deliver the interrupts waiting on the eventfds now, without a request (for a device
    /// that signals on its own, outside any request: one without the clock region).
    pub fn poll_irqs(&self) {
        conn::lock(&self.conn).drain_irqs();
    }

    /// A handle that delivers waiting interrupts ([`Client::poll_irqs`]) from elsewhere.
    pub fn irq_poller(&self) -> IrqPoller {
        IrqPoller {
            conn: self.conn.clone(),
        }
    }

    /// The connection (for tools that measure it).
    pub fn conn(&self) -> SharedConn {
        self.conn.clone()
    }

    fn check(&self, index: u32, offset: u64, len: usize) -> mdev_core::device::Result<()> {
        let r = self.region_info(index)?;
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > r.size())
        {
            return Err(DeviceError::OutOfRange {
                index,
                offset,
                len,
                size: r.size(),
            });
        }
        Ok(())
    }
}

impl Client {
    /// A config-space read. A VMM reads config a dword at a time, many in a row (probing,
    /// re-deriving its BAR map and routes after every config write); over a socket each
    /// would be a round trip. The whole region is read in one request instead and later
    /// reads are served from it while no other request has gone out: config reads have
    /// no side effects, and this device changes state only while it handles a request, so
    /// the copy is exactly what the device holds until the next request.
    fn read_config(&mut self, offset: u64, data: &mut [u8]) -> mdev_core::device::Result<()> {
        let size = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?.size();
        let mut c = conn::lock(&self.conn);
        let current = matches!(&self.config, Some((g, _)) if *g == c.generation());
        if !current {
            let n = usize::try_from(size).unwrap_or(usize::MAX);
            if n > c.max_xfer() {
                drop(c);
                return self.read_chunks(VFIO_PCI_CONFIG_REGION_INDEX, offset, data);
            }
            let mut w = Writer::default();
            w.u64(0).u32(VFIO_PCI_CONFIG_REGION_INDEX).u32(n as u32);
            let p = c
                .request(Command::RegionRead, &[&w.0], &[])
                .map_err(remote)?;
            let bytes = p.get(16..16 + n).ok_or_else(|| {
                remote(ClientError::BadReply {
                    command: Command::RegionRead,
                    what: "short config read".into(),
                })
            })?;
            self.config = Some((c.generation(), bytes.to_vec()));
        }
        let (_, cfg) = self.config.as_ref().ok_or(DeviceError::NoSuchRegion {
            index: VFIO_PCI_CONFIG_REGION_INDEX,
        })?;
        let at = offset as usize;
        data.copy_from_slice(&cfg[at..at + data.len()]);
        Ok(())
    }

    fn read_chunks(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> mdev_core::device::Result<()> {
        let mut c = conn::lock(&self.conn);
        let step = c.max_xfer();
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(step);
            let mut w = Writer::default();
            w.u64(offset + done as u64).u32(index).u32(n as u32);
            let p = c
                .request(Command::RegionRead, &[&w.0], &[])
                .map_err(remote)?;
            let got = p.get(16..16 + n).ok_or_else(|| {
                remote(ClientError::BadReply {
                    command: Command::RegionRead,
                    what: format!("{} bytes for a {n}-byte read", p.len().saturating_sub(16)),
                })
            })?;
            data[done..done + n].copy_from_slice(got);
            done += n;
        }
        Ok(())
    }
}

/// Delivers the interrupts waiting on a client's eventfds (see [`Client::poll_irqs`]).
#[derive(Debug, Clone)]
pub struct IrqPoller {
    conn: SharedConn,
}

impl IrqPoller {
    /// Deliver what is waiting.
    pub fn poll(&self) {
        conn::lock(&self.conn).drain_irqs();
    }

    /// Whether the device process is still reachable; why not, if not.
    pub fn alive(&self) -> Result<()> {
        conn::lock(&self.conn).alive()
    }
}

fn remote(e: ClientError) -> DeviceError {
    DeviceError::InvalidState {
        what: e.to_string(),
    }
}

fn device_info(c: &mut Conn) -> Result<vfio_device_info> {
    let mut w = Writer::default();
    w.u32(16).u32(0).u32(0).u32(0);
    let p = c.request(Command::DeviceGetInfo, &[&w.0], &[])?;
    let bad = |e: crate::proto::ProtoError| ClientError::BadReply {
        command: Command::DeviceGetInfo,
        what: e.to_string(),
    };
    let mut r = Reader::new(&p, "DEVICE_GET_INFO reply");
    Ok(vfio_device_info {
        argsz: r.u32().map_err(bad)?,
        flags: r.u32().map_err(bad)?,
        num_regions: r.u32().map_err(bad)?,
        num_irqs: r.u32().map_err(bad)?,
        ..Default::default()
    })
}

fn region_info(c: &mut Conn, index: u32) -> Result<RegionInfo> {
    let mut w = Writer::default();
    w.u32(256).u32(0).u32(index).u32(0).u64(0).u64(0);
    let p = c.request(Command::DeviceGetRegionInfo, &[&w.0], &[])?;
    let bad = |what: String| ClientError::BadReply {
        command: Command::DeviceGetRegionInfo,
        what,
    };
    let mut r = Reader::new(&p, "DEVICE_GET_REGION_INFO reply");
    let pe = |e: crate::proto::ProtoError| bad(e.to_string());
    let info = vfio_region_info {
        argsz: r.u32().map_err(pe)?,
        flags: r.u32().map_err(pe)?,
        index: r.u32().map_err(pe)?,
        cap_offset: r.u32().map_err(pe)?,
        size: r.u64().map_err(pe)?,
        offset: r.u64().map_err(pe)?,
    };
    let mut cap_type = None;
    if info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
        let mut at = info.cap_offset as usize;
        for _ in 0..16 {
            if at == 0 {
                break;
            }
            let mut cr = Reader::new(p.get(at..).unwrap_or(&[]), "region capability");
            let (id, _ver, next) = (
                cr.u16().map_err(pe)?,
                cr.u16().map_err(pe)?,
                cr.u32().map_err(pe)?,
            );
            if u32::from(id) == VFIO_REGION_INFO_CAP_TYPE {
                cap_type = Some(vfio_region_info_cap_type {
                    header: vfio_info_cap_header::default(),
                    type_: cr.u32().map_err(pe)?,
                    subtype: cr.u32().map_err(pe)?,
                });
            }
            at = next as usize;
        }
    }
    Ok(RegionInfo { info, cap_type })
}

fn irq_info(c: &mut Conn, index: u32) -> Result<vfio_irq_info> {
    let mut w = Writer::default();
    w.u32(16).u32(0).u32(index).u32(0);
    let p = c.request(Command::DeviceGetIrqInfo, &[&w.0], &[])?;
    let pe = |e: crate::proto::ProtoError| ClientError::BadReply {
        command: Command::DeviceGetIrqInfo,
        what: e.to_string(),
    };
    let mut r = Reader::new(&p, "DEVICE_GET_IRQ_INFO reply");
    Ok(vfio_irq_info {
        argsz: r.u32().map_err(pe)?,
        flags: r.u32().map_err(pe)?,
        index: r.u32().map_err(pe)?,
        count: r.u32().map_err(pe)?,
    })
}

impl VfioDevice for Client {
    fn device_info(&self) -> vfio_device_info {
        self.info
    }

    fn region_info(&self, index: u32) -> mdev_core::device::Result<RegionInfo> {
        self.regions
            .get(index as usize)
            .copied()
            .ok_or(DeviceError::NoSuchRegion { index })
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> mdev_core::device::Result<()> {
        self.check(index, offset, data.len())?;
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            return self.read_config(offset, data);
        }
        self.read_chunks(index, offset, data)
    }

    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> mdev_core::device::Result<()> {
        self.check(index, offset, data.len())?;
        let mut c = conn::lock(&self.conn);
        let step = c.max_xfer();
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(step);
            let mut w = Writer::default();
            w.u64(offset + done as u64).u32(index).u32(n as u32);
            c.request(Command::RegionWrite, &[&w.0, &data[done..done + n]], &[])
                .map_err(remote)?;
            done += n;
        }
        Ok(())
    }

    fn irq_info(&self, index: u32) -> mdev_core::device::Result<vfio_irq_info> {
        self.irqs
            .get(index as usize)
            .copied()
            .ok_or(DeviceError::NoSuchIrq { index })
    }

    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> mdev_core::device::Result<()> {
        let avail = self.irq_info(index)?.count;
        if start.checked_add(count).is_none_or(|e| e > avail) {
            return Err(DeviceError::BadIrqSet {
                index,
                what: format!("vectors {start}+{count} outside its {avail}"),
            });
        }
        let mut c = conn::lock(&self.conn);
        let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        let mut w = Writer::default();
        // A sink that is eventfds already (the VMM wired them to KVM as irqfds) gives
        // the device process those: its signals then reach the guest without us.
        let given: Option<Vec<_>> = sink.as_ref().and_then(|s| {
            (start..start + count)
                .map(|v| s.eventfd(index, v))
                .collect()
        });
        match sink {
            Some(_) if count > 0 && given.is_some() => {
                let raw = given.unwrap_or_default();
                w.u32(20).u32(flags).u32(index).u32(start).u32(count);
                c.request(Command::DeviceSetIrqs, &[&w.0], &raw)
                    .map_err(remote)?;
                c.unwire_irqs(index, start, count);
            }
            Some(sink) if count > 0 => {
                let fds = (0..count)
                    .map(|_| conn::eventfd())
                    .collect::<Result<Vec<_>>>()
                    .map_err(remote)?;
                let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
                w.u32(20).u32(flags).u32(index).u32(start).u32(count);
                c.request(Command::DeviceSetIrqs, &[&w.0], &raw)
                    .map_err(remote)?;
                c.wire_irqs(index, start, fds, sink);
            }
            _ => {
                w.u32(20).u32(flags).u32(index).u32(start).u32(count);
                c.request(Command::DeviceSetIrqs, &[&w.0], &[])
                    .map_err(remote)?;
                c.unwire_irqs(index, start, count);
            }
        }
        Ok(())
    }

    fn reset(&mut self) -> mdev_core::device::Result<()> {
        conn::lock(&self.conn)
            .request(Command::DeviceReset, &[], &[])
            .map_err(remote)?;
        if let Some(m) = self.mig.as_mut() {
            m.after_reset();
        }
        Ok(())
    }

    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        self.mig.as_mut().map(|m| m as &mut dyn MigrationDevice)
    }

    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        self.dirty.as_mut().map(|d| d as &mut dyn DmaDirtyLog)
    }
}
