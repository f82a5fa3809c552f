//! The vGPU: one PCI function with a register BAR, an aperture BAR, a render engine, a
//! shadowed GTT, interrupts, and live migration.
//!
//! ```text
//!               VfioDevice (vfio.rs)
//!   region 0 BAR0 ──► mmio.rs: registers (regfile.rs) ─┬─ IIR/IMR/IER ──► irq.rs ──► IrqSink
//!                     MSI-X table/PBA ─► ConfigSpace   │                    ▲
//!                     GTT window ──────► ShadowGtt ────┼────────────────────┤ (GTT error)
//!   region 2 BAR2 ──► aperture ────────► GraphicsMemory (gmem.rs, dirty pages)
//!   region 7 config ► ConfigSpace (pci-config-replay) ─► ConfigChange (returned) + fires
//!   region 9 v1 migration region (StateRegion) ─┐
//!   migration() ───────────────────────────────┴► migration/: MigrationArcs + data stream
//!
//!   run(budget) ──► Engine::run(bus = the device, bus.rs) ──► regs, gmem, DMA via ShadowGtt
//! ```
//!
//! Guest accesses never fail and never panic: a bad offset, width or value is ignored with
//! a rate-limited warning (warn.rs), or raises the device's error interrupt as hardware
//! would.

mod bus;
mod error;
pub mod gmem;
mod irq;
pub mod migration;
mod mmio;
pub mod regfile;
pub mod shared;
mod throttle;
mod vfio;
mod warn;
mod zeroed;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use mdev_core::uapi::{VFIO_MIGRATION_STOP_COPY, VFIO_PCI_NUM_IRQS};
use mdev_core::{IrqSink, MigState, MigrationController};
use pci_config_replay::ConfigSpace;
use shadow_pt::{DirtyTracking, RemoteMemory, ShadowGtt};
use slog::{o, Discard, Logger};
use state_region::{StateRegion, V1Checks, DEFAULT_WINDOW};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::GuestMemoryMmap;

use crate::engine::Engine;
use crate::regs::GTT_ENTRIES;
use crate::types::VgpuType;

pub use error::{Result, VgpuError};
pub use gmem::{GraphicsMemory, PageBitmap};
pub use migration::{
    SectionId, VgpuState, MIGRATION_FEATURES, MIGRATION_REGION_INDEX, NUM_REGIONS,
};
pub use regfile::Registers;
pub use shared::SharedVgpu;
pub use throttle::{EngineClock, MonotonicClock};

use gmem::GraphicsMemory as Gmem;
use migration::{ResumeSession, SaveStream};
use throttle::Throttle;
use warn::GuestWarnings;
use zeroed::ZeroedBuf;

/// Everything needed to build a [`Vgpu`]: the type and the live handles.
#[derive(Debug, Clone)]
pub struct VgpuConfig {
    /// The mdev type (graphics memory size, PCI identity).
    pub mdev_type: VgpuType,
    /// Guest RAM, which the device reaches by DMA through its GTT.
    pub guest_mem: GuestMemoryMmap<AtomicBitmap>,
    /// Guest RAM the device cannot map, reached through a port (a device served over
    /// vfio-user with DMA by message). [`VgpuConfig::new`] takes what the building thread
    /// has installed ([`shadow_pt::remote::install`]), so factories that pass only mapped
    /// memory need no change.
    pub remote_dma: Option<RemoteMemory>,
    /// How the device's DMA writes are tracked for migration.
    pub dirty_tracking: DirtyTracking,
    /// Where the device logs.
    pub logger: Logger,
    /// Data window of the v1 migration region, in bytes.
    pub state_window: usize,
    /// The clock the engine throttle measures busy and wall time with.
    pub clock: Arc<dyn EngineClock>,
    /// The v2 migration features offered (`VFIO_MIGRATION_*`): STOP_COPY is mandatory,
    /// P2P and PRE_COPY optional (the uAPI lets a driver offer any such set).
    pub migration_features: u32,
    /// How strictly the v1 region checks the VMM's access sequence (strict by default,
    /// to catch VMM bugs; lenient accepts what a driver that cannot check would).
    pub v1_checks: V1Checks,
    /// Allocate and fault in the first resume's staging area (a graphics memory's worth)
    /// when the device is built, as a migration target that is made ahead of the stream
    /// should: the stream then never waits for the kernel to zero fresh pages.
    pub prefault_staging: bool,
}

impl VgpuConfig {
    /// A config with precise (shadow page table) dirty tracking, no logging, the default
    /// 1 MiB migration window, and the remote memory installed on this thread (normally
    /// none).
    pub fn new(mdev_type: VgpuType, guest_mem: GuestMemoryMmap<AtomicBitmap>) -> Self {
        Self {
            mdev_type,
            guest_mem,
            remote_dma: shadow_pt::remote::installed(),
            dirty_tracking: DirtyTracking::ShadowPt,
            logger: Logger::root(Discard, o!()),
            state_window: DEFAULT_WINDOW,
            clock: Arc::new(MonotonicClock::default()),
            migration_features: MIGRATION_FEATURES,
            v1_checks: V1Checks::Strict,
            prefault_staging: false,
        }
    }
}

/// Interrupt outputs: one sink per VFIO irq index, and what is still to be delivered.
#[derive(Debug, Default)]
pub(crate) struct IrqOut {
    pub(crate) sinks: [Option<Arc<dyn IrqSink>>; VFIO_PCI_NUM_IRQS as usize],
    /// Vector 0 must be signalled once the device runs with a sink wired (saved).
    pub(crate) owed: bool,
    /// After a restore: re-signal if IIR & IER is still non-zero when the device runs.
    pub(crate) rearm: bool,
}

/// A simulated vGPU: a PCI function with BAR0 (registers, MSI-X, GTT window), BAR2
/// (aperture onto graphics memory), a render engine, and v1/v2 live migration.
#[derive(Debug)]
pub struct Vgpu {
    ty: VgpuType,
    log: Logger,
    warn: GuestWarnings,
    regs: Registers,
    gmem: Gmem,
    gtt: ShadowGtt,
    engine: Engine,
    config: ConfigSpace,
    irq: IrqOut,
    mig: MigrationController,
    save: Option<SaveStream>,
    resume: Option<Box<ResumeSession>>,
    /// A staging area faulted in at creation for the first resume
    /// ([`VgpuConfig::prefault_staging`]).
    spare_staging: Option<ZeroedBuf>,
    /// The v1 migration region; `None` only while lent out during one of its accesses.
    region: Option<StateRegion>,
    /// Engine time against wall time, for the auto-converge throttle.
    throttle: Throttle,
}

impl Vgpu {
    /// A device fresh out of reset, in migration state RUNNING.
    pub fn new(cfg: VgpuConfig) -> Result<Self> {
        let ty = cfg.mdev_type;
        let features = cfg.migration_features;
        if features & VFIO_MIGRATION_STOP_COPY == 0 || features & !MIGRATION_FEATURES != 0 {
            return Err(VgpuError::MigrationFeatures { features });
        }
        let log = cfg.logger.new(o!("vgpu" => ty.name));
        let config = ConfigSpace::new(ty.config_params())
            .map_err(|e| VgpuError::ConfigParams {
                reason: e.to_string(),
            })?
            .with_logger(log.clone());
        let gtt = ShadowGtt::new(
            GTT_ENTRIES as usize,
            cfg.guest_mem,
            cfg.dirty_tracking,
            log.clone(),
        )
        .map_err(|e| VgpuError::Gtt {
            reason: e.to_string(),
        })?
        .with_remote(cfg.remote_dma);
        let region = StateRegion::new(cfg.state_window)
            .with_index(MIGRATION_REGION_INDEX)
            .with_checks(cfg.v1_checks)
            .with_logger(log.clone());
        Ok(Self {
            ty,
            warn: GuestWarnings::default(),
            regs: Registers::default(),
            gmem: Gmem::new(ty.gmem_size),
            gtt,
            engine: Engine::new(),
            config,
            irq: IrqOut::default(),
            mig: MigrationController::new(features),
            save: None,
            resume: None,
            spare_staging: cfg.prefault_staging.then(|| {
                let mut b = gmem::zeroed(ty.gmem_size);
                b.populate();
                b
            }),
            region: Some(region),
            throttle: Throttle::new(cfg.clock),
            log,
        })
    }

    /// The mdev type.
    pub fn mdev_type(&self) -> VgpuType {
        self.ty
    }

    /// The configuration space, for the VMM's config save.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The configuration space, for the VMM's config replay. Fires that a replay write
    /// returns ([`pci_config_replay::ConfigChange::MsiFire`] and friends) should be passed
    /// to [`Vgpu::apply_config_changes`] so the device signals them.
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// The register file (read-only view, for tests and tools).
    pub fn registers(&self) -> &Registers {
        &self.regs
    }

    /// Graphics memory (read-only view).
    pub fn graphics_memory(&self) -> &GraphicsMemory {
        &self.gmem
    }

    /// The shadow GTT (read-only view).
    pub fn gtt(&self) -> &ShadowGtt {
        &self.gtt
    }

    /// The current migration state.
    pub fn mig_state(&self) -> MigState {
        self.mig.state()
    }

    /// Run the engine for at most `budget` commands (scaled down by the throttle); returns
    /// the commands executed. Does nothing unless the migration state is a running one.
    /// Interrupts still owed (after a restore, or raised before a sink was wired) are
    /// delivered first.
    pub fn run(&mut self, budget: usize) -> usize {
        if !self.mig.state().is_running() {
            return 0;
        }
        self.deliver_owed();
        if budget == 0 || !self.throttle.allow() {
            return 0;
        }
        // The engine borrows the rest of the device as its bus; lend it out for the call.
        let mut engine = std::mem::take(&mut self.engine);
        let started = self.throttle.start_busy();
        let n = engine.run(self, budget);
        self.engine = engine;
        self.throttle.end_busy(started);
        n
    }

    /// Whether the engine has nothing to do (ring disabled, or head == tail outside a batch).
    pub fn is_idle(&self) -> bool {
        self.engine.is_idle(self)
    }

    /// Whether the engine is halted by an error (until reset).
    pub fn is_halted(&self) -> bool {
        self.engine.is_halted()
    }

    /// Host-side throttle for auto-converge: cut `percent` (0..=99, clamped) of every run
    /// budget. 0 is full speed.
    pub fn set_throttle(&mut self, percent: u8) {
        self.throttle.set(percent);
    }

    /// The current throttle in percent.
    pub fn throttle(&self) -> u8 {
        self.throttle.percent()
    }

    /// Back to power-on: registers, graphics memory, GTT and engine reset, migration state
    /// RUNNING, streams dropped. Configuration space and irq sinks are kept (as vfio-pci
    /// saves and restores config around a function reset).
    fn reset_device(&mut self) {
        self.regs = Registers::default();
        self.gmem.reset();
        self.gtt.clear();
        self.engine = Engine::new();
        self.irq.owed = false;
        self.irq.rearm = false;
        self.mig.reset();
        self.save = None;
        self.resume = None;
        if let Some(i) = self.config.intx_deassert() {
            slog::debug!(self.log, "reset deasserted INTx"; "delivery" => ?i);
        }
    }
}
