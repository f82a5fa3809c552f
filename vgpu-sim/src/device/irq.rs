//! Interrupts: events latch into IIR through IMR; IIR & IER drives vector 0.
//!
//! ```text
//!  event ──► ISR (raw) ──► IIR (unless IMR masks it) ──► IIR & IER != 0 ?
//!                                                         │ rises, or stays set after
//!                                                         │ the guest cleared some IIR bits
//!                                                         ▼
//!                     owed ──► ConfigSpace::trigger(0) ──► MSI-X / MSI / INTx ──► IrqSink
//!                     (kept until the device runs and a sink for the mode is wired)
//! ```
//!
//! While IIR & IER stays non-zero the device does not signal again until the guest writes
//! IIR. A masked vector becomes pending in the configuration space (PBA / MSI pending bit)
//! and fires when unmasked: the config write returns the fire and the device signals it.
//!
//! After a restore the saved `owed` flag comes back, and the device also re-arms: if IIR &
//! IER is still non-zero when it next runs, it signals once more. The source may have
//! signalled just before it stopped without the guest having seen it yet; a spurious MSI
//! costs the driver one IIR read, a lost one hangs it.

use std::sync::Arc;

use mdev_core::uapi::{VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX};
use mdev_core::IrqSink;
use pci_config_replay::{ConfigChange, Delivery};
use slog::debug;

use super::Vgpu;
use crate::regs::{INT_ALL, REG_IER, REG_IIR, REG_IMR, REG_ISR};

impl Vgpu {
    /// Whether IIR & IER is non-zero (the interrupt condition).
    pub(crate) fn irq_level(&self) -> bool {
        self.regs.get(REG_IIR) & self.regs.get(REG_IER) != 0
    }

    /// Latch event bits (`INT_*`): ISR always, IIR unless masked, and signal on a rising
    /// condition.
    pub(crate) fn latch(&mut self, bits: u32) {
        let bits = bits & INT_ALL;
        if bits == 0 {
            return;
        }
        let was = self.irq_level();
        let isr = self.regs.get(REG_ISR);
        self.regs.set(REG_ISR, isr | bits);
        let iir = self.regs.get(REG_IIR);
        let imr = self.regs.get(REG_IMR);
        self.regs.set(REG_IIR, iir | (bits & !imr));
        self.irq_update(was, false);
    }

    /// Re-evaluate the condition after a change; `resignal` asks for another signal if
    /// the condition is still set (the guest wrote IIR).
    pub(crate) fn irq_update(&mut self, was: bool, resignal: bool) {
        let now = self.irq_level();
        if now && (!was || resignal) {
            self.irq.owed = true;
            self.deliver_owed();
        } else if !now {
            self.irq.owed = false;
            if was {
                let _ = self.config.intx_deassert();
            }
        }
    }

    /// The irq index vector 0 goes out on in the current configuration.
    fn irq_mode(&self) -> u32 {
        if self.config.msix_control().enabled {
            VFIO_PCI_MSIX_IRQ_INDEX
        } else if self.config.msi().enabled {
            VFIO_PCI_MSI_IRQ_INDEX
        } else {
            VFIO_PCI_INTX_IRQ_INDEX
        }
    }

    fn sink(&self, index: u32) -> Option<Arc<dyn IrqSink>> {
        self.irq.sinks.get(index as usize).cloned().flatten()
    }

    /// Deliver an owed interrupt (or a re-armed one after restore) if the device runs and
    /// a sink for the current mode is wired; otherwise keep it owed.
    pub(crate) fn deliver_owed(&mut self) {
        if !self.mig.state().is_running() {
            return;
        }
        if self.irq.rearm {
            self.irq.rearm = false;
            self.irq.owed |= self.irq_level();
        }
        if !self.irq.owed {
            return;
        }
        let index = self.irq_mode();
        let Some(sink) = self.sink(index) else {
            return;
        };
        self.irq.owed = false;
        match self.config.trigger(0) {
            Delivery::Msi { .. } => sink.signal(index, 0),
            Delivery::Intx { asserted: true } => sink.signal(VFIO_PCI_INTX_IRQ_INDEX, 0),
            other => debug!(self.log, "interrupt not signalled"; "delivery" => ?other),
        }
    }

    /// Signal what configuration changes ask to fire now (a pending MSI or MSI-X vector
    /// unmasked, INTx line asserting). A device that is not running (STOP, RESUMING, the
    /// saving states after the stop) raises no interrupt, as the uAPI requires
    /// (include/uapi/linux/vfio.h, `VFIO_DEVICE_STATE_STOP`: "the device does not ...
    /// generate interrupts"): what would fire is owed instead and delivered once the
    /// device runs again (a VMM replaying config on a target unmasks vectors in STOP).
    pub fn apply_config_changes(&mut self, changes: &[ConfigChange]) {
        if !self.mig.state().is_running() {
            if changes.iter().any(|c| {
                matches!(
                    c,
                    ConfigChange::MsiFire { .. }
                        | ConfigChange::MsixFire { .. }
                        | ConfigChange::IntxLevel { asserted: true }
                )
            }) {
                debug!(self.log, "fire while not running: owed until RUNNING";
                       "state" => %self.mig.state());
                self.irq.owed = true;
            }
            return;
        }
        for c in changes {
            let (index, vector) = match *c {
                ConfigChange::MsiFire { .. } => (VFIO_PCI_MSI_IRQ_INDEX, 0),
                ConfigChange::MsixFire { vector, .. } => (VFIO_PCI_MSIX_IRQ_INDEX, vector.into()),
                ConfigChange::IntxLevel { asserted: true } => (VFIO_PCI_INTX_IRQ_INDEX, 0),
                _ => continue,
            };
            match self.sink(index) {
                Some(s) => s.signal(index, vector),
                None => debug!(self.log, "fire with no sink wired"; "index" => index),
            }
        }
    }
}
