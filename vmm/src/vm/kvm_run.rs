//! Running a VM's guest on a KVM vCPU.
//!
//! The composer's [`GuestImage`] is loaded into guest RAM and booted in long mode on a
//! [`KvmMachine`] whose memory slots are the VM's own guest RAM. Three threads share the
//! machine, as in a real VMM:
//!
//! * the **vCPU thread** runs `KVM_RUN`; its MMIO exits go through the same [`VmBus`] as the
//!   simulated vCPU's accesses (guest RAM, the BAR map, the ECAM window, the VMM's PCI
//!   face), and a write to the image's status port parks it when the guest says it is done;
//! * the **device thread** advances the device's hardware ([`SimHardware::advance`]) as real
//!   hardware runs on its own, and delivers the device's interrupts through the guest's MSI
//!   routes with `KVM_SIGNAL_MSI` into the in-kernel local APIC;
//! * the **calling thread** waits for the stop point, then pauses the vCPU (a real kick),
//!   stops the device thread, and puts everything back into the [`Vm`].
//!
//! While a run lasts, the device and the PCI face live in a [`Core`] in a shared slot, and
//! the `Vm` holds a [`Detached`] stand-in: nothing else can reach the device meanwhile,
//! since the run holds `&mut Vm`. Between runs the vCPU stays parked in a [`KvmSession`]
//! (its state can be saved, see [`Vm::vcpu_record`]) and the device is back in the `Vm`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdev_core::uapi::{vfio_device_info, vfio_irq_info};
use mdev_core::{DeviceError, DmaDirtyLog, IrqSink, MigrationDevice, RegionInfo, VfioDevice};
use serde::Serialize;
use slog::{debug, info, Logger};

use super::{deliver, StopAt, Vm};
use crate::bus::VmBus;
use crate::error::{Result, VmmError};
use crate::irq::IrqQueue;
use crate::kvm::{ExitAction, ExitHandler, KvmMachine, VcpuHandle};
use crate::memory::GuestMem;
use crate::pci::PciFace;
use crate::platform::{GuestImage, GuestSignal, NoHardware, SimHardware};
use crate::ratelimit::RateLimit;

/// Units of hardware work the device thread does per turn.
const DEVICE_TURN: usize = 64;
/// How long the device thread rests when its hardware has nothing to do.
const DEVICE_IDLE: Duration = Duration::from_micros(100);
/// How often the calling thread checks the stop point.
const POLL: Duration = Duration::from_millis(2);
/// A run in which neither the guest nor the device makes progress for this long has
/// stalled (a hang guard; the emulated KVM on some hosts takes over a second per frame).
const STALL: Duration = Duration::from_secs(60);
/// How long the vCPU may take to park when kicked.
const PAUSE_DEADLINE: Duration = Duration::from_secs(5);

/// What a KVM run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KvmRunReport {
    /// MMIO exits the vCPU took.
    pub mmio_exits: u64,
    /// Interrupts delivered with `KVM_SIGNAL_MSI`.
    pub msis: u64,
    /// Units of hardware work (commands) the device thread ran.
    pub device_work: u64,
    /// Wall time of the run, ms.
    pub wall_ms: f64,
}

/// A VM's KVM vCPU between runs.
pub(super) enum KvmSession {
    /// Booted (long mode set up) or restored from a saved state; never run.
    Ready(KvmMachine),
    /// Has run; the vCPU thread is parked.
    Parked(Parked),
}

/// A parked vCPU and what its thread shares with the VMM.
pub(super) struct Parked {
    machine: Arc<KvmMachine>,
    vcpu: VcpuHandle,
    slot: Slot,
    signal: Arc<Mutex<Option<GuestSignal>>>,
    mmio_exits: Arc<AtomicU64>,
    /// The guest parked itself between two driver steps (it said it is done).
    pub(super) at_boundary: bool,
}

impl std::fmt::Debug for KvmSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(m) => f.debug_tuple("Ready").field(m).finish(),
            Self::Parked(p) => f
                .debug_struct("Parked")
                .field("at_boundary", &p.at_boundary)
                .finish(),
        }
    }
}

/// Where the device lives while a run's threads use it (empty between runs).
type Slot = Arc<Mutex<Option<Core>>>;

/// The device and the VMM's view of it, shared by the vCPU and device threads.
#[derive(Debug)]
struct Core {
    dev: Box<dyn VfioDevice>,
    face: PciFace,
    warn_limit: RateLimit,
}

fn lock(slot: &Mutex<Option<Core>>) -> MutexGuard<'_, Option<Core>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the vCPU thread needs for its exits.
struct Exits {
    core: Slot,
    mem: GuestMem,
    ecam_gpa: u64,
    image: Arc<dyn GuestImage>,
    signal: Arc<Mutex<Option<GuestSignal>>>,
    mmio_exits: Arc<AtomicU64>,
    log: Logger,
}

impl Exits {
    /// Run `f` on the bus; `None` if the device is not in the slot (cannot happen while
    /// the vCPU runs: the slot is filled before it is resumed and emptied after it parks).
    fn bus<R>(&self, f: impl FnOnce(&mut VmBus<'_>) -> R) -> Option<R> {
        self.mmio_exits.fetch_add(1, Ordering::Relaxed);
        let mut c = lock(&self.core);
        let Core {
            dev,
            face,
            warn_limit,
        } = c.as_mut()?;
        let mut bus = VmBus {
            mem: &self.mem,
            dev: dev.as_mut(),
            face,
            ecam_gpa: self.ecam_gpa,
            log: &self.log,
            warn_limit,
        };
        Some(f(&mut bus))
    }
}

impl ExitHandler for Exits {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        use crate::platform::GuestBus;
        if self.bus(|b| b.read(gpa, data)).is_none() {
            data.fill(0xff);
        }
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        use crate::platform::GuestBus;
        let _ = self.bus(|b| b.write(gpa, data));
    }

    fn io_out(&mut self, port: u16, data: &[u8]) -> ExitAction {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        match self.image.port_write(port, u32::from_le_bytes(v)) {
            GuestSignal::Ignore => ExitAction::Continue,
            s => {
                *self.signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                ExitAction::Pause
            }
        }
    }

    fn io_in(&mut self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
}

/// The device thread: advances the hardware and delivers its interrupts through KVM.
struct DeviceThread {
    stop: Arc<AtomicBool>,
    work: Arc<AtomicU64>,
    msis: Arc<AtomicU64>,
    join: JoinHandle<Box<dyn SimHardware>>,
}

/// Deliver the device's queued signals into the guest's local APIC.
fn deliver_kvm(
    core: &Mutex<Option<Core>>,
    irqs: &IrqQueue,
    kvm: &KvmMachine,
    sink_base: u32,
    log: &Logger,
    msis: &AtomicU64,
) {
    let mut c = lock(core);
    if let Some(Core {
        face, warn_limit, ..
    }) = c.as_mut()
    {
        deliver(irqs, face.routes(), sink_base, log, warn_limit, |a, d| {
            msis.fetch_add(1, Ordering::Relaxed);
            kvm.signal_msi(a, d).is_ok()
        });
    }
}

fn spawn_device(
    mut hw: Box<dyn SimHardware>,
    core: Slot,
    irqs: Arc<IrqQueue>,
    kvm: Arc<KvmMachine>,
    sink_base: u32,
    log: Logger,
) -> Result<DeviceThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(0));
    let msis = Arc::new(AtomicU64::new(0));
    let (s, w, m) = (stop.clone(), work.clone(), msis.clone());
    let join = std::thread::Builder::new()
        .name("device".into())
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ran = hw.advance(DEVICE_TURN);
                w.store(hw.work_done(), Ordering::Relaxed);
                deliver_kvm(&core, &irqs, &kvm, sink_base, &log, &m);
                if ran == 0 {
                    std::thread::sleep(DEVICE_IDLE);
                }
            }
            hw
        })
        .map_err(|e| VmmError::Kvm {
            source: crate::kvm::KvmError::Spawn { source: e },
        })?;
    Ok(DeviceThread {
        stop,
        work,
        msis,
        join,
    })
}

impl Vm {
    /// Run the guest on a KVM vCPU until `stop`, with the device's hardware on a thread of
    /// its own. The first call boots the composer's guest image (or starts from a restored
    /// vCPU state); later calls resume the parked vCPU. The image boots once per VM.
    pub fn run_kvm(&mut self, stop: StopAt) -> Result<KvmRunReport> {
        let session = match self.kvm.take() {
            Some(s) => s,
            None => KvmSession::Ready(self.boot_kvm()?),
        };
        let log = self.cfg.log.clone();
        let core = Core {
            dev: std::mem::replace(&mut self.dev, Box::new(Detached)),
            face: self.face.clone(),
            warn_limit: RateLimit::default(),
        };
        let mut parked = match session {
            KvmSession::Parked(mut p) => {
                *lock(&p.slot) = Some(core);
                if let Err(e) = p.vcpu.resume() {
                    self.take_back(&p.slot);
                    return Err(kvm_err(e));
                }
                p.at_boundary = false;
                p
            }
            KvmSession::Ready(mut machine) => {
                let slot: Slot = Arc::new(Mutex::new(Some(core)));
                let signal = Arc::new(Mutex::new(None));
                let mmio_exits = Arc::new(AtomicU64::new(0));
                let image = self.image.clone();
                let vcpu = match image {
                    Some(image) => machine.spawn(Box::new(Exits {
                        core: slot.clone(),
                        mem: self.mem.clone(),
                        ecam_gpa: self.layout.ecam_gpa,
                        image,
                        signal: signal.clone(),
                        mmio_exits: mmio_exits.clone(),
                        log: log.clone(),
                    })),
                    None => Err(crate::kvm::KvmError::AlreadySpawned),
                };
                match vcpu {
                    Ok(vcpu) => Parked {
                        machine: Arc::new(machine),
                        vcpu,
                        slot,
                        signal,
                        mmio_exits,
                        at_boundary: false,
                    },
                    Err(e) => {
                        self.take_back(&slot);
                        return Err(kvm_err(e));
                    }
                }
            }
        };
        let started = Instant::now();
        let exits_before = parked.mmio_exits.load(Ordering::Relaxed);
        let hw = std::mem::replace(&mut self.hw, Box::new(NoHardware));
        let device = match spawn_device(
            hw,
            parked.slot.clone(),
            self.irqs.clone(),
            parked.machine.clone(),
            self.cfg.irq_sink_base,
            log.clone(),
        ) {
            Ok(d) => d,
            Err(e) => {
                let _ = parked.vcpu.pause(PAUSE_DEADLINE);
                self.take_back(&parked.slot);
                return Err(e);
            }
        };
        let outcome = self.wait_for(stop, &parked, &device);
        // Park the vCPU (a real kick), stop the device thread, deliver what it raised last
        // into the parked vCPU's LAPIC, and take the device back.
        let paused = match parked.vcpu.ended() {
            None => parked.vcpu.pause(PAUSE_DEADLINE).map_err(kvm_err),
            Some(why) => Err(VmmError::DriverFailed {
                why: format!("the vCPU stopped: {why}"),
            }),
        };
        device.stop.store(true, Ordering::Relaxed);
        let report = KvmRunReport {
            mmio_exits: parked.mmio_exits.load(Ordering::Relaxed) - exits_before,
            msis: device.msis.load(Ordering::Relaxed),
            device_work: device.work.load(Ordering::Relaxed),
            wall_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        let joined = device.join.join();
        deliver_kvm(
            &parked.slot,
            &self.irqs,
            &parked.machine,
            self.cfg.irq_sink_base,
            &log,
            &AtomicU64::new(0),
        );
        self.take_back(&parked.slot);
        match joined {
            Ok(hw) => self.hw = hw,
            Err(_) => {
                return Err(VmmError::DriverFailed {
                    why: "the device thread panicked".into(),
                })
            }
        }
        let at_boundary = outcome.as_ref().is_ok_and(|b| *b);
        outcome?;
        paused?;
        parked.at_boundary = at_boundary;
        self.kvm = Some(KvmSession::Parked(parked));
        debug!(log, "KVM run ended"; "mmio_exits" => report.mmio_exits, "msis" => report.msis,
               "device_work" => report.device_work, "wall_ms" => report.wall_ms);
        Ok(report)
    }

    /// A new KVM machine on this VM's RAM with the composer's image loaded and long mode
    /// set up.
    fn boot_kvm(&mut self) -> Result<KvmMachine> {
        let image = self.image.clone().ok_or_else(|| VmmError::StopPoint {
            what: "on a KVM vCPU".into(),
            why: "this guest program has no x86-64 image".into(),
        })?;
        if self.kvm_booted {
            return Err(VmmError::StopPoint {
                what: "on a KVM vCPU again".into(),
                why: "the image boots once per VM, and this VM's KVM vCPU was given up when \
                      the simulated vCPU took over"
                    .into(),
            });
        }
        crate::kvm::available().map_err(kvm_err)?;
        let spec = image
            .load(&self.mem)
            .map_err(|source| VmmError::Workload { source })?;
        let mut machine = KvmMachine::new(&self.mem, self.cfg.log.clone()).map_err(kvm_err)?;
        machine.setup_long_mode(&spec).map_err(kvm_err)?;
        self.kvm_booted = true;
        info!(self.cfg.log, "booting the guest image on a KVM vCPU";
              "entry" => format!("{:#x}", spec.entry));
        Ok(machine)
    }

    /// Load a saved KVM vCPU state into a new KVM machine on this VM's RAM (a restore
    /// target); the next [`Vm::run_kvm`] runs it.
    pub fn restore_kvm_vcpu(&mut self, state: &crate::kvm::KvmVcpuState) -> Result<()> {
        crate::kvm::available().map_err(kvm_err)?;
        let mut machine = KvmMachine::new(&self.mem, self.cfg.log.clone()).map_err(kvm_err)?;
        machine.restore_state(state).map_err(kvm_err)?;
        self.kvm = Some(KvmSession::Ready(machine));
        self.kvm_booted = true;
        Ok(())
    }

    /// The state of this VM's KVM vCPU, if it has one (parked or never run).
    pub fn kvm_vcpu_state(&self) -> Option<Result<crate::kvm::KvmVcpuState>> {
        self.kvm.as_ref().map(|s| {
            match s {
                KvmSession::Ready(m) => m.save_state(),
                KvmSession::Parked(p) => p.vcpu.save_state(),
            }
            .map_err(kvm_err)
        })
    }

    /// Move the device and PCI face from the run's slot back into the VM.
    fn take_back(&mut self, slot: &Mutex<Option<Core>>) {
        if let Some(core) = lock(slot).take() {
            self.dev = core.dev;
            self.face = core.face;
        }
    }

    /// Wait on the calling thread until `stop` holds, the guest signals, or nothing moves.
    /// `Ok(true)` when the guest said it is done (it parked between two driver steps).
    fn wait_for(&mut self, stop: StopAt, run: &Parked, device: &DeviceThread) -> Result<bool> {
        let mut last = (u64::MAX, u64::MAX);
        let mut last_change = Instant::now();
        loop {
            if let Some(why) = run.vcpu.ended() {
                return Err(VmmError::DriverFailed {
                    why: format!("the vCPU stopped: {why}"),
                });
            }
            let parked = run.vcpu.wait_paused(POLL).is_ok();
            let work = device.work.load(Ordering::Relaxed);
            let frames = self.progress_shared(&run.slot);
            match stop {
                StopAt::Command(c) if work >= c => return Ok(false),
                StopAt::Frame(f) if frames >= f => return Ok(false),
                _ => {}
            }
            if parked {
                let s = run.signal.lock().unwrap_or_else(|p| p.into_inner()).take();
                match s {
                    Some(GuestSignal::Failed(why)) => return Err(VmmError::DriverFailed { why }),
                    Some(GuestSignal::Done) if stop == StopAt::Done => return Ok(true),
                    Some(GuestSignal::Done) => {
                        return Err(VmmError::StopPoint {
                            what: format!("{stop:?}"),
                            why: format!(
                                "the guest finished after {frames} frames and {work} commands"
                            ),
                        })
                    }
                    _ => {}
                }
                run.vcpu.resume().map_err(kvm_err)?;
            }
            if (work, frames) != last {
                last = (work, frames);
                last_change = Instant::now();
            } else if last_change.elapsed() > STALL {
                return Err(VmmError::Stalled {
                    frame: frames,
                    why: format!(
                        "neither the KVM guest nor the device moved for {} s",
                        STALL.as_secs()
                    ),
                });
            }
        }
    }

    /// The guest's progress counter, read while the device lives in the shared core.
    fn progress_shared(&mut self, slot: &Mutex<Option<Core>>) -> u64 {
        let mut c = lock(slot);
        let Some(Core {
            dev,
            face,
            warn_limit,
        }) = c.as_mut()
        else {
            return 0;
        };
        let mut bus = VmBus {
            mem: &self.mem,
            dev: dev.as_mut(),
            face,
            ecam_gpa: self.layout.ecam_gpa,
            log: &self.cfg.log,
            warn_limit,
        };
        self.guest.progress(&mut bus)
    }
}

fn kvm_err(source: crate::kvm::KvmError) -> VmmError {
    VmmError::Kvm { source }
}

/// The stand-in a [`Vm`] holds while its device is with a KVM run's threads.
#[derive(Debug)]
struct Detached;

fn detached() -> DeviceError {
    DeviceError::InvalidState {
        what: "the device is attached to a running KVM vCPU".into(),
    }
}

impl VfioDevice for Detached {
    fn device_info(&self) -> vfio_device_info {
        vfio_device_info::default()
    }
    fn region_info(&self, _index: u32) -> std::result::Result<RegionInfo, DeviceError> {
        Err(detached())
    }
    fn region_read(
        &mut self,
        _index: u32,
        _offset: u64,
        _data: &mut [u8],
    ) -> std::result::Result<(), DeviceError> {
        Err(detached())
    }
    fn region_write(
        &mut self,
        _index: u32,
        _offset: u64,
        _data: &[u8],
    ) -> std::result::Result<(), DeviceError> {
        Err(detached())
    }
    fn irq_info(&self, _index: u32) -> std::result::Result<vfio_irq_info, DeviceError> {
        Err(detached())
    }
    fn set_irqs(
        &mut self,
        _index: u32,
        _start: u32,
        _count: u32,
        _sink: Option<Arc<dyn IrqSink>>,
    ) -> std::result::Result<(), DeviceError> {
        Err(detached())
    }
    fn reset(&mut self) -> std::result::Result<(), DeviceError> {
        Err(detached())
    }
    fn migration(&mut self) -> Option<&mut dyn MigrationDevice> {
        None
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        None
    }
}
