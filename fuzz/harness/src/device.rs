//! The vGPU the device targets drive, reached only through its public VFIO face, and the
//! invariants every device target shares: a state digest to compare before and after a
//! refused input, and "the device is still migratable" (save it, load it into a fresh
//! device, and get the same state back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mdev_core::uapi::{
    VFIO_MIGRATION_PRE_COPY, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
};
use mdev_core::{DataStream, IrqSink, MigState, MigrationDevice, MigrationError, VfioDevice};
use pci_config_replay::caps::{msix, MSIX_BASE};
use pci_config_replay::regs::COMMAND;
use sha2::{Digest, Sha256};
use shadow_pt::DirtyTracking;
use vgpu_sim::regs::*;
use vgpu_sim::{Vgpu, VgpuConfig, VgpuState, VGPU_64};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM of the fuzzed device's VM.
pub const RAM: usize = 4 << 20;
/// Guest-physical base of the pages the GTT maps (entry i -> `RAM_GTT + i * 4 KiB`).
pub const RAM_GTT: u64 = 0x10_0000;
/// GTT entries mapped by [`booted`].
pub const MAPPED: u64 = 64;
/// Ring pages (entries 0..4), then batch pages.
pub const RING_PAGES: u64 = 4;
/// Graphics memory pages whose bytes the state digest covers (the first 256 KiB, where
/// the seeds' render targets and the seeds' contexts put their pages): hashing all 64 MiB
/// per execution would make the targets a hundred times slower.
pub const DIGEST_GMEM_PAGES: u64 = 64;

/// Counts the interrupts the device signals.
#[derive(Debug, Default)]
pub struct CountingSink(pub AtomicU64);

impl IrqSink for CountingSink {
    fn signal(&self, _index: u32, _vector: u32) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Guest RAM for one execution.
pub fn guest_mem() -> GuestMemoryMmap<AtomicBitmap> {
    // 4 MiB at 0 is always a valid layout; a failure here is the machine, not the input.
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("guest RAM")
}

/// A `vgpu-64` fresh out of reset over `mem`, with a data window of `window` bytes.
pub fn fresh_on(mem: GuestMemoryMmap<AtomicBitmap>, window: usize) -> Vgpu {
    let mut cfg = VgpuConfig::new(VGPU_64, mem);
    cfg.dirty_tracking = DirtyTracking::ShadowPt;
    cfg.state_window = window;
    Vgpu::new(cfg).expect("a vgpu-64 with the default features")
}

/// A `vgpu-64` fresh out of reset over new guest RAM, with the default window.
pub fn fresh() -> Vgpu {
    fresh_on(guest_mem(), state_region::DEFAULT_WINDOW)
}

fn write32(d: &mut Vgpu, index: u32, off: u64, v: u32) {
    // Guest accesses to valid offsets never fail; the result is not what is under test.
    let _ = d.region_write(index, off, &v.to_le_bytes());
}

/// Graphics address of GTT entry `e`.
pub fn gaddr(e: u64) -> u64 {
    SYS_BASE + e * PAGE_SIZE
}

/// A device as a guest driver leaves it after boot: memory and bus mastering on, MSI-X
/// vector 0 enabled with a counting sink, GTT entries 0..[`MAPPED`] mapped writable to
/// guest RAM, interrupts unmasked, a 4-page ring at entry 0 enabled (head = tail = 0).
pub fn booted(mem: GuestMemoryMmap<AtomicBitmap>) -> (Vgpu, Arc<CountingSink>) {
    let mut d = fresh_on(mem, state_region::DEFAULT_WINDOW);
    let cfg = VFIO_PCI_CONFIG_REGION_INDEX;
    let _ = d.region_write(cfg, COMMAND as u64, &0x0006u16.to_le_bytes());
    for (off, v) in [(0, 0xfee0_0000u32), (4, 0), (8, 0x41), (12, 0)] {
        write32(
            &mut d,
            VFIO_PCI_BAR0_REGION_INDEX,
            MSIX_TABLE_OFFSET + off,
            v,
        );
    }
    let ctl = (MSIX_BASE + msix::CONTROL) as u64;
    let _ = d.region_write(cfg, ctl, &msix::CTL_ENABLE.to_le_bytes());
    let sink = Arc::new(CountingSink::default());
    d.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, Some(sink.clone()))
        .expect("one MSI-X vector");
    for e in 0..MAPPED {
        let pte = (RAM_GTT + e * PAGE_SIZE) | GTT_PRESENT | GTT_WRITABLE;
        let _ = d.region_write(
            VFIO_PCI_BAR0_REGION_INDEX,
            GTT_WINDOW_OFFSET + e * GTT_ENTRY_SIZE,
            &pte.to_le_bytes(),
        );
    }
    let bar0 = VFIO_PCI_BAR0_REGION_INDEX;
    write32(&mut d, bar0, u64::from(REG_IMR), 0);
    write32(&mut d, bar0, u64::from(REG_IER), INT_ALL);
    write32(&mut d, bar0, u64::from(REG_RING_CTL), 0);
    write32(&mut d, bar0, u64::from(REG_RING_START_LO), gaddr(0) as u32);
    write32(
        &mut d,
        bar0,
        u64::from(REG_RING_START_HI),
        (gaddr(0) >> 32) as u32,
    );
    write32(&mut d, bar0, u64::from(REG_RING_HEAD), 0);
    write32(&mut d, bar0, u64::from(REG_RING_TAIL), 0);
    let ctl = RING_CTL_ENABLE | ((RING_PAGES as u32 - 1) << RING_CTL_SIZE_SHIFT);
    write32(&mut d, bar0, u64::from(REG_RING_CTL), ctl);
    (d, sink)
}

/// Write `bytes` into guest RAM behind GTT entry `entry` (the guest writing its ring or
/// a batch).
pub fn put(mem: &GuestMemoryMmap<AtomicBitmap>, entry: u64, bytes: &[u8]) {
    let gpa = RAM_GTT + entry * PAGE_SIZE;
    let room = (RAM as u64).saturating_sub(gpa) as usize;
    let _ = mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(gpa));
}

/// What "changes nothing" compares: the migration state, every register, the GTT, the
/// engine and config space, and the first [`DIGEST_GMEM_PAGES`] of graphics memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDigest {
    /// The migration state.
    pub mig: MigState,
    /// Registers, owed interrupt, GTT, engine, config space.
    pub state: VgpuState,
    /// SHA-256 of the sampled graphics memory.
    pub gmem: [u8; 32],
}

/// The device's digest now.
pub fn digest(d: &Vgpu) -> DeviceDigest {
    let bytes = d.graphics_memory().bytes();
    let n = (DIGEST_GMEM_PAGES * PAGE_SIZE) as usize;
    DeviceDigest {
        mig: d.mig_state(),
        state: d.state(),
        gmem: Sha256::digest(&bytes[..n.min(bytes.len())]).into(),
    }
}

/// Read the saving stream `s` until its end (STOP_COPY) or until nothing is available now
/// (PRE_COPY), in `chunk`-byte reads.
pub fn drain(d: &mut Vgpu, s: DataStream, chunk: usize) -> Result<Vec<u8>, MigrationError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk.max(1)];
    loop {
        match d.read_data(s, &mut buf) {
            Err(MigrationError::NoDataNow { .. }) => return Ok(out),
            Err(e) => return Err(e),
            Ok(0) => return Ok(out),
            Ok(n) => {
                assert!(n <= buf.len(), "read_data said {n} bytes of {}", buf.len());
                out.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// Load `context` into `d` through v2 (RESUMING, writes of `chunk` bytes, STOP).
pub fn load(d: &mut Vgpu, context: &[u8], chunk: usize) -> Result<MigState, MigrationError> {
    let s = session(d.set_mig_state(MigState::Resuming)?)?;
    for c in context.chunks(chunk.max(1)) {
        d.write_data(s, c)?;
    }
    Ok(d.set_mig_state(MigState::Stop)?.state)
}

/// The data stream a state change opened (an arc into a saving or resuming state from a
/// state outside the session always opens one).
pub fn session(t: mdev_core::MigTransition) -> Result<DataStream, MigrationError> {
    t.stream.ok_or(MigrationError::BadData {
        reason: format!("no data stream opened on the way to {}", t.state),
    })
}

/// Save `d` (running or stopped): the whole context. A running device goes through
/// PRE_COPY, as a live migration does, so that the context carries only the graphics
/// memory pages that are not zero (a stop-copy without pre-copy carries all 64 MiB, which
/// would make every execution hash and copy 64 MiB twice).
pub fn save(d: &mut Vgpu) -> Result<Vec<u8>, MigrationError> {
    if d.mig_state() == MigState::Running && d.migration_flags() & VFIO_MIGRATION_PRE_COPY != 0 {
        let s = session(d.set_mig_state(MigState::PreCopy)?)?;
        let mut out = drain(d, s, 1 << 20)?;
        d.set_mig_state(MigState::StopCopy)?;
        out.extend(drain(d, s, 1 << 20)?);
        return Ok(out);
    }
    let s = session(d.set_mig_state(MigState::StopCopy)?)?;
    drain(d, s, 1 << 20)
}

/// Whether an input of `len` bytes gets the (slow: a save and a load of half a megabyte
/// of context, about 20 ms under the sanitizer) migratability check: one input in eight,
/// chosen by its length, so that a finding reproduces from the saved input alone.
pub fn check_migratable(len: usize) -> bool {
    len.is_multiple_of(8)
}

/// The invariant after any sequence of guest or VMM accesses that left the device running
/// or stopped: it still saves, its context loads into a fresh device, and the fresh device
/// then has the same state. Panics (a fuzz finding) otherwise. Devices in another state
/// (a fuzzed sequence left them mid-migration or in ERROR) are not checked.
pub fn assert_migratable(d: &mut Vgpu) {
    if !matches!(d.mig_state(), MigState::Running | MigState::Stop) {
        return;
    }
    let context = save(d).expect("a running or stopped device saves");
    let mut target = fresh();
    if let Err(e) = load(&mut target, &context, 1 << 20) {
        panic!("the device's own context does not load: {e}");
    }
    let (src, dst) = (d.state(), target.state());
    assert_eq!(
        src, dst,
        "the loaded device's state differs from the saved one's"
    );
}
