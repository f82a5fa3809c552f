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
//! While the run lasts, the device and the PCI face live in a [`Core`] behind a lock, and
//! the `Vm` holds a [`Detached`] stand-in: nothing else can reach the device meanwhile,
//! since the run holds `&mut Vm`.

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
use crate::kvm::{ExitAction, ExitHandler, KvmMachine};
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

/// The device and the VMM's view of it, shared by the vCPU and device threads.
#[derive(Debug)]
struct Core {
    dev: Box<dyn VfioDevice>,
    face: PciFace,
    warn_limit: RateLimit,
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the vCPU thread needs for its exits.
struct Exits {
    core: Arc<Mutex<Core>>,
    mem: GuestMem,
    ecam_gpa: u64,
    image: Arc<dyn GuestImage>,
    signal: Arc<Mutex<Option<GuestSignal>>>,
    mmio_exits: Arc<AtomicU64>,
    log: Logger,
}

impl Exits {
    fn bus<R>(&self, f: impl FnOnce(&mut VmBus<'_>) -> R) -> R {
        self.mmio_exits.fetch_add(1, Ordering::Relaxed);
        let mut c = lock(&self.core);
        let Core {
            dev,
            face,
            warn_limit,
        } = &mut *c;
        let mut bus = VmBus {
            mem: &self.mem,
            dev: dev.as_mut(),
            face,
            ecam_gpa: self.ecam_gpa,
            log: &self.log,
            warn_limit,
        };
        f(&mut bus)
    }
}

impl ExitHandler for Exits {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        use crate::platform::GuestBus;
        self.bus(|b| b.read(gpa, data));
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        use crate::platform::GuestBus;
        self.bus(|b| b.write(gpa, data));
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

#[allow(clippy::too_many_arguments)]
fn spawn_device(
    mut hw: Box<dyn SimHardware>,
    core: Arc<Mutex<Core>>,
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
                let mut c = lock(&core);
                let Core {
                    face, warn_limit, ..
                } = &mut *c;
                deliver(&irqs, face.routes(), sink_base, &log, warn_limit, |a, d| {
                    m.fetch_add(1, Ordering::Relaxed);
                    kvm.signal_msi(a, d).is_ok()
                });
                drop(c);
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
    /// Boot the composer's guest image on a KVM vCPU and run until `stop`, with the
    /// device's hardware on a thread of its own. The image boots once per VM: a second call
    /// is refused (the vCPU state of the first run is not kept yet).
    pub fn run_kvm(&mut self, stop: StopAt) -> Result<KvmRunReport> {
        let image = self.image.clone().ok_or_else(|| VmmError::StopPoint {
            what: "on a KVM vCPU".into(),
            why: "this guest program has no x86-64 image".into(),
        })?;
        if self.kvm_booted {
            return Err(VmmError::StopPoint {
                what: "on a KVM vCPU again".into(),
                why: "the image boots once per VM and its vCPU state is not kept between runs"
                    .into(),
            });
        }
        crate::kvm::available().map_err(|source| VmmError::Kvm { source })?;
        let spec = image
            .load(&self.mem)
            .map_err(|source| VmmError::Workload { source })?;
        let log = self.cfg.log.clone();
        let mut kvm = KvmMachine::new(&self.mem, log.clone()).map_err(kvm_err)?;
        kvm.setup_long_mode(&spec).map_err(kvm_err)?;
        self.kvm_booted = true;
        info!(log, "booting the guest image on a KVM vCPU"; "entry" => format!("{:#x}", spec.entry));

        let core = Arc::new(Mutex::new(Core {
            dev: std::mem::replace(&mut self.dev, Box::new(Detached)),
            face: self.face.clone(),
            warn_limit: RateLimit::default(),
        }));
        let hw = std::mem::replace(&mut self.hw, Box::new(NoHardware));
        let signal = Arc::new(Mutex::new(None));
        let mmio_exits = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let vcpu = kvm.spawn(Box::new(Exits {
            core: core.clone(),
            mem: self.mem.clone(),
            ecam_gpa: self.layout.ecam_gpa,
            image,
            signal: signal.clone(),
            mmio_exits: mmio_exits.clone(),
            log: log.clone(),
        }));
        let vcpu = match vcpu {
            Ok(v) => v,
            Err(e) => {
                self.hw = hw;
                self.reattach(core)?;
                return Err(kvm_err(e));
            }
        };
        let kvm = Arc::new(kvm);
        let device = match spawn_device(
            hw,
            core.clone(),
            self.irqs.clone(),
            kvm.clone(),
            self.cfg.irq_sink_base,
            log.clone(),
        ) {
            Ok(d) => d,
            Err(e) => {
                let _ = vcpu.stop();
                self.reattach(core)?;
                return Err(e);
            }
        };
        let outcome = self.wait_for(stop, &vcpu, &device, &core, &signal);
        // Tear down in order: the vCPU parks, the device thread ends, the device returns.
        let teardown = match vcpu.ended() {
            None => vcpu.pause(PAUSE_DEADLINE).map_err(kvm_err),
            Some(_) => Ok(()),
        };
        let _ = vcpu.stop();
        device.stop.store(true, Ordering::Relaxed);
        let report = KvmRunReport {
            mmio_exits: mmio_exits.load(Ordering::Relaxed),
            msis: device.msis.load(Ordering::Relaxed),
            device_work: device.work.load(Ordering::Relaxed),
            wall_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        let joined = device.join.join();
        self.reattach(core)?;
        match joined {
            Ok(hw) => self.hw = hw,
            Err(_) => {
                return Err(VmmError::DriverFailed {
                    why: "the device thread panicked".into(),
                })
            }
        }
        // Interrupts raised after the device thread's last turn stay queued for the next
        // run on the simulated vCPU.
        outcome?;
        teardown?;
        debug!(log, "KVM run ended"; "mmio_exits" => report.mmio_exits, "msis" => report.msis,
               "device_work" => report.device_work, "wall_ms" => report.wall_ms);
        Ok(report)
    }

    /// Put the device and the PCI face back into the VM once the run's threads are gone.
    fn reattach(&mut self, core: Arc<Mutex<Core>>) -> Result<()> {
        let core = Arc::try_unwrap(core).map_err(|_| VmmError::DriverFailed {
            why: "a KVM run's thread still holds the device".into(),
        })?;
        let core = core.into_inner().unwrap_or_else(|p| p.into_inner());
        self.dev = core.dev;
        self.face = core.face;
        Ok(())
    }

    /// Wait on the calling thread until `stop` holds, the guest signals, or nothing moves.
    fn wait_for(
        &mut self,
        stop: StopAt,
        vcpu: &crate::kvm::VcpuHandle,
        device: &DeviceThread,
        core: &Arc<Mutex<Core>>,
        signal: &Mutex<Option<GuestSignal>>,
    ) -> Result<()> {
        let mut last = (u64::MAX, u64::MAX);
        let mut last_change = Instant::now();
        loop {
            if let Some(why) = vcpu.ended() {
                return Err(VmmError::DriverFailed {
                    why: format!("the vCPU stopped: {why}"),
                });
            }
            let parked = vcpu.wait_paused(POLL).is_ok();
            let work = device.work.load(Ordering::Relaxed);
            let frames = self.progress_shared(core);
            match stop {
                StopAt::Command(c) if work >= c => return Ok(()),
                StopAt::Frame(f) if frames >= f => return Ok(()),
                _ => {}
            }
            if parked {
                let s = signal.lock().unwrap_or_else(|p| p.into_inner()).take();
                match s {
                    Some(GuestSignal::Failed(why)) => return Err(VmmError::DriverFailed { why }),
                    Some(GuestSignal::Done) if stop == StopAt::Done => return Ok(()),
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
                vcpu.resume().map_err(kvm_err)?;
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
    fn progress_shared(&mut self, core: &Mutex<Core>) -> u64 {
        let mut c = lock(core);
        let Core {
            dev,
            face,
            warn_limit,
        } = &mut *c;
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
