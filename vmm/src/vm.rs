//! A VM: guest RAM, one simulated vCPU running the workload driver, and one vGPU.

use std::sync::Arc;

use mdev_core::VfioDevice;
use pci_config_replay::{BarMapping, HostRegion, HostResources, InterruptRoute};
use sha2::{Digest, Sha256};
use slog::{debug, info, warn, Logger};
use snafu::ResultExt;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};
use vgpu_sim::device::{Vgpu, VgpuConfig};
use vgpu_sim::regs;
use vgpu_sim::workload::layout::{BAR0_GPA, BAR2_GPA, MIN_GUEST_RAM, MMIO_HOLE_START};
use vgpu_sim::workload::{self, GuestBus, Params, StepOutcome};
use vgpu_sim::DirtyTracking;

use crate::bus::VmBus;
use crate::error::*;
use crate::irq::{msi_vector, IrqQueue};
use crate::memory::{self, GuestMem};
use crate::ratelimit::RateLimit;
use crate::vcpu::Vcpu;

/// Commands the device may run per vCPU step.
pub const DEFAULT_BUDGET: usize = 64;

/// How to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// mdev type of the vGPU.
    pub mdev_type: String,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// How the device tracks its DMA writes.
    pub dirty_tracking: DirtyTracking,
    /// Interrupt sink id per vector; differs between hosts (no accidental equality).
    pub irq_sink_base: u32,
    /// Offset of each BAR inside the host region that backs it (`HostRegion::offset`), as
    /// a VMM that reaches regions through one larger window sees them; the bus takes it off
    /// again before every region access. 0 (the default) addresses the device's regions
    /// directly. Tests give source and target different values, so a BAR map resolved
    /// against the wrong host's resources cannot work by accident.
    pub bar_region_offset: u64,
    /// Logger.
    pub log: Logger,
}

impl VmConfig {
    /// A config with default RAM (256 MiB) and precise tracking.
    pub fn new(mdev_type: &str, log: Logger) -> Self {
        Self {
            mdev_type: mdev_type.to_string(),
            ram_size: 256 << 20,
            dirty_tracking: DirtyTracking::ShadowPt,
            irq_sink_base: 100,
            bar_region_offset: 0,
            log,
        }
    }
}

/// Where to stop a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// When the driver has rendered and acknowledged every frame up to its limit.
    Done,
    /// When the device has executed this many commands since boot (may be mid-batch).
    Command(u64),
    /// When the device has completed this many frames (the next may be under way).
    Frame(u64),
}

/// A running VM.
pub struct Vm {
    mem: GuestMem,
    dev: Vgpu,
    vcpu: Vcpu,
    irqs: Arc<IrqQueue>,
    host: HostResources,
    bars: Vec<BarMapping>,
    routes: Vec<InterruptRoute>,
    sink_base: u32,
    mdev_type: String,
    budget: usize,
    log: Logger,
    warn_limit: RateLimit,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mdev_type", &self.mdev_type)
            .field("bars", &self.bars)
            .field("routes", &self.routes)
            .finish()
    }
}

impl Vm {
    /// Create guest RAM and the vGPU, and wire its interrupts. The guest is not booted.
    pub fn new(cfg: &VmConfig) -> Result<Self> {
        if cfg.ram_size < MIN_GUEST_RAM {
            return Err(VmmError::Memory {
                source: memory::MemoryError::BadSize {
                    size: cfg.ram_size,
                    limit: MMIO_HOLE_START,
                },
            });
        }
        let mem = memory::create(cfg.ram_size, MMIO_HOLE_START).context(MemorySnafu)?;
        let ty = vgpu_sim::VgpuType::by_name(&cfg.mdev_type).context(MdevSnafu)?;
        let mut dcfg = VgpuConfig::new(ty, mem.clone());
        dcfg.dirty_tracking = cfg.dirty_tracking;
        dcfg.logger = cfg.log.clone();
        let dev = Vgpu::new(dcfg).map_err(|e| VmmError::CreateDevice {
            reason: e.to_string(),
        })?;
        let host = HostResources {
            bar_regions: [
                Some(HostRegion::vfio_bar(0, cfg.bar_region_offset)),
                None,
                Some(HostRegion::vfio_bar(2, cfg.bar_region_offset)),
                None,
                None,
                None,
            ],
            interrupt_sinks: (0..u32::from(regs::MSIX_VECTORS))
                .map(|v| cfg.irq_sink_base + v)
                .collect(),
        };
        let irqs = IrqQueue::new();
        let mut vm = Self {
            mem,
            dev,
            vcpu: Vcpu::new(),
            irqs,
            host,
            bars: Vec::new(),
            routes: Vec::new(),
            sink_base: cfg.irq_sink_base,
            mdev_type: cfg.mdev_type.clone(),
            budget: DEFAULT_BUDGET,
            log: cfg.log.clone(),
            warn_limit: RateLimit::default(),
        };
        vm.wire_irqs()?;
        Ok(vm)
    }

    fn wire_irqs(&mut self) -> Result<()> {
        for index in [VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX] {
            let sink: Arc<dyn mdev_core::IrqSink> = self.irqs.clone();
            self.dev
                .set_irqs(index, 0, 1, Some(sink))
                .context(DeviceSnafu {
                    doing: "wiring interrupts",
                })?;
        }
        Ok(())
    }

    /// Firmware: place the BARs, then load the workload parameters into guest RAM.
    pub fn boot(&mut self, params: &Params) -> Result<()> {
        let gmem = self.gmem_size();
        params.validate(gmem).context(WorkloadSnafu)?;
        for (off, addr) in [(0x10u64, BAR0_GPA), (0x18, BAR2_GPA)] {
            for (i, half) in [addr as u32, (addr >> 32) as u32].into_iter().enumerate() {
                self.dev
                    .region_write(
                        VFIO_PCI_CONFIG_REGION_INDEX,
                        off + 4 * i as u64,
                        &half.to_le_bytes(),
                    )
                    .context(DeviceSnafu {
                        doing: "placing BARs",
                    })?;
            }
        }
        self.refresh_maps();
        params.store(&mut self.bus_view());
        info!(self.log, "guest booted"; "mdev_type" => &self.mdev_type, "ram" => memory::size(&self.mem),
              "seed" => params.seed, "frames" => params.frame_limit);
        Ok(())
    }

    /// Change the driver's frame limit (the host's knob in the parameter block).
    pub fn set_frame_limit(&mut self, frames: u64) -> Result<()> {
        let mut bus = self.bus_view();
        let mut p = Params::load(&mut bus).ok_or_else(|| VmmError::DriverFailed {
            why: "no workload parameters in guest RAM".into(),
        })?;
        p.frame_limit = frames;
        p.validate(u64::MAX).context(WorkloadSnafu)?;
        p.store(&mut bus);
        Ok(())
    }

    /// The workload parameters in guest RAM.
    pub fn params(&mut self) -> Option<Params> {
        Params::load(&mut self.bus_view())
    }

    /// Rebuild the BAR map and interrupt routes from the device's config space.
    pub fn refresh_maps(&mut self) {
        match self.dev.config().bar_map(&self.host) {
            Ok(b) => self.bars = b,
            Err(e) => warn!(self.log, "BAR map incomplete"; "error" => %e),
        }
        match self.dev.config().interrupt_routes(&self.host) {
            Ok(r) => self.routes = r,
            Err(e) => warn!(self.log, "interrupt routes incomplete"; "error" => %e),
        }
        debug!(self.log, "maps refreshed"; "bars" => self.bars.len(), "routes" => self.routes.len());
    }

    /// Install a BAR map and routes computed elsewhere (a config replay on the target).
    pub fn install_maps(&mut self, bars: Vec<BarMapping>, routes: Vec<InterruptRoute>) {
        self.bars = bars;
        self.routes = routes;
    }

    /// The current BAR map.
    pub fn bars(&self) -> &[BarMapping] {
        &self.bars
    }

    /// The current interrupt routes.
    pub fn routes(&self) -> &[InterruptRoute] {
        &self.routes
    }

    /// This VM's host resources (region per BAR, sink per vector).
    pub fn host_resources(&self) -> &HostResources {
        &self.host
    }

    /// A guest CPU read: `buf.len()` bytes at guest-physical `gpa`, through the same bus
    /// the vCPU uses (guest RAM, a BAR where the current BAR map places it, or the ECAM
    /// config window). Unbacked addresses and failed accesses read as all ones.
    pub fn guest_read(&mut self, gpa: u64, buf: &mut [u8]) {
        self.bus_view().read(gpa, buf);
    }

    /// A guest CPU write of `data` at guest-physical `gpa`, through the same bus the vCPU
    /// uses: a write that changes the config space (ECAM, or the MSI-X table in BAR0)
    /// rebuilds the BAR map and interrupt routes, as the vCPU's writes do. Interrupts the
    /// write makes the device signal (a pending MSI-X vector unmasked) are delivered to the
    /// vCPU through the routes before this returns. Writes to unbacked addresses are
    /// dropped.
    pub fn guest_write(&mut self, gpa: u64, data: &[u8]) {
        self.bus_view().write(gpa, data);
        self.deliver_irqs();
    }

    /// A bus view for host-side accesses to guest memory (loader, inspection).
    fn bus_view(&mut self) -> VmBus<'_, Vgpu> {
        VmBus {
            mem: &self.mem,
            dev: &mut self.dev,
            bars: &mut self.bars,
            routes: &mut self.routes,
            host: &self.host,
            log: &self.log,
            warn_limit: &mut self.warn_limit,
        }
    }

    /// Deliver the device's signals to the vCPU through the routing table.
    fn deliver_irqs(&mut self) {
        for (index, vector) in self.irqs.drain() {
            let route = self
                .routes
                .iter()
                .find(|r| r.kind.vfio_irq_index() == index && u32::from(r.vector) == vector);
            match route {
                Some(r) if r.sink == self.sink_base + vector => match msi_vector(r.address, r.data)
                {
                    Some(v) => self.vcpu.inject(v),
                    None => {
                        if self.warn_limit.allow() {
                            warn!(self.log, "MSI to a non-APIC address dropped"; "address" => format!("{:#x}", r.address));
                        }
                    }
                },
                _ => {
                    if self.warn_limit.allow() {
                        warn!(self.log, "interrupt without a route dropped"; "index" => index, "vector" => vector);
                    }
                }
            }
        }
    }

    /// One vCPU step, then up to `budget` device commands.
    pub fn step(&mut self, budget: usize) -> (StepOutcome, usize) {
        self.deliver_irqs();
        let out = {
            let mut bus = VmBus {
                mem: &self.mem,
                dev: &mut self.dev,
                bars: &mut self.bars,
                routes: &mut self.routes,
                host: &self.host,
                log: &self.log,
                warn_limit: &mut self.warn_limit,
            };
            self.vcpu.step(&mut bus)
        };
        let ran = self.dev.run(budget);
        self.deliver_irqs();
        (out, ran)
    }

    /// Run only the device for up to `budget` commands, then queue its interrupts to the
    /// vCPU without running the vCPU (used to place a switchover exactly).
    pub fn step_device(&mut self, budget: usize) -> usize {
        let ran = self.dev.run(budget);
        self.deliver_irqs();
        ran
    }

    /// Commands the device has executed since boot (its `CMD_COUNT` register).
    pub fn command_count(&mut self) -> u64 {
        u64::from(self.reg(regs::REG_CMD_COUNT))
    }

    /// Frames the device has completed.
    pub fn completed_frames(&mut self) -> u64 {
        workload::completed_frames(&mut self.bus_view())
    }

    /// Read a device register through BAR0's region (host side).
    pub fn reg(&mut self, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        match self
            .dev
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, u64::from(reg), &mut b)
        {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => u32::MAX,
        }
    }

    /// Run until `stop`. Returns the number of vCPU steps taken.
    pub fn run(&mut self, stop: StopAt) -> Result<u64> {
        let mut steps = 0u64;
        let mut idle_rounds = 0u32;
        loop {
            let budget = match stop {
                StopAt::Command(c) => {
                    let done = self.command_count();
                    if done >= c {
                        return Ok(steps);
                    }
                    (c - done).min(self.budget as u64) as usize
                }
                StopAt::Frame(f) => {
                    if self.completed_frames() >= f {
                        return Ok(steps);
                    }
                    self.budget
                }
                StopAt::Done => self.budget,
            };
            let (out, ran) = self.step(budget);
            steps += 1;
            match out {
                StepOutcome::Done if !self.vcpu.has_pending() => {
                    match stop {
                        StopAt::Command(c) => {
                            let done = self.command_count();
                            return Err(VmmError::StopPoint {
                                what: format!("at command {c}"),
                                why: format!("the workload finished after {done} commands"),
                            });
                        }
                        StopAt::Frame(f) if self.completed_frames() < f => {
                            let done = self.completed_frames();
                            return Err(VmmError::StopPoint {
                                what: format!("at frame {f}"),
                                why: format!("the workload's frame limit is {done}"),
                            });
                        }
                        _ => {}
                    }
                    return Ok(steps);
                }
                StepOutcome::Failed => {
                    return Err(VmmError::DriverFailed {
                        why: "the driver found no parameters or an unexpected device".into(),
                    })
                }
                StepOutcome::Waiting if ran == 0 && !self.vcpu.has_pending() => {
                    idle_rounds += 1;
                    if idle_rounds > 10_000 {
                        let status = self.reg(regs::REG_ENGINE_STATUS);
                        let err = self.reg(regs::REG_ERROR_STATUS);
                        let frame = self.completed_frames();
                        return Err(VmmError::Stalled {
                            frame,
                            why: format!(
                                "the device is idle (engine status {status:#x}, error status {err:#x}) and the driver waits"
                            ),
                        });
                    }
                }
                _ => idle_rounds = 0,
            }
        }
    }

    /// The first `frames` entries of the checksum log.
    pub fn checksums(&mut self, frames: u64) -> Vec<u64> {
        workload::checksum_log(&mut self.bus_view(), frames)
    }

    /// SHA-256 of guest RAM.
    pub fn ram_digest(&self) -> [u8; 32] {
        memory::digest(&self.mem)
    }

    /// Graphics memory size of the vGPU.
    pub fn gmem_size(&self) -> u64 {
        self.dev
            .region_info(VFIO_PCI_BAR2_REGION_INDEX)
            .map(|i| i.size())
            .unwrap_or(0)
    }

    /// SHA-256 of graphics memory, read through the aperture region.
    pub fn gmem_digest(&mut self) -> [u8; 32] {
        let size = self.gmem_size();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            if self
                .dev
                .region_read(VFIO_PCI_BAR2_REGION_INDEX, off, &mut buf[..n])
                .is_err()
            {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        h.finalize().into()
    }

    /// The displayed frame as RGBA rows: (width, height, pixels).
    pub fn display_frame(&mut self) -> Option<(u32, u32, Vec<u8>)> {
        if self.reg(regs::REG_DSP_CTL) & regs::DSP_CTL_ENABLE == 0 {
            return None;
        }
        let surf = u64::from(self.reg(regs::REG_DSP_SURF));
        let stride = u64::from(self.reg(regs::REG_DSP_STRIDE));
        let size = self.reg(regs::REG_DSP_SIZE);
        let (w, h) = (size & 0xffff, size >> 16);
        if w == 0 || h == 0 || stride < u64::from(w) * 4 {
            return None;
        }
        let mut out = Vec::with_capacity((w * h * 4) as usize);
        let mut row = vec![0u8; w as usize * 4];
        for y in 0..u64::from(h) {
            self.dev
                .region_read(VFIO_PCI_BAR2_REGION_INDEX, surf + y * stride, &mut row)
                .ok()?;
            for px in row.chunks_exact(4) {
                // ARGB little-endian in memory: B, G, R, A.
                out.extend_from_slice(&[px[2], px[1], px[0], 0xff]);
            }
        }
        Some((w, h, out))
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// The device.
    pub fn device(&mut self) -> &mut Vgpu {
        &mut self.dev
    }

    /// The device (shared).
    pub fn device_ref(&self) -> &Vgpu {
        &self.dev
    }

    /// The vCPU.
    pub fn vcpu(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }

    /// The mdev type.
    pub fn mdev_type(&self) -> &str {
        &self.mdev_type
    }

    /// Logger.
    pub fn log(&self) -> &Logger {
        &self.log
    }
}
