//! Interrupt delivery as data: which message to send, or why none was sent.
//!
//! Mode selection follows PCI Express Base 4.0 §6.1.4: MSI-X when enabled, else MSI when
//! enabled, else INTx. Masked vectors set their pending bit (MSI Pending Bits §7.7.1.8,
//! MSI-X PBA §7.7.2.10) and fire when unmasked. A function with Bus Master disabled may
//! not send messages (PCI Local Bus 3.0 §6.8.1: MSI is a memory write), so an unmasked
//! message is dropped; a masked one still becomes pending.

use super::{ConfigChange, ConfigSpace};
use crate::caps::msi;
use crate::caps::MSI_BASE;
use crate::regs::{COMMAND_INTX_DISABLE, STATUS, STATUS_INTERRUPT};

/// The outcome of [`ConfigSpace::trigger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Send this message now (MSI or MSI-X).
    Msi {
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
    },
    /// The vector is masked (per vector, or the MSI-X function mask): its pending bit is
    /// set and it will be returned as a fire change when unmasked.
    Pending,
    /// INTx mode: the INTA# line level. The Interrupt Status bit is set; it stays set until
    /// [`ConfigSpace::intx_deassert`].
    Intx {
        /// Line level.
        asserted: bool,
    },
    /// Nothing was sent.
    Dropped {
        /// Why.
        reason: DropReason,
    },
}

/// Why [`ConfigSpace::trigger`] sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The vector is beyond the enabled mode's vectors (MSI has one; MSI-X has the table).
    VectorOutOfRange,
    /// Bus Master is disabled, so the function may not send a message.
    BusMasterDisabled,
    /// INTx mode with COMMAND Interrupt Disable set. Interrupt Status is still set, so the
    /// line asserts (as an [`ConfigChange::IntxLevel`]) when the guest clears the disable.
    IntxDisabled,
}

impl ConfigSpace {
    /// Whether INTA# is asserted: Interrupt Status set, INTx not disabled, and neither MSI
    /// nor MSI-X enabled.
    pub fn intx_asserted(&self) -> bool {
        self.status() & STATUS_INTERRUPT != 0
            && self.command() & COMMAND_INTX_DISABLE == 0
            && !self.msi().enabled
            && !self.msix_control().enabled
    }

    /// The device raises interrupt `vector` (the MSI-X vector, MSI vector 0, or any value
    /// for INTx, which has a single line).
    pub fn trigger(&mut self, vector: u16) -> Delivery {
        let msix = self.msix_control();
        if msix.enabled {
            let Some(entry) = self.msix_entry(vector) else {
                return Delivery::Dropped {
                    reason: DropReason::VectorOutOfRange,
                };
            };
            if msix.function_mask || entry.masked {
                self.msix_table_mut().set_pending(vector, true);
                return Delivery::Pending;
            }
            return self.send(entry.address, entry.data);
        }
        let msi = self.msi();
        if msi.enabled {
            if vector >= msi::VECTORS {
                return Delivery::Dropped {
                    reason: DropReason::VectorOutOfRange,
                };
            }
            if msi.masked {
                msi::set_pending(self.block_mut(), MSI_BASE, true);
                return Delivery::Pending;
            }
            return self.send(msi.address, msi.data);
        }
        self.block_mut().set_device_bits(
            STATUS,
            2,
            u32::from(STATUS_INTERRUPT),
            u32::from(STATUS_INTERRUPT),
        );
        if self.command() & COMMAND_INTX_DISABLE != 0 {
            return Delivery::Dropped {
                reason: DropReason::IntxDisabled,
            };
        }
        Delivery::Intx { asserted: true }
    }

    fn send(&self, address: u64, data: u32) -> Delivery {
        if self.bus_master() {
            Delivery::Msi { address, data }
        } else {
            Delivery::Dropped {
                reason: DropReason::BusMasterDisabled,
            }
        }
    }

    /// The device clears its INTx condition (Interrupt Status). Returns the line going low
    /// if it was asserted.
    pub fn intx_deassert(&mut self) -> Option<Delivery> {
        let was = self.intx_asserted();
        self.block_mut()
            .set_device_bits(STATUS, 2, u32::from(STATUS_INTERRUPT), 0);
        was.then_some(Delivery::Intx { asserted: false })
    }

    /// Fires every pending vector that became deliverable: enabled, unmasked, Bus Master
    /// on. Clears their pending bits and returns them as fire changes.
    pub(crate) fn fire_ready(&mut self) -> Vec<ConfigChange> {
        let mut out = Vec::new();
        if !self.bus_master() {
            return out;
        }
        let msi = self.msi();
        if msi.enabled && !msi.masked && msi.pending {
            msi::set_pending(self.block_mut(), MSI_BASE, false);
            out.push(ConfigChange::MsiFire {
                address: msi.address,
                data: msi.data,
            });
        }
        let ctl = self.msix_control();
        if ctl.enabled && !ctl.function_mask {
            for vector in 0..self.msix_table().vectors() {
                if !self.msix_pending(vector) {
                    continue;
                }
                let Some(entry) = self.msix_entry(vector).filter(|e| !e.masked) else {
                    continue;
                };
                self.msix_table_mut().set_pending(vector, false);
                out.push(ConfigChange::MsixFire {
                    vector,
                    address: entry.address,
                    data: entry.data,
                });
            }
        }
        out
    }
}
