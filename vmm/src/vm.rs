//! A VM: guest RAM, one simulated vCPU running a guest program, and one device reached
//! only through the VFIO contract. What the device and the guest are, and where the
//! platform puts things, comes from the [`VmFactory`] in the [`VmConfig`].

use std::sync::{Arc, Mutex, MutexGuard};

use mdev_core::VfioDevice;
use pci_config_replay::{BarMapping, HostRegion, HostResources, InterruptRoute};
use slog::{debug, info, warn, Logger};
use snafu::ResultExt;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};

use crate::bus::{lock_face, VmBus};
use crate::error::*;
use crate::irq::{msi_vector, IrqQueue};
use crate::memory::{self, GuestMem};
use crate::pci::PciFace;
use crate::platform::{
    GuestImage, GuestProgram, GuestStep, PlatformLayout, SimHardware, VmFactory,
};
use crate::ratelimit::RateLimit;
use crate::vcpu::Vcpu;

mod irqfd;
mod kvm_exits;
mod kvm_run;

/// The device as the VMM holds it: behind one lock, shared by the VMM's own thread and,
/// with a KVM guest, the vCPU and device threads.
type SharedDevice = mdev_core::Shared<Box<dyn VfioDevice>>;

pub use kvm_run::KvmRunReport;

/// Units of hardware work the platform allows per vCPU step.
pub const DEFAULT_BUDGET: usize = 64;

/// How to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Device type (for an mdev, the type name); the factory builds a device of it.
    pub mdev_type: String,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// Interrupt sink id per vector; differs between hosts (no accidental equality).
    pub irq_sink_base: u32,
    /// Offset of each BAR inside the host region that backs it (`HostRegion::offset`), as
    /// a VMM that reaches regions through one larger window sees them; the bus takes it off
    /// again before every region access. 0 (the default) addresses the device's regions
    /// directly. Tests give source and target different values, so a BAR map resolved
    /// against the wrong host's resources cannot work by accident.
    pub bar_region_offset: u64,
    /// Builds the device and the guest program.
    pub factory: Arc<dyn VmFactory>,
    /// Logger.
    pub log: Logger,
}

impl VmConfig {
    /// A config with default RAM (256 MiB).
    pub fn new(mdev_type: &str, factory: Arc<dyn VmFactory>, log: Logger) -> Self {
        Self {
            mdev_type: mdev_type.to_string(),
            ram_size: 256 << 20,
            irq_sink_base: 100,
            bar_region_offset: 0,
            factory,
            log,
        }
    }
}

/// Where to stop a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// When the guest program is done and nothing is pending.
    Done,
    /// When the hardware has done this much work since boot (for the vGPU: commands
    /// executed; may be mid-batch).
    Command(u64),
    /// When the guest's progress counter (for the vGPU workload: completed frames)
    /// reaches this value.
    Frame(u64),
}

/// Take the device's signals from `irqs` and send each through its route (the MSI the
/// guest programmed for that vector on this host's sink) with `send(address, data)`, which
/// says whether the message reached a CPU. Signals without a route are dropped with a
/// rate-limited warning, as an interrupt to an unprogrammed vector is on real hardware.
fn deliver(
    irqs: &IrqQueue,
    routes: &[InterruptRoute],
    sink_base: u32,
    log: &Logger,
    warn_limit: &mut RateLimit,
    mut send: impl FnMut(u64, u32) -> bool,
) {
    for (index, vector) in irqs.drain() {
        let route = routes
            .iter()
            .find(|r| r.kind.vfio_irq_index() == index && u32::from(r.vector) == vector);
        match route {
            Some(r) if r.sink == sink_base + vector => {
                if !send(r.address, r.data) && warn_limit.allow() {
                    warn!(log, "MSI to a non-APIC address dropped";
                          "address" => format!("{:#x}", r.address));
                }
            }
            _ => {
                if warn_limit.allow() {
                    warn!(log, "interrupt without a route dropped";
                          "index" => index, "vector" => vector);
                }
            }
        }
    }
}

/// A running VM.
pub struct Vm {
    mem: GuestMem,
    dev: SharedDevice,
    hw: Box<dyn SimHardware>,
    guest: Box<dyn GuestProgram>,
    image: Option<Arc<dyn GuestImage>>,
    /// A KVM vCPU has booted the image or been restored (it boots once per VM).
    kvm_booted: bool,
    /// The KVM vCPU between runs.
    kvm: Option<kvm_run::KvmSession>,
    /// The hang guard of a KVM run.
    kvm_stall: std::time::Duration,
    /// A KVM machine made ahead of a restore ([`Vm::prepare_kvm`]).
    kvm_spare: Option<crate::kvm::KvmMachine>,
    vcpu: Vcpu,
    irqs: Arc<IrqQueue>,
    face: Arc<Mutex<PciFace>>,
    layout: PlatformLayout,
    cfg: VmConfig,
    budget: usize,
    warn_limit: RateLimit,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mdev_type", &self.cfg.mdev_type)
            .field("face", &*lock_face(&self.face))
            .finish()
    }
}

impl Vm {
    /// Create guest RAM, the device and the guest program (through the factory), probe the
    /// device's PCI face and wire its interrupts. The guest is not booted.
    pub fn new(cfg: &VmConfig) -> Result<Self> {
        let layout = cfg.factory.layout();
        if cfg.ram_size < layout.min_ram || cfg.ram_size > layout.mmio_hole_start {
            return Err(VmmError::Memory {
                source: memory::MemoryError::BadSize {
                    size: cfg.ram_size,
                    limit: layout.mmio_hole_start,
                },
            });
        }
        let mem = if cfg.factory.shared_memory() {
            memory::create_shared(cfg.ram_size, layout.mmio_hole_start)
        } else {
            memory::create(cfg.ram_size, layout.mmio_hole_start)
        }
        .context(MemorySnafu)?;
        let parts = cfg
            .factory
            .parts(&cfg.mdev_type, &mem, &cfg.log)
            .map_err(|e| VmmError::CreateDevice {
                reason: e.to_string(),
            })?;
        let mut dev = SharedDevice::new(parts.device);
        let vectors = dev
            .irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map(|i| i.count)
            .unwrap_or(0);
        let mut bar_regions = [None; 6];
        for &(bar, _) in &layout.bar_gpas {
            if let Some(slot) = bar_regions.get_mut(usize::from(bar)) {
                *slot = Some(HostRegion::vfio_bar(bar, cfg.bar_region_offset));
            }
        }
        let host = HostResources {
            bar_regions,
            interrupt_sinks: (0..vectors).map(|v| cfg.irq_sink_base + v).collect(),
        };
        let face = PciFace::attach(&mut dev, host).context(PciSnafu)?;
        let mut vm = Self {
            mem,
            dev,
            hw: parts.hardware,
            guest: parts.guest,
            image: parts.image,
            kvm_booted: false,
            kvm: None,
            kvm_stall: kvm_run::DEFAULT_STALL,
            kvm_spare: None,
            vcpu: Vcpu::new(),
            irqs: IrqQueue::new(),
            face: Arc::new(Mutex::new(face)),
            layout,
            cfg: cfg.clone(),
            budget: DEFAULT_BUDGET,
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

    /// Firmware: place the memory BARs where the platform layout says, through the config
    /// region, as a BIOS does before the guest's driver looks for them.
    pub fn firmware(&mut self) -> Result<()> {
        for &(bar, addr) in &self.layout.bar_gpas {
            let off = 0x10 + 4 * u64::from(bar);
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
        info!(self.cfg.log, "firmware placed the BARs"; "mdev_type" => &self.cfg.mdev_type,
              "ram" => memory::size(&self.mem));
        Ok(())
    }

    /// Re-read the BAR map and interrupt routes through the device's regions.
    pub fn refresh_maps(&mut self) {
        let mut face = lock_face(&self.face);
        if let Err(e) = face.refresh(&mut self.dev) {
            warn!(self.cfg.log, "cannot read the device's PCI face"; "error" => %e);
        }
        debug!(self.cfg.log, "maps refreshed"; "bars" => face.bars().len(),
               "routes" => face.routes().len());
    }

    /// The current BAR map.
    pub fn bars(&self) -> Vec<BarMapping> {
        lock_face(&self.face).bars().to_vec()
    }

    /// The current interrupt routes.
    pub fn routes(&self) -> Vec<InterruptRoute> {
        lock_face(&self.face).routes().to_vec()
    }

    /// This VM's host resources (region per BAR, sink per vector).
    pub fn host_resources(&self) -> HostResources {
        lock_face(&self.face).host().clone()
    }

    /// The VMM's view of the device's PCI face (locked: it is shared with the vCPU thread
    /// of a running KVM guest).
    pub fn pci(&self) -> MutexGuard<'_, PciFace> {
        lock_face(&self.face)
    }

    /// The PCI face and the device together (config save and replay).
    pub fn pci_and_device(&mut self) -> (MutexGuard<'_, PciFace>, &mut dyn VfioDevice) {
        (lock_face(&self.face), &mut self.dev)
    }

    /// `VFIO_DEVICE_RESET` with the configuration space kept: the VMM reads the config
    /// through the config region, resets the device, and replays the config (BARs,
    /// COMMAND, MSI/MSI-X routing), as vfio-pci saves and restores config around a function
    /// reset. This is how a device in the migration ERROR state comes back (QEMU's
    /// fallback); the device's own context is back at power-on.
    pub fn reset_device(&mut self) -> Result<()> {
        let (mut face, dev) = self.pci_and_device();
        let saved = face.read_state(dev).context(PciSnafu)?;
        dev.reset().context(DeviceSnafu {
            doing: "resetting the device",
        })?;
        face.replay(dev, &saved).context(PciSnafu)?;
        drop(face);
        warn!(
            self.log(),
            "device reset; its configuration space was replayed"
        );
        Ok(())
    }

    /// A guest CPU read: `buf.len()` bytes at guest-physical `gpa`, through the same bus
    /// the vCPU uses (guest RAM, a BAR where the current BAR map places it, or the ECAM
    /// config window). Unbacked addresses and failed accesses read as all ones.
    pub fn guest_read(&mut self, gpa: u64, buf: &mut [u8]) {
        use crate::platform::GuestBus;
        self.bus_view().read(gpa, buf);
    }

    /// A guest CPU write of `data` at guest-physical `gpa`, through the same bus the vCPU
    /// uses: a write that changes the config space (ECAM, or the MSI-X table in BAR0)
    /// rebuilds the BAR map and interrupt routes, as the vCPU's writes do. Interrupts the
    /// write makes the device signal are delivered to the vCPU before this returns.
    pub fn guest_write(&mut self, gpa: u64, data: &[u8]) {
        use crate::platform::GuestBus;
        self.bus_view().write(gpa, data);
        self.deliver_irqs();
    }

    fn bus_view(&mut self) -> VmBus<'_> {
        self.split().0
    }

    /// The bus, and beside it the vCPU and the guest program that run on it.
    fn split(&mut self) -> (VmBus<'_>, &mut Vcpu, &mut dyn GuestProgram) {
        let bus = VmBus {
            mem: &self.mem,
            dev: &mut self.dev,
            face: &self.face,
            ecam_gpa: self.layout.ecam_gpa,
            log: &self.cfg.log,
            warn_limit: &mut self.warn_limit,
        };
        (bus, &mut self.vcpu, self.guest.as_mut())
    }

    /// Deliver the device's signals to the vCPU through the routing table.
    fn deliver_irqs(&mut self) {
        let (vcpu, log, limit) = (&mut self.vcpu, &self.cfg.log, &mut self.warn_limit);
        deliver(
            &self.irqs,
            lock_face(&self.face).routes(),
            self.cfg.irq_sink_base,
            log,
            limit,
            |address, data| match msi_vector(address, data) {
                Some(v) => {
                    vcpu.inject(v);
                    true
                }
                None => false,
            },
        );
    }

    /// Pages the guest's CPU wrote since the last harvest: the VMM's bitmap over guest RAM
    /// (writes through vm-memory, including the simulated vCPU's), merged with KVM's dirty
    /// log when the guest runs on a KVM vCPU (its writes bypass vm-memory).
    pub fn harvest_cpu_dirty(&self) -> Result<mdev_core::DirtyBitmap> {
        let mut cpu = memory::harvest_dirty(&self.mem);
        self.harvest_kvm_dirty(&mut cpu)?;
        Ok(cpu)
    }

    /// One vCPU step, then up to `budget` units of hardware work. While the guest runs on
    /// its KVM vCPU there is nothing to step on this thread: it yields briefly instead.
    pub fn step(&mut self, budget: usize) -> (GuestStep, usize) {
        if self.kvm_running() {
            std::thread::sleep(std::time::Duration::from_micros(100));
            return (GuestStep::Waiting, 0);
        }
        self.deliver_irqs();
        let out = {
            let (mut bus, vcpu, guest) = self.split();
            vcpu.step(&mut bus, guest)
        };
        let ran = self.hw.advance(budget);
        self.deliver_irqs();
        (out, ran)
    }

    /// Advance only the hardware by up to `budget` units, then queue its interrupts to the
    /// vCPU without running the vCPU (used to place a switchover exactly).
    pub fn step_device(&mut self, budget: usize) -> usize {
        if self.kvm_running() {
            return 0;
        }
        let ran = self.hw.advance(budget);
        self.deliver_irqs();
        ran
    }

    /// Hardware work done since boot (for the vGPU: commands executed).
    pub fn command_count(&mut self) -> u64 {
        self.hw.work_done()
    }

    /// The guest's progress counter (for the vGPU workload: completed frames).
    pub fn completed_frames(&mut self) -> u64 {
        let (mut bus, _, guest) = self.split();
        guest.progress(&mut bus)
    }

    /// The vCPU record for a stream: the KVM vCPU's state if the guest runs on one, else
    /// the simulated vCPU's.
    pub fn vcpu_record(&self) -> Result<crate::vcpu::SavedVcpu> {
        match self.kvm_vcpu_state() {
            Some(s) => Ok(crate::vcpu::SavedVcpu::Kvm(Box::new(s?))),
            None => Ok(crate::vcpu::SavedVcpu::Sim(self.vcpu.state())),
        }
    }

    /// Whether the guest's CPU state is a KVM vCPU's (booted or restored, not given up).
    pub fn on_kvm(&self) -> bool {
        self.kvm.is_some()
    }

    /// Before the simulated vCPU runs: a KVM vCPU that holds the guest's CPU state is
    /// given up if it stopped between two driver steps (everything is then in guest RAM),
    /// and refused otherwise (its registers would be lost).
    fn take_over_from_kvm(&mut self) -> Result<()> {
        match &self.kvm {
            None => Ok(()),
            Some(s) if s.at_boundary && !s.is_running() => {
                self.kvm = None;
                // The irqfds went with the machine: the simulated vCPU takes the
                // device's signals from the queue again.
                self.wire_irqs()
            }
            Some(_) => Err(VmmError::StopPoint {
                what: "on the simulated vCPU".into(),
                why: "the guest's CPU state is in a KVM vCPU that stopped inside a driver \
                      step; run it with run_kvm"
                    .into(),
            }),
        }
    }

    /// Run until `stop` on whichever vCPU holds the guest: its KVM vCPU if it has one
    /// (booted there, or restored or migrated from one), else the simulated vCPU.
    pub fn run_guest(&mut self, stop: StopAt) -> Result<Option<KvmRunReport>> {
        if self.on_kvm() {
            self.run_kvm(stop).map(Some)
        } else {
            self.run(stop).map(|_| None)
        }
    }

    /// Run until `stop`. Returns the number of vCPU steps taken.
    pub fn run(&mut self, stop: StopAt) -> Result<u64> {
        self.take_over_from_kvm()?;
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
                GuestStep::Done if !self.vcpu.has_pending() => {
                    self.check_reached(stop)?;
                    return Ok(steps);
                }
                GuestStep::Failed => {
                    return Err(VmmError::DriverFailed {
                        why: "the guest program found no parameters or an unexpected device".into(),
                    })
                }
                GuestStep::Waiting if ran == 0 && !self.vcpu.has_pending() => {
                    idle_rounds += 1;
                    if idle_rounds > 10_000 {
                        let frame = self.completed_frames();
                        return Err(VmmError::Stalled {
                            frame,
                            why: format!(
                                "the device is idle ({}) and the guest waits",
                                self.hw.describe()
                            ),
                        });
                    }
                }
                _ => idle_rounds = 0,
            }
        }
    }

    /// The guest is done: refuse a stop point it can no longer reach.
    fn check_reached(&mut self, stop: StopAt) -> Result<()> {
        match stop {
            StopAt::Command(c) => {
                let done = self.command_count();
                Err(VmmError::StopPoint {
                    what: format!("at command {c}"),
                    why: format!("the workload finished after {done} commands"),
                })
            }
            StopAt::Frame(f) if self.completed_frames() < f => {
                let done = self.completed_frames();
                Err(VmmError::StopPoint {
                    what: format!("at frame {f}"),
                    why: format!("the workload's frame limit is {done}"),
                })
            }
            _ => Ok(()),
        }
    }

    /// SHA-256 of guest RAM.
    pub fn ram_digest(&self) -> [u8; 32] {
        memory::digest(&self.mem)
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// The device, through the VFIO contract.
    pub fn device(&mut self) -> &mut dyn VfioDevice {
        &mut self.dev
    }

    /// The device (shared).
    pub fn device_ref(&self) -> &dyn VfioDevice {
        &self.dev
    }

    /// The device's hardware (the composer's test hooks reach device internals here).
    pub fn hardware(&mut self) -> &mut dyn SimHardware {
        self.hw.as_mut()
    }

    /// The vCPU.
    pub fn vcpu(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }

    /// The device type.
    pub fn mdev_type(&self) -> &str {
        &self.cfg.mdev_type
    }

    /// The config this VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Logger.
    pub fn log(&self) -> &Logger {
        &self.cfg.log
    }
}
