//! The server against a hand-driven client on a socket pair, with a small fake device:
//! negotiation, the DMA map checks (seals, file size, overlap, descriptor counts, maps
//! without a descriptor, maps after the device exists), eventfd interrupts, region I/O bounds, unsupported features.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdev_core::{DeviceError, DmaDirtyLog, IrqSink, MigrationDevice, RegionInfo, VfioDevice};
use slog::{o, Discard, Logger};
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_irq_info, vfio_region_info, VFIO_DEVICE_FLAGS_PCI,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::proto::{Command, Header, Writer, FLAGS_ERROR, HEADER_SIZE};
use vfio_user::server::{DeviceFactory, ServedDevice, Server, ServerConfig};
use vfio_user::wire;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A device with one 4 KiB region; a write at offset 0 signals vector 0 of irq 0; a write
/// at offset 8 of 8 bytes `a` makes the device DMA the byte 0x5a to guest address `a`.
#[derive(Debug)]
struct Fake {
    mem: GuestMemoryMmap<AtomicBitmap>,
    bytes: Vec<u8>,
    sink: Option<Arc<dyn IrqSink>>,
    /// Where the test finds the sink the server wired (to signal as a device that runs on
    /// its own would, outside any request).
    export: Option<SinkSlot>,
}

type SinkSlot = Arc<Mutex<Option<Arc<dyn IrqSink>>>>;

impl VfioDevice for Fake {
    fn device_info(&self) -> vfio_device_info {
        vfio_device_info {
            argsz: 16,
            flags: VFIO_DEVICE_FLAGS_PCI,
            num_regions: 1,
            num_irqs: 1,
            ..Default::default()
        }
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoSuchRegion { index });
        }
        Ok(RegionInfo {
            info: vfio_region_info {
                argsz: 32,
                flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                index,
                cap_offset: 0,
                size: 4096,
                offset: 0,
            },
            cap_type: None,
        })
    }
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let end = offset as usize + data.len();
        if index != 0 || end > self.bytes.len() {
            return Err(DeviceError::OutOfRange {
                index,
                offset,
                len: data.len(),
                size: 4096,
            });
        }
        data.copy_from_slice(&self.bytes[offset as usize..end]);
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let end = offset as usize + data.len();
        if index != 0 || end > self.bytes.len() {
            return Err(DeviceError::OutOfRange {
                index,
                offset,
                len: data.len(),
                size: 4096,
            });
        }
        self.bytes[offset as usize..end].copy_from_slice(data);
        if offset == 0 {
            if let Some(s) = &self.sink {
                s.signal(0, 0);
            }
        }
        if offset == 8 && data.len() == 8 {
            let a = u64::from_le_bytes(data.try_into().unwrap());
            let _ = self.mem.write_slice(&[0x5a], GuestAddress(a));
        }
        Ok(())
    }
    fn irq_info(&self, index: u32) -> Result<vfio_irq_info, DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoSuchIrq { index });
        }
        Ok(vfio_irq_info {
            argsz: 16,
            flags: VFIO_IRQ_INFO_EVENTFD,
            index,
            count: 1,
        })
    }
    fn set_irqs(
        &mut self,
        _i: u32,
        _s: u32,
        _c: u32,
        sink: Option<Arc<dyn IrqSink>>,
    ) -> Result<(), DeviceError> {
        if let Some(slot) = &self.export {
            *slot.lock().unwrap() = sink.clone();
        }
        self.sink = sink;
        Ok(())
    }
    fn reset(&mut self) -> Result<(), DeviceError> {
        self.bytes.fill(0);
        Ok(())
    }
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        None
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        None
    }
}

#[derive(Debug, Default)]
struct FakeFactory {
    created: Mutex<u32>,
    export: Option<SinkSlot>,
}

impl DeviceFactory for FakeFactory {
    fn create(
        &self,
        mem: &GuestMemoryMmap<AtomicBitmap>,
        _log: &Logger,
    ) -> Result<ServedDevice, String> {
        *self.created.lock().unwrap() += 1;
        Ok(ServedDevice {
            device: Box::new(Fake {
                mem: mem.clone(),
                bytes: vec![0; 4096],
                sink: None,
                export: self.export.clone(),
            }),
            hardware: None,
        })
    }
}

const D: Duration = Duration::from_secs(5);

struct Peer {
    sock: UnixStream,
    id: u16,
}

impl Peer {
    fn start() -> (Self, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let cfg = ServerConfig {
            deadline: Duration::from_millis(300),
            ..ServerConfig::default()
        };
        let server = Server::new(
            Arc::new(FakeFactory::default()),
            cfg,
            Logger::root(Discard, o!()),
        );
        let h = std::thread::spawn(move || {
            server.serve_connection(&b);
        });
        wire::arm(&a, D).unwrap();
        (Self { sock: a, id: 0 }, h)
    }

    /// Send and return (errno if refused, payload).
    fn call(&mut self, cmd: Command, payload: &[u8], fds: &[RawFd]) -> (Option<u32>, Vec<u8>) {
        self.id += 1;
        let h = Header {
            msg_id: self.id,
            command: cmd as u16,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: 0,
            error: 0,
        };
        wire::send(&self.sock, &h, &[payload], fds, D).unwrap();
        let m = wire::recv(&self.sock, false, D, 1 << 24, 4)
            .unwrap()
            .expect("a reply");
        assert_eq!(m.header.msg_id, self.id);
        assert!(m.header.is_reply());
        let err = (m.header.flags & FLAGS_ERROR != 0).then_some(m.header.error);
        (err, m.payload)
    }

    fn version(&mut self) {
        let v = b"\0\0\x01\0{\"capabilities\":{\"max_data_xfer_size\":8192}}\0";
        let (e, p) = self.call(Command::Version, v, &[]);
        assert_eq!(e, None);
        let got = vfio_user::proto::Version::decode(&p).unwrap();
        assert_eq!(got.caps.max_data_xfer_size, 8192, "the smaller offer wins");
    }
}

fn memfd(size: u64, seal: bool) -> std::fs::File {
    // SAFETY: a NUL-terminated name; the result is a fresh descriptor or -1.
    let fd =
        unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0);
    // SAFETY: fd is fresh and owned by nobody else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    if seal {
        // SAFETY: changes only the seals of our own file.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(r, 0);
    }
    f
}

fn map_payload(iova: u64, size: u64, offset: u64, flags: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(32).u32(flags).u64(offset).u64(iova).u64(size);
    w.0
}

fn eventfd() -> OwnedFd {
    // SAFETY: no pointers; a fresh descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn dma_maps_are_checked_before_they_are_mapped() {
    let (mut p, _h) = Peer::start();
    // Nothing but VERSION first.
    assert_eq!(
        p.call(
            Command::DeviceGetInfo,
            &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[]
        )
        .0,
        Some(libc::EINVAL as u32)
    );
    p.version();
    let sealed = memfd(1 << 20, true);
    let unsealed = memfd(1 << 20, false);
    let rw = 3;
    let refused =
        |p: &mut Peer, payload: Vec<u8>, fds: &[RawFd]| p.call(Command::DmaMap, &payload, fds).0;
    assert_eq!(
        refused(
            &mut p,
            map_payload(0, 1 << 20, 0, rw),
            &[unsealed.as_raw_fd()]
        ),
        Some(libc::EPERM as u32),
        "unsealed"
    );
    assert_eq!(
        refused(
            &mut p,
            map_payload(0, 2 << 20, 0, rw),
            &[sealed.as_raw_fd()]
        ),
        Some(libc::EINVAL as u32),
        "past the file's end"
    );
    assert_eq!(
        refused(
            &mut p,
            map_payload(0, 1 << 20, 4096, rw),
            &[sealed.as_raw_fd()]
        ),
        Some(libc::EINVAL as u32),
        "offset + size past the end"
    );
    assert_eq!(
        refused(
            &mut p,
            map_payload(0x800, 4096, 0, rw),
            &[sealed.as_raw_fd()]
        ),
        Some(libc::EINVAL as u32),
        "unaligned"
    );
    assert_eq!(
        refused(&mut p, map_payload(0, 4096, 0, 1), &[sealed.as_raw_fd()]),
        Some(libc::EINVAL as u32),
        "read-only"
    );
    assert_eq!(
        refused(
            &mut p,
            map_payload(u64::MAX - 4095, 8192, 0, rw),
            &[sealed.as_raw_fd()]
        ),
        Some(libc::EINVAL as u32),
        "overflow"
    );
    assert_eq!(
        refused(
            &mut p,
            map_payload(0, 4096, 0, rw),
            &[sealed.as_raw_fd(), sealed.as_raw_fd()]
        ),
        Some(libc::EINVAL as u32),
        "two fds"
    );
    // A map without a descriptor (DMA by message) passes the same checks but the file's.
    assert_eq!(
        refused(&mut p, map_payload(0x800, 4096, 0, rw), &[]),
        Some(libc::EINVAL as u32),
        "no fd, unaligned"
    );
    assert_eq!(
        refused(&mut p, map_payload(0, 4096, 0, 1), &[]),
        Some(libc::EINVAL as u32),
        "no fd, read-only"
    );
    assert_eq!(
        refused(&mut p, map_payload(8 << 20, 4096, 0, rw), &[]),
        None,
        "no fd"
    );
    let mut w = Writer::default();
    w.u32(24).u32(0).u64(8 << 20).u64(4096);
    assert_eq!(p.call(Command::DmaUnmap, &w.0, &[]).0, None);
    let many = [sealed.as_raw_fd(); 20];
    assert_eq!(
        refused(&mut p, map_payload(0, 4096, 0, rw), &many),
        Some(libc::EINVAL as u32),
        "more fds than max_msg_fds"
    );
    assert_eq!(
        p.call(
            Command::DmaMap,
            &map_payload(0, 1 << 20, 0, rw),
            &[sealed.as_raw_fd()]
        )
        .0,
        None
    );
    assert_eq!(
        refused(
            &mut p,
            map_payload(0x8_0000, 1 << 20, 0, rw),
            &[sealed.as_raw_fd()]
        ),
        Some(libc::EEXIST as u32),
        "overlap"
    );
    // Unmap must match exactly.
    let mut w = Writer::default();
    w.u32(24).u32(0).u64(0).u64(4096);
    assert_eq!(
        p.call(Command::DmaUnmap, &w.0, &[]).0,
        Some(libc::ENOENT as u32)
    );
    // The device is built on the maps; its DMA lands in the client's memory.
    let mut wr = Writer::default();
    wr.u64(8).u32(0).u32(8).u64(0x1234);
    assert_eq!(p.call(Command::RegionWrite, &wr.0, &[]).0, None);
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&sealed, &mut b, 0x1234).unwrap();
    assert_eq!(b, [0x5a], "the device's DMA went into the shared memory");
    // Maps cannot change under a live device.
    let other = memfd(1 << 20, true);
    assert_eq!(
        refused(
            &mut p,
            map_payload(4 << 20, 1 << 20, 0, rw),
            &[other.as_raw_fd()]
        ),
        Some(libc::EBUSY as u32)
    );
}

#[test]
fn irqs_arrive_on_the_clients_eventfd_and_region_io_is_bounded() {
    let (mut p, _h) = Peer::start();
    p.version();
    let efd = eventfd();
    let mut w = Writer::default();
    w.u32(20)
        .u32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER)
        .u32(0)
        .u32(0)
        .u32(1);
    assert_eq!(
        p.call(Command::DeviceSetIrqs, &w.0, &[efd.as_raw_fd()]).0,
        None
    );
    // Vectors outside the irq, and a descriptor count that does not match, are refused.
    let mut bad = Writer::default();
    bad.u32(20)
        .u32(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER)
        .u32(0)
        .u32(1)
        .u32(1);
    assert_eq!(
        p.call(Command::DeviceSetIrqs, &bad.0, &[efd.as_raw_fd()]).0,
        Some(libc::EINVAL as u32)
    );
    let mut wr = Writer::default();
    wr.u64(0).u32(0).u32(4).u32(7);
    assert_eq!(p.call(Command::RegionWrite, &wr.0, &[]).0, None);
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a live buffer from our eventfd.
    let n = unsafe { libc::read(efd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    assert_eq!(
        (n, u64::from_le_bytes(v)),
        (8, 1),
        "signalled once, before the reply"
    );
    // Reads: in range, past the end, above max_data_xfer_size.
    let read = |p: &mut Peer, off: u64, count: u32| {
        let mut r = Writer::default();
        r.u64(off).u32(0).u32(count);
        p.call(Command::RegionRead, &r.0, &[])
    };
    let (e, data) = read(&mut p, 0, 4);
    assert_eq!(e, None);
    assert_eq!(&data[16..], &7u32.to_le_bytes());
    assert_eq!(read(&mut p, 4094, 4).0, Some(libc::EINVAL as u32));
    assert_eq!(read(&mut p, 0, 16384).0, Some(libc::EINVAL as u32));
    // Region info of a region that does not exist; a feature the device lacks.
    let mut ri = Writer::default();
    ri.u32(32).u32(0).u32(5).u32(0).u64(0).u64(0);
    assert_eq!(
        p.call(Command::DeviceGetRegionInfo, &ri.0, &[]).0,
        Some(libc::EINVAL as u32)
    );
    let mut f = Writer::default();
    f.u32(16)
        .u32(vfio_bindings::bindings::vfio::VFIO_DEVICE_FEATURE_GET | 1);
    assert_eq!(
        p.call(Command::DeviceFeature, &f.0, &[]).0,
        Some(libc::ENOTSUP as u32)
    );
    assert_eq!(
        p.call(Command::MigDataRead, &[8, 0, 0, 0, 16, 0, 0, 0], &[])
            .0,
        Some(libc::EINVAL as u32)
    );
    // Reset goes through.
    assert_eq!(p.call(Command::DeviceReset, &[], &[]).0, None);
    assert_eq!(read(&mut p, 0, 4).1[16..], [0, 0, 0, 0]);
}

/// Counts signals, as the VMM's irq queue would receive them.
#[derive(Debug, Default)]
struct Count(Mutex<Vec<(u32, u32)>>);

impl IrqSink for Count {
    fn signal(&self, index: u32, vector: u32) {
        self.0.lock().unwrap().push((index, vector));
    }
}

#[test]
fn the_client_delivers_interrupts_raised_outside_any_request_when_polled() {
    use vfio_user::client::{Client, ClientConfig};
    let dir = std::env::temp_dir().join(format!("vfio-user-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("async.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let slot: SinkSlot = Arc::default();
    let factory = FakeFactory {
        export: Some(slot.clone()),
        ..FakeFactory::default()
    };
    let server = Server::new(
        Arc::new(factory),
        ServerConfig::default(),
        Logger::root(Discard, o!()),
    );
    std::thread::spawn(move || server.serve(listener, Arc::default()));
    let file = memfd(1 << 20, true);
    let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges_with_files([(
        GuestAddress(0),
        1 << 20,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .unwrap();
    let mut client = Client::connect(
        &path,
        &mem,
        &ClientConfig::default(),
        &Logger::root(Discard, o!()),
    )
    .unwrap();
    let got = Arc::new(Count::default());
    client.set_irqs(0, 0, 1, Some(got.clone())).unwrap();
    // The device signals on its own (the server's sink writes the client's eventfd).
    let server_sink = slot
        .lock()
        .unwrap()
        .clone()
        .expect("the server wired a sink");
    server_sink.signal(0, 0);
    assert!(
        got.0.lock().unwrap().is_empty(),
        "no request went out: nothing delivered yet"
    );
    client.poll_irqs();
    assert_eq!(*got.0.lock().unwrap(), vec![(0, 0)]);
    client.poll_irqs();
    assert_eq!(got.0.lock().unwrap().len(), 1, "delivered once");
    let _ = std::fs::remove_dir_all(&dir);
}
