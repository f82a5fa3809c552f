//! The serial device: FIFOs, line, interrupt latch, config space, and its VFIO face.
//!
//! ```text
//!  guest TX write ─► TX FIFO ─► line (advance: one byte per unit) ─► transform ─► RX FIFO
//!                                                                    │
//!                    ISR |= RX ◄──────────────────────────────────────┘
//!                    ISR & IER rises ─► owed ─► ConfigSpace::trigger(0) ─► IrqSink (MSI-X 0)
//! ```
//!
//! An interrupt raised while the device is not running or has no sink stays owed (and is
//! saved); a masked vector becomes pending in the PBA and fires when the guest or a config
//! replay unmasks it. After a restore the device re-arms: if ISR & IER is set when it next
//! runs it signals once more (a spurious interrupt costs the guest one ISR read, a lost
//! one would hang it).

mod migration;
mod mmio;
mod null_log;
pub mod shared;
mod vfio;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

use mdev_core::uapi::{VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS};
use mdev_core::{IrqSink, MigrationController};
use pci_config_replay::{ConfigChange, ConfigSpace, Delivery};
use slog::{debug, o, warn, Logger};
use state_region::StateRegion;

use crate::regs::{config_params, transform, BAR2_SIZE, INT_ALL, INT_RX, RX_DEPTH, TX_DEPTH};
use crate::state::SerialState;

pub use migration::{MIGRATION_FEATURES, MIGRATION_REGION_INDEX, NUM_REGIONS};
pub use null_log::NullDmaLog;
pub use shared::SharedSerial;

/// How to build a device.
#[derive(Debug, Clone)]
pub struct SerialConfig {
    /// Expose the v1 migration region (`StateRegion` over the v2 stream), which the VMM's
    /// snapshot and migration code look for.
    pub v1_region: bool,
    /// Offer a DMA dirty log. The device does no DMA, so the log never reports a page;
    /// without it `dma_dirty_log()` is `None`.
    pub dma_log: bool,
    /// The v2 migration features offered (`VFIO_MIGRATION_*`; STOP_COPY is mandatory).
    /// Without PRE_COPY the state moves in stop-copy alone.
    pub migration_features: u32,
    /// Logger.
    pub log: Logger,
}

impl SerialConfig {
    /// v1 region on, no DMA log.
    pub fn new(log: Logger) -> Self {
        Self {
            v1_region: true,
            dma_log: false,
            migration_features: MIGRATION_FEATURES,
            log,
        }
    }
}

/// Counts guest misbehaviour and logs the first few of each run of it, then one in 1024:
/// a misbehaving guest cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct GuestWarnings {
    count: u64,
}

impl GuestWarnings {
    /// Whether this occurrence should be logged.
    pub(crate) fn allow(&mut self) -> bool {
        self.count += 1;
        self.count <= 8 || self.count % 1024 == 0
    }
}

/// A serial-port-like PCI function with v1/v2 live migration.
#[derive(Debug)]
pub struct Serial {
    log: Logger,
    warn: GuestWarnings,
    config: ConfigSpace,
    key: u8,
    ier: u32,
    isr: u32,
    overrun: bool,
    tx_count: u64,
    rx_count: u64,
    tx: VecDeque<u8>,
    rx: VecDeque<u8>,
    scratch: Vec<u8>,
    sinks: [Option<Arc<dyn IrqSink>>; VFIO_PCI_NUM_IRQS as usize],
    owed: bool,
    rearm: bool,
    mig: MigrationController,
    save: Option<migration::SaveStream>,
    resume: Option<Vec<u8>>,
    /// The v1 migration region; `None` when not exposed, or while lent out.
    region: Option<StateRegion>,
    has_region: bool,
    /// The DMA dirty log it offers (see [`SerialConfig::dma_log`]).
    dma_log: Option<NullDmaLog>,
}

/// Errors building a device.
#[derive(Debug, snafu::Snafu)]
pub enum SerialError {
    /// The config params do not describe a buildable function.
    #[snafu(display("serial device config params: {source}"))]
    Params {
        /// The cause.
        source: pci_config_replay::ParamsError,
    },
}

impl Serial {
    /// A device fresh out of reset, migration state RUNNING.
    pub fn new(cfg: &SerialConfig) -> Result<Self, SerialError> {
        use snafu::ResultExt;
        let log = cfg.log.new(o!("device" => "serial"));
        let config = ConfigSpace::new(config_params())
            .context(ParamsSnafu)?
            .with_logger(log.clone());
        let region = cfg.v1_region.then(|| {
            StateRegion::new(64 << 10)
                .with_index(MIGRATION_REGION_INDEX)
                .with_logger(log.clone())
        });
        Ok(Self {
            warn: GuestWarnings::default(),
            config,
            key: 0,
            ier: 0,
            isr: 0,
            overrun: false,
            tx_count: 0,
            rx_count: 0,
            tx: VecDeque::with_capacity(TX_DEPTH),
            rx: VecDeque::with_capacity(RX_DEPTH),
            scratch: vec![0; BAR2_SIZE as usize],
            sinks: Default::default(),
            owed: false,
            rearm: false,
            mig: MigrationController::new(cfg.migration_features).keeping_last_state_on_failure(),
            save: None,
            resume: None,
            has_region: region.is_some(),
            region,
            dma_log: cfg.dma_log.then(NullDmaLog::default),
            log,
        })
    }

    /// The config space (read-only view, for tests).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// Bytes in the RX FIFO.
    pub fn rx_level(&self) -> usize {
        self.rx.len()
    }

    /// The interrupt status latch (ISR).
    pub fn isr(&self) -> u32 {
        self.isr
    }

    /// Bytes the line has moved since reset (RX_COUNT).
    pub fn rx_count(&self) -> u64 {
        self.rx_count
    }

    /// The device's state as it would be saved.
    pub fn state(&self) -> SerialState {
        SerialState {
            key: self.key,
            ier: self.ier,
            isr: self.isr,
            overrun: self.overrun,
            owed: self.owed,
            tx_count: self.tx_count,
            rx_count: self.rx_count,
            tx_fifo: self.tx.iter().copied().collect(),
            rx_fifo: self.rx.iter().copied().collect(),
            scratch: self.scratch.clone(),
            config: self.config.state(),
        }
    }

    /// Power-on state (the migration state goes back to RUNNING; sinks stay wired).
    fn reset_device(&mut self) {
        if let Ok(c) = ConfigSpace::new(config_params()) {
            self.config = c.with_logger(self.log.clone());
        }
        self.key = 0;
        self.ier = 0;
        self.isr = 0;
        self.overrun = false;
        self.tx_count = 0;
        self.rx_count = 0;
        self.tx.clear();
        self.rx.clear();
        self.scratch.fill(0);
        self.owed = false;
        self.rearm = false;
        self.mig.reset();
        self.save = None;
        self.resume = None;
    }

    /// Let the line move up to `budget` bytes from TX to RX. Nothing moves unless the
    /// device runs. Returns the bytes moved.
    pub fn advance(&mut self, budget: usize) -> usize {
        if !self.mig.state().is_running() {
            return 0;
        }
        let mut moved = 0;
        while moved < budget && self.rx.len() < RX_DEPTH {
            let Some(b) = self.tx.pop_front() else { break };
            self.rx.push_back(transform(b, self.key, self.rx_count));
            self.rx_count += 1;
            moved += 1;
        }
        if moved > 0 {
            self.latch(INT_RX);
        }
        moved
    }

    fn irq_level(&self) -> bool {
        self.isr & self.ier != 0
    }

    /// Latch interrupt causes in ISR; signal on a rising ISR & IER.
    fn latch(&mut self, bits: u32) {
        let was = self.irq_level();
        self.isr |= bits & INT_ALL;
        self.irq_update(was, false);
    }

    /// Re-evaluate after a change; `resignal` asks for another signal if still set (the
    /// guest cleared some ISR bits, or enabled an interrupt).
    fn irq_update(&mut self, was: bool, resignal: bool) {
        let now = self.irq_level();
        if now && (!was || resignal) {
            self.owed = true;
            self.deliver_owed();
        } else if !now {
            self.owed = false;
        }
    }

    /// Signal an owed interrupt if the device runs and MSI-X has a sink; else keep it owed.
    fn deliver_owed(&mut self) {
        if !self.mig.state().is_running() {
            return;
        }
        if self.rearm {
            self.rearm = false;
            self.owed |= self.irq_level();
        }
        if !self.owed {
            return;
        }
        let Some(sink) = self.sinks[VFIO_PCI_MSIX_IRQ_INDEX as usize].clone() else {
            return;
        };
        self.owed = false;
        match self.config.trigger(0) {
            Delivery::Msi { .. } => sink.signal(VFIO_PCI_MSIX_IRQ_INDEX, 0),
            other => debug!(self.log, "interrupt not signalled"; "delivery" => ?other),
        }
    }

    /// Signal the MSI-X fires a config or MSI-X table write asks for (a pending vector
    /// unmasked).
    fn apply_config_changes(&mut self, changes: &[ConfigChange]) {
        for c in changes {
            if let ConfigChange::MsixFire { vector, .. } = *c {
                match self.sinks[VFIO_PCI_MSIX_IRQ_INDEX as usize].as_ref() {
                    Some(s) => s.signal(VFIO_PCI_MSIX_IRQ_INDEX, u32::from(vector)),
                    None => {
                        if self.warn.allow() {
                            warn!(self.log, "MSI-X fire with no sink wired"; "vector" => vector);
                        }
                    }
                }
            }
        }
    }

    /// Swap in a validated state (the commit of RESUMING -> STOP).
    fn apply_state(&mut self, s: SerialState, config: ConfigSpace) {
        self.key = s.key;
        self.ier = s.ier;
        self.isr = s.isr;
        self.overrun = s.overrun;
        self.owed = s.owed;
        self.rearm = true;
        self.tx_count = s.tx_count;
        self.rx_count = s.rx_count;
        self.tx = s.tx_fifo.into();
        self.rx = s.rx_fifo.into();
        self.scratch = s.scratch;
        self.config = config.with_logger(self.log.clone());
    }
}
