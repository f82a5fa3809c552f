//! Device tests: helpers to build a device over real guest memory, drive it as a guest
//! driver would (MMIO, GTT, ring and batch programs), and migrate it.

mod config_section;
mod engine;
mod gmem_chunks;
mod irq;
mod migration;
mod perf;
mod regs;
mod stream;

use std::sync::{Arc, Mutex};

use mdev_core::uapi::*;
use mdev_core::{IrqSink, MigState, MigrationDevice, VfioDevice};
use pci_config_replay::caps::{msix, MSIX_BASE};
use pci_config_replay::regs::COMMAND;
use shadow_pt::DirtyTracking;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Vgpu, VgpuConfig};
use crate::cmd::*;
use crate::regs::*;
use crate::types::{VgpuType, VGPU_64};

/// Guest RAM size in tests.
pub const RAM: usize = 4 << 20;
/// Guest-physical base of the pages the tests map into the GTT (entry i -> RAM_GTT + i*4K).
pub const RAM_GTT: u64 = 0x10_0000;
/// Pages mapped.
pub const MAPPED: u64 = 64;
/// GTT entry of the ring.
pub const RING_ENTRY: u64 = 0;
/// GTT entries of the batch buffers.
pub const BATCH_ENTRY: u64 = 4;
/// GTT entry of the DMA target page.
pub const DATA_ENTRY: u64 = 16;

pub fn mem() -> GuestMemoryMmap<AtomicBitmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap()
}

pub fn device_on(ty: VgpuType, m: GuestMemoryMmap<AtomicBitmap>) -> Vgpu {
    let mut cfg = VgpuConfig::new(ty, m);
    cfg.dirty_tracking = DirtyTracking::ShadowPt;
    Vgpu::new(cfg).unwrap()
}

pub fn device() -> Vgpu {
    device_on(VGPU_64, mem())
}

/// Graphics address of GTT entry `e`.
pub fn gaddr(e: u64) -> u64 {
    SYS_BASE + e * PAGE_SIZE
}

/// Guest-physical address behind GTT entry `e`.
pub fn gpa(e: u64) -> u64 {
    RAM_GTT + e * PAGE_SIZE
}

/// Records every signal.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<(u32, u32)>>);

impl IrqSink for Recorder {
    fn signal(&self, index: u32, vector: u32) {
        self.0.lock().unwrap().push((index, vector));
    }
}

impl Recorder {
    pub fn take(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

pub fn rd(d: &mut Vgpu, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    d.region_read(VFIO_PCI_BAR0_REGION_INDEX, u64::from(reg), &mut b)
        .unwrap();
    u32::from_le_bytes(b)
}

pub fn wr(d: &mut Vgpu, reg: u32, v: u32) {
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, u64::from(reg), &v.to_le_bytes())
        .unwrap();
}

pub fn gtt_wr(d: &mut Vgpu, entry: u64, v: u64) {
    d.region_write(
        VFIO_PCI_BAR0_REGION_INDEX,
        GTT_WINDOW_OFFSET + entry * 8,
        &v.to_le_bytes(),
    )
    .unwrap();
}

pub fn gtt_rd(d: &mut Vgpu, entry: u64) -> u64 {
    let mut b = [0u8; 8];
    d.region_read(
        VFIO_PCI_BAR0_REGION_INDEX,
        GTT_WINDOW_OFFSET + entry * 8,
        &mut b,
    )
    .unwrap();
    u64::from_le_bytes(b)
}

pub fn cfg_wr16(d: &mut Vgpu, off: u64, v: u16) {
    d.region_write(VFIO_PCI_CONFIG_REGION_INDEX, off, &v.to_le_bytes())
        .unwrap();
}

/// Memory + bus master, MSI-X vector 0 unmasked and enabled, a recorder on MSI-X.
pub fn wire_msix(d: &mut Vgpu) -> Arc<Recorder> {
    cfg_wr16(d, COMMAND as u64, 0x0006);
    let t = MSIX_TABLE_OFFSET;
    for (off, v) in [(0, 0xfee0_0000u32), (4, 0), (8, 0x41), (12, 0)] {
        d.region_write(VFIO_PCI_BAR0_REGION_INDEX, t + off, &v.to_le_bytes())
            .unwrap();
    }
    cfg_wr16(d, (MSIX_BASE + msix::CONTROL) as u64, msix::CTL_ENABLE);
    let rec = Arc::new(Recorder::default());
    d.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, Some(rec.clone()))
        .unwrap();
    rec
}

/// Map entries 0..MAPPED to guest RAM, writable.
pub fn map_gtt(d: &mut Vgpu) {
    for e in 0..MAPPED {
        gtt_wr(d, e, gpa(e) | GTT_PRESENT | GTT_WRITABLE);
    }
}

/// A command stream being written into guest RAM at a GTT entry.
pub struct Prog {
    pub words: Vec<u32>,
}

impl Prog {
    pub fn new() -> Self {
        Self { words: Vec::new() }
    }
    pub fn cmd(&mut self, op: u32, payload: &[u32]) -> &mut Self {
        self.words.push(header(op));
        self.words.extend_from_slice(payload);
        self
    }
    pub fn store(&mut self, addr: u64, v: u32) -> &mut Self {
        self.cmd(OP_STORE_DWORD, &[addr as u32, (addr >> 32) as u32, v])
    }
    pub fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
    pub fn len(&self) -> u32 {
        self.words.len() as u32 * 4
    }
}

/// Write `p` into guest RAM behind GTT entry `entry` at byte `offset`.
pub fn put(m: &GuestMemoryMmap<AtomicBitmap>, entry: u64, offset: u64, p: &Prog) {
    m.write_slice(&p.bytes(), GuestAddress(gpa(entry) + offset))
        .unwrap();
}

/// Set up a 4-page ring at entry 0 (disabled, head = tail = 0), enable it.
pub fn ring_on(d: &mut Vgpu) {
    wr(d, REG_RING_CTL, 0);
    wr(d, REG_RING_START_LO, gaddr(RING_ENTRY) as u32);
    wr(d, REG_RING_START_HI, (gaddr(RING_ENTRY) >> 32) as u32);
    wr(d, REG_RING_HEAD, 0);
    wr(d, REG_RING_TAIL, 0);
    wr(
        d,
        REG_RING_CTL,
        RING_CTL_ENABLE | (3 << RING_CTL_SIZE_SHIFT),
    );
}

/// Append `p` to the ring at the current tail and submit it.
pub fn submit(d: &mut Vgpu, m: &GuestMemoryMmap<AtomicBitmap>, p: &Prog) {
    let tail = rd(d, REG_RING_TAIL);
    put(m, RING_ENTRY, u64::from(tail), p);
    wr(d, REG_RING_TAIL, tail + p.len());
}

/// A device with MSI-X wired, the GTT mapped, interrupts unmasked and the ring on.
pub fn booted() -> (Vgpu, GuestMemoryMmap<AtomicBitmap>, Arc<Recorder>) {
    booted_with_clock(Arc::new(crate::device::MonotonicClock::default()))
}

/// [`booted`], with the engine throttle reading `clock`.
pub fn booted_with_clock(
    clock: Arc<dyn crate::device::EngineClock>,
) -> (Vgpu, GuestMemoryMmap<AtomicBitmap>, Arc<Recorder>) {
    let m = mem();
    let mut cfg = VgpuConfig::new(VGPU_64, m.clone());
    cfg.clock = clock;
    cfg.dirty_tracking = DirtyTracking::ShadowPt;
    let mut d = Vgpu::new(cfg).unwrap();
    let rec = wire_msix(&mut d);
    map_gtt(&mut d);
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_IER, INT_ALL);
    ring_on(&mut d);
    (d, m, rec)
}

/// A batch at entry `BATCH_ENTRY` of `n` STORE_DWORDs (value i+1 to dword i of the data
/// page), and a ring command jumping into it.
pub fn batch_of_stores(m: &GuestMemoryMmap<AtomicBitmap>, n: u32) -> Prog {
    let mut b = Prog::new();
    for i in 0..n {
        b.store(gaddr(DATA_ENTRY) + u64::from(i) * 4, i + 1);
    }
    b.cmd(OP_BATCH_END, &[]);
    put(m, BATCH_ENTRY, 0, &b);
    let mut r = Prog::new();
    let a = gaddr(BATCH_ENTRY);
    r.cmd(OP_BATCH_START, &[a as u32, (a >> 32) as u32]);
    r
}

pub fn read_u32(m: &GuestMemoryMmap<AtomicBitmap>, gpa: u64) -> u32 {
    m.read_obj::<u32>(GuestAddress(gpa)).unwrap()
}

/// A copy of `m`'s RAM in new guest memory (what the VMM migrates).
pub fn copy_ram(m: &GuestMemoryMmap<AtomicBitmap>) -> GuestMemoryMmap<AtomicBitmap> {
    let n = mem();
    let mut buf = vec![0u8; RAM];
    m.read_slice(&mut buf, GuestAddress(0)).unwrap();
    n.write_slice(&buf, GuestAddress(0)).unwrap();
    n
}

/// Save through v2: walk to STOP_COPY (through PRE_COPY if asked) and read the stream.
pub fn save_v2(d: &mut Vgpu, chunk: usize) -> Vec<u8> {
    d.set_mig_state(MigState::StopCopy).unwrap();
    let expected = d.stop_copy_size().unwrap();
    let out = drain(d, chunk);
    assert_eq!(out.len() as u64, expected, "stop_copy_size is exact");
    assert_eq!(d.stop_copy_size().unwrap(), 0);
    out
}

/// Read the saving stream until it returns 0.
/// Read the saving stream until nothing more is available: ENOMSG in pre-copy ("nothing
/// for now"), a 0-length read in stop-copy (the end).
pub fn drain(d: &mut Vgpu, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = match d.read_data(open_stream(d), &mut buf) {
            Err(mdev_core::MigrationError::NoDataNow { state }) => {
                assert!(matches!(state, MigState::PreCopy | MigState::PreCopyP2p));
                return out;
            }
            r => r.unwrap(),
        };
        if n == 0 {
            assert_eq!(
                d.mig_state(),
                MigState::StopCopy,
                "0 ends the stream only in STOP_COPY"
            );
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Resume `stream` through v2 in `chunk`-sized writes, then walk to `end`.
pub fn load_v2(
    d: &mut Vgpu,
    stream: &[u8],
    chunk: usize,
) -> Result<MigState, mdev_core::MigrationError> {
    let s = d
        .set_mig_state(MigState::Resuming)?
        .stream
        .expect("RESUMING opens a stream");
    for c in stream.chunks(chunk) {
        d.write_data(s, c)?;
    }
    d.set_mig_state(MigState::Stop).map(|t| t.state)
}

/// The device's open data session (the handle the arc that opened it returned).
pub fn open_stream(d: &Vgpu) -> mdev_core::DataStream {
    d.mig.open_stream().expect("a data session is open")
}

/// A handle no session of `d` ever had.
pub fn stale_stream() -> mdev_core::DataStream {
    mdev_core::DataStream::from_id(u64::MAX)
}
