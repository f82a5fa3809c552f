//! Running a VM's guest on a KVM vCPU.
//!
//! The composer's [`GuestImage`] is loaded into guest RAM and booted in long mode on a
//! [`KvmMachine`] whose memory slots are the VM's own guest RAM. While the guest runs,
//! three threads share the machine, as in a real VMM:
//!
//! * the **vCPU thread** runs `KVM_RUN`; its MMIO exits go through the same [`VmBus`] as the
//!   simulated vCPU's accesses (guest RAM, the BAR map, the ECAM window, the VMM's PCI
//!   face), and a write to the image's status port parks it when the guest says it is done;
//! * the **device thread** advances the device's hardware ([`SimHardware::advance`]) as real
//!   hardware runs on its own. The device's interrupts do not pass through it: every MSI
//!   and MSI-X vector is an eventfd wired to KVM as an irqfd on a GSI routed to the message
//!   the guest programmed ([`super::irqfd`]), so a signal (from the device in process, or
//!   written by a device process that was handed the eventfd) lands in the in-kernel local
//!   APIC directly. Signals that still reach the VMM's queue (none, once wired) go in
//!   with `KVM_SIGNAL_MSI`;
//! * the **VMM's own thread** (the caller) is free: it waits for a stop point
//!   ([`Vm::run_kvm`]) or migrates the VM while the guest runs, and pauses it with a real
//!   kick ([`Vm::pause_kvm`]).
//!
//! The device and the PCI face are shared behind locks (`mdev_core::Shared`, the face's mutex),
//! so all three reach them through the same VFIO contract. Between runs the vCPU stays
//! parked in a [`KvmSession`]; its state is the stream's vCPU record ([`Vm::vcpu_record`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdev_core::DirtyBitmap;
use serde::Serialize;
use slog::{debug, info, Logger};

use super::irqfd::Irqfds;
use super::kvm_exits::Exits;
use super::{deliver, StopAt, Vm};
use crate::bus::lock_face;
use crate::error::{Result, VmmError};
use crate::irq::IrqQueue;
use crate::kvm::{KvmMachine, KvmVcpuState, VcpuHandle};
use crate::pci::PciFace;
use crate::platform::{GuestSignal, NoHardware, SimHardware};
use crate::ratelimit::RateLimit;

/// Units of hardware work the device thread does per turn.
const DEVICE_TURN: usize = 64;
/// How long the device thread rests when its hardware has nothing to do.
const DEVICE_IDLE: Duration = Duration::from_micros(100);
/// How often the calling thread checks the stop point.
const POLL: Duration = Duration::from_millis(2);
/// By default, a run in which neither the guest nor the device makes progress for this
/// long has stalled (a hang guard; the emulated KVM on some hosts takes over a second per
/// frame). See [`Vm::set_kvm_stall_timeout`].
pub(super) const DEFAULT_STALL: Duration = Duration::from_secs(60);
/// How long the vCPU may take to park when kicked.
const PAUSE_DEADLINE: Duration = Duration::from_secs(5);

/// What a KVM run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KvmRunReport {
    /// MMIO exits the vCPU took.
    pub mmio_exits: u64,
    /// Interrupts delivered with `KVM_SIGNAL_MSI` (signals that reached the VMM's queue
    /// rather than an irqfd).
    pub msis: u64,
    /// Signals an in-process device wrote to its vectors' irqfds (KVM injected them; a
    /// device process writes its eventfds itself and is not counted here).
    pub irqfd_signals: u64,
    /// Units of hardware work (commands) the device thread ran.
    pub device_work: u64,
    /// Wall time of the run, ms.
    pub wall_ms: f64,
}

/// The KVM vCPU of a VM.
pub(super) struct KvmSession {
    /// Always `Some` outside of [`Vm::start_kvm`], which moves the machine behind an `Arc`.
    vcpu: Option<VcpuSlot>,
    signal: Arc<Mutex<Option<GuestSignal>>>,
    mmio_exits: Arc<AtomicU64>,
    /// The guest parked itself between two driver steps (it said it is done).
    pub(super) at_boundary: bool,
    /// While the guest runs: the device thread, and the report's starting points.
    running: Option<Running>,
    /// The device's vectors as irqfds of this machine (from the first start).
    irqfds: Option<Arc<Irqfds>>,
}

enum VcpuSlot {
    /// Booted (long mode set up) or restored from a saved state; never run.
    Ready(KvmMachine),
    /// Has a thread (running or parked).
    Spawned {
        machine: Arc<KvmMachine>,
        vcpu: VcpuHandle,
    },
}

struct Running {
    device: DeviceThread,
    started: Instant,
    exits_before: u64,
    irqfd_before: u64,
}

impl KvmSession {
    /// Whether the guest runs now.
    pub(super) fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

impl std::fmt::Debug for KvmSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmSession")
            .field(
                "spawned",
                &matches!(self.vcpu, Some(VcpuSlot::Spawned { .. })),
            )
            .field("running", &self.running.is_some())
            .field("at_boundary", &self.at_boundary)
            .finish()
    }
}

/// The device thread: advances the hardware and delivers its interrupts through KVM.
struct DeviceThread {
    stop: Arc<AtomicBool>,
    work: Arc<AtomicU64>,
    msis: Arc<AtomicU64>,
    /// `None` once joined.
    join: Option<JoinHandle<Box<dyn SimHardware>>>,
}

impl DeviceThread {
    /// Stop the thread and take the hardware back (`None` if it panicked).
    fn finish(&mut self) -> Option<Box<dyn SimHardware>> {
        self.stop.store(true, Ordering::Relaxed);
        self.join.take()?.join().ok()
    }
}

impl Drop for DeviceThread {
    /// A VM dropped while its guest runs: the device thread ends with it.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// What the device thread needs to deliver interrupts.
struct IrqPath {
    irqs: Arc<IrqQueue>,
    face: Arc<Mutex<PciFace>>,
    kvm: Arc<KvmMachine>,
    sink_base: u32,
    log: Logger,
}

impl IrqPath {
    /// Deliver the device's queued signals into the guest's local APIC.
    fn deliver(&self, warn_limit: &mut RateLimit, msis: &AtomicU64) {
        let face = lock_face(&self.face);
        deliver(
            &self.irqs,
            face.routes(),
            self.sink_base,
            &self.log,
            warn_limit,
            |a, d| {
                msis.fetch_add(1, Ordering::Relaxed);
                self.kvm.signal_msi(a, d).is_ok()
            },
        );
    }
}

fn spawn_device(mut hw: Box<dyn SimHardware>, path: IrqPath) -> Result<DeviceThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(hw.work_done()));
    let msis = Arc::new(AtomicU64::new(0));
    let (s, w, m) = (stop.clone(), work.clone(), msis.clone());
    let join = std::thread::Builder::new()
        .name("device".into())
        .spawn(move || {
            let mut warn_limit = RateLimit::default();
            while !s.load(Ordering::Relaxed) {
                let ran = hw.advance(DEVICE_TURN);
                w.store(hw.work_done(), Ordering::Relaxed);
                path.deliver(&mut warn_limit, &m);
                if ran == 0 {
                    std::thread::sleep(DEVICE_IDLE);
                }
            }
            // What the device raised last goes into the (parked) vCPU's LAPIC.
            path.deliver(&mut warn_limit, &m);
            hw
        })
        .map_err(|e| VmmError::Kvm {
            source: crate::kvm::KvmError::Spawn { source: e },
        })?;
    Ok(DeviceThread {
        stop,
        work,
        msis,
        join: Some(join),
    })
}

fn kvm_err(source: crate::kvm::KvmError) -> VmmError {
    VmmError::Kvm { source }
}

impl Vm {
    /// Run the guest on a KVM vCPU until `stop` ([`Vm::start_kvm`], wait, [`Vm::pause_kvm`]).
    /// On KVM a stop point is the first moment at or after it that the VMM sees.
    pub fn run_kvm(&mut self, stop: StopAt) -> Result<KvmRunReport> {
        self.start_kvm()?;
        let outcome = self.wait_for(stop);
        let report = self.pause_kvm();
        let at_boundary = outcome?;
        let report = report?;
        if let Some(s) = self.kvm.as_mut() {
            s.at_boundary = at_boundary;
        }
        Ok(report)
    }

    /// Start (or resume) the guest on its KVM vCPU, with the device on its own thread, and
    /// return at once: the guest runs while the caller works. The first start boots the
    /// composer's image, unless a saved vCPU state was restored.
    pub fn start_kvm(&mut self) -> Result<()> {
        if self.kvm.as_ref().is_some_and(|s| s.running.is_some()) {
            return Ok(());
        }
        if self.kvm.is_none() {
            let machine = self.boot_kvm()?;
            self.kvm = Some(KvmSession {
                vcpu: Some(VcpuSlot::Ready(machine)),
                signal: Arc::new(Mutex::new(None)),
                mmio_exits: Arc::new(AtomicU64::new(0)),
                at_boundary: false,
                running: None,
                irqfds: None,
            });
        }
        let image = self.image.clone();
        let Some(session) = self.kvm.as_mut() else {
            return Ok(());
        };
        session.vcpu = match session.vcpu.take() {
            None => None,
            Some(VcpuSlot::Spawned { machine, vcpu }) => {
                let resumed = vcpu.resume();
                session.vcpu = Some(VcpuSlot::Spawned { machine, vcpu });
                resumed.map_err(kvm_err)?;
                session.vcpu.take()
            }
            Some(VcpuSlot::Ready(mut machine)) => {
                let Some(image) = image else {
                    session.vcpu = Some(VcpuSlot::Ready(machine));
                    return Err(VmmError::StopPoint {
                        what: "on a KVM vCPU".into(),
                        why: "this guest program has no x86-64 image".into(),
                    });
                };
                let irqfds =
                    match Irqfds::wire_device(&machine, &mut self.dev, &self.face, &self.cfg) {
                        Ok(i) => Arc::new(i),
                        Err(e) => {
                            session.vcpu = Some(VcpuSlot::Ready(machine));
                            return Err(e);
                        }
                    };
                session.irqfds = Some(irqfds.clone());
                let spawned = machine.spawn(Box::new(Exits {
                    dev: self.dev.clone(),
                    face: self.face.clone(),
                    mem: self.mem.clone(),
                    ecam_gpa: self.layout.ecam_gpa,
                    image,
                    signal: session.signal.clone(),
                    mmio_exits: session.mmio_exits.clone(),
                    irqfds: irqfds.clone(),
                    warn_limit: RateLimit::default(),
                    log: self.cfg.log.clone(),
                }));
                match spawned {
                    Ok(vcpu) => {
                        let machine = Arc::new(machine);
                        if let Err(e) = irqfds.attach(machine.clone()) {
                            let _ = vcpu.pause(PAUSE_DEADLINE);
                            session.vcpu = Some(VcpuSlot::Spawned { machine, vcpu });
                            return Err(e);
                        }
                        Some(VcpuSlot::Spawned { machine, vcpu })
                    }
                    Err(e) => {
                        session.vcpu = Some(VcpuSlot::Ready(machine));
                        return Err(kvm_err(e));
                    }
                }
            }
        };
        session.at_boundary = false;
        let Some(VcpuSlot::Spawned { machine, vcpu }) = &session.vcpu else {
            return Err(VmmError::DriverFailed {
                why: "the KVM vCPU was lost".into(),
            });
        };
        let hw = std::mem::replace(&mut self.hw, Box::new(NoHardware));
        let path = IrqPath {
            irqs: self.irqs.clone(),
            face: self.face.clone(),
            kvm: machine.clone(),
            sink_base: self.cfg.irq_sink_base,
            log: self.cfg.log.clone(),
        };
        match spawn_device(hw, path) {
            Ok(device) => {
                session.running = Some(Running {
                    device,
                    started: Instant::now(),
                    exits_before: session.mmio_exits.load(Ordering::Relaxed),
                    irqfd_before: session.irqfds.as_ref().map_or(0, |i| i.sink().signals()),
                });
                Ok(())
            }
            Err(e) => {
                let _ = vcpu.pause(PAUSE_DEADLINE);
                Err(e)
            }
        }
    }

    /// Pause a running KVM guest: kick the vCPU out of guest mode and wait until it parks,
    /// stop the device thread (what it raised last goes into the parked vCPU's LAPIC), and
    /// take the hardware back. What the run did is returned. Pausing a guest that is not
    /// running does nothing.
    pub fn pause_kvm(&mut self) -> Result<KvmRunReport> {
        let Some(session) = self.kvm.as_mut() else {
            return Ok(KvmRunReport::default());
        };
        let Some(mut running) = session.running.take() else {
            return Ok(KvmRunReport::default());
        };
        let paused = match &session.vcpu {
            Some(VcpuSlot::Spawned { vcpu, .. }) => match vcpu.ended() {
                None => vcpu.pause(PAUSE_DEADLINE).map_err(kvm_err),
                Some(why) => Err(VmmError::DriverFailed {
                    why: format!("the vCPU stopped: {why}"),
                }),
            },
            _ => Ok(()),
        };
        let hw = running.device.finish();
        let report = KvmRunReport {
            mmio_exits: session.mmio_exits.load(Ordering::Relaxed) - running.exits_before,
            msis: running.device.msis.load(Ordering::Relaxed),
            irqfd_signals: session
                .irqfds
                .as_ref()
                .map_or(0, |i| i.sink().signals() - running.irqfd_before),
            device_work: running.device.work.load(Ordering::Relaxed),
            wall_ms: running.started.elapsed().as_secs_f64() * 1e3,
        };
        match hw {
            Some(hw) => self.hw = hw,
            None => {
                return Err(VmmError::DriverFailed {
                    why: "the device thread panicked".into(),
                })
            }
        }
        paused?;
        debug!(self.cfg.log, "KVM guest paused"; "mmio_exits" => report.mmio_exits,
               "msis" => report.msis, "device_work" => report.device_work,
               "wall_ms" => report.wall_ms);
        Ok(report)
    }

    /// How long a KVM run may see neither the guest's progress counter nor the device's
    /// work counter move before it reports a stall (default 60 s).
    pub fn set_kvm_stall_timeout(&mut self, d: Duration) {
        self.kvm_stall = d;
    }

    /// Whether the guest is running on its KVM vCPU right now.
    pub fn kvm_running(&self) -> bool {
        self.kvm.as_ref().is_some_and(|s| s.running.is_some())
    }

    /// Pages the KVM vCPU wrote since the last harvest, merged into `into` (one bit per
    /// guest page from 0). Nothing without a KVM vCPU. KVM's log holds only the guest's own
    /// writes; the VMM's and the device's are in the other logs.
    pub fn harvest_kvm_dirty(&self, into: &mut DirtyBitmap) -> Result<u64> {
        match self.kvm.as_ref().and_then(|s| s.vcpu.as_ref()) {
            Some(VcpuSlot::Spawned { machine, .. }) => {
                machine.harvest_dirty_into(into).map_err(kvm_err)
            }
            Some(VcpuSlot::Ready(m)) => m.harvest_dirty_into(into).map_err(kvm_err),
            None => Ok(0),
        }
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

    /// Create this VM's KVM machine now (VM, irqchip, memory slots, vCPU), so that a
    /// restore that brings a KVM vCPU state does not pay for it: a migration target calls
    /// this before the stream starts, outside the downtime window. Without a usable
    /// `/dev/kvm` it does nothing (the stream may well carry a simulated vCPU).
    pub fn prepare_kvm(&mut self) {
        if self.kvm.is_some() || self.kvm_spare.is_some() || crate::kvm::available().is_err() {
            return;
        }
        match KvmMachine::new(&self.mem, self.cfg.log.clone()) {
            Ok(m) => self.kvm_spare = Some(m),
            Err(e) => debug!(self.cfg.log, "no KVM machine prepared"; "error" => %e),
        }
    }

    /// Load a saved KVM vCPU state into this VM's KVM machine (the one
    /// [`Vm::prepare_kvm`] made, or a new one); the next [`Vm::start_kvm`] or
    /// [`Vm::run_kvm`] runs it.
    pub fn restore_kvm_vcpu(&mut self, state: &KvmVcpuState) -> Result<()> {
        let mut machine = match self.kvm_spare.take() {
            Some(m) => m,
            None => {
                crate::kvm::available().map_err(kvm_err)?;
                KvmMachine::new(&self.mem, self.cfg.log.clone()).map_err(kvm_err)?
            }
        };
        machine.restore_state(state).map_err(kvm_err)?;
        self.kvm = Some(KvmSession {
            vcpu: Some(VcpuSlot::Ready(machine)),
            signal: Arc::new(Mutex::new(None)),
            mmio_exits: Arc::new(AtomicU64::new(0)),
            at_boundary: false,
            running: None,
            irqfds: None,
        });
        self.kvm_booted = true;
        Ok(())
    }

    /// The state of this VM's KVM vCPU, if it has one (it must not be running).
    pub fn kvm_vcpu_state(&self) -> Option<Result<KvmVcpuState>> {
        self.kvm.as_ref().map(|s| {
            if s.running.is_some() {
                return Err(VmmError::StopPoint {
                    what: "to save the vCPU".into(),
                    why: "the KVM guest is running; pause it first".into(),
                });
            }
            match &s.vcpu {
                Some(VcpuSlot::Ready(m)) => m.save_state().map_err(kvm_err),
                Some(VcpuSlot::Spawned { vcpu, .. }) => vcpu.save_state().map_err(kvm_err),
                None => Err(VmmError::DriverFailed {
                    why: "the KVM vCPU was lost".into(),
                }),
            }
        })
    }

    /// Wait on the calling thread until `stop` holds, the guest signals, or nothing moves.
    /// `Ok(true)` when the guest said it is done (it parked between two driver steps).
    fn wait_for(&mut self, stop: StopAt) -> Result<bool> {
        let mut last = (u64::MAX, u64::MAX, u64::MAX);
        let mut last_change = Instant::now();
        loop {
            let Some(KvmSession {
                vcpu: Some(VcpuSlot::Spawned { vcpu, .. }),
                running: Some(running),
                signal,
                mmio_exits,
                ..
            }) = self.kvm.as_ref()
            else {
                return Err(VmmError::DriverFailed {
                    why: "the KVM guest is not running".into(),
                });
            };
            if let Some(why) = vcpu.ended() {
                return Err(VmmError::DriverFailed {
                    why: format!("the vCPU stopped: {why}"),
                });
            }
            let parked = vcpu.wait_paused(POLL).is_ok();
            let work = running.device.work.load(Ordering::Relaxed);
            let exits = mmio_exits.load(Ordering::Relaxed);
            let signal = parked
                .then(|| signal.lock().unwrap_or_else(|p| p.into_inner()).take())
                .flatten();
            let frames = self.completed_frames();
            match stop {
                StopAt::Command(c) if work >= c => return Ok(false),
                StopAt::Frame(f) if frames >= f => return Ok(false),
                _ => {}
            }
            if parked {
                match signal {
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
                if let Some(KvmSession {
                    vcpu: Some(VcpuSlot::Spawned { vcpu, .. }),
                    ..
                }) = self.kvm.as_ref()
                {
                    vcpu.resume().map_err(kvm_err)?;
                }
            }
            // Progress: the guest's own counter, its MMIO (a booting guest uploads
            // textures for seconds on an emulated KVM), or the device's work.
            if (work, frames, exits) != last {
                last = (work, frames, exits);
                last_change = Instant::now();
            } else if last_change.elapsed() > self.kvm_stall {
                return Err(VmmError::Stalled {
                    frame: frames,
                    why: format!(
                        "neither the KVM guest (progress, MMIO) nor the device moved for {:.1} s",
                        self.kvm_stall.as_secs_f64()
                    ),
                });
            }
        }
    }
}
