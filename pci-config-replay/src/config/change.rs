//! What a guest write changed, returned as data for the VMM to act on.

use crate::caps::msi::MsiConfig;
use crate::caps::msix::MsixControl;
use crate::caps::pm::PowerState;

/// One effect of a guest write (or of a replay step) that the VMM or device must apply.
///
/// A single write may return several changes; they come in this order: decode enables,
/// BAR moves, INTx line level, MSI, MSI-X, power state, then vectors that must fire now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// COMMAND I/O Space enable changed (legacy VGA ports decode).
    IoDecode {
        /// New value.
        enabled: bool,
    },
    /// COMMAND Memory Space enable changed. Each BAR whose decode address changes as a
    /// result is also reported with [`ConfigChange::BarMoved`].
    MemoryDecode {
        /// New value.
        enabled: bool,
    },
    /// COMMAND Bus Master enable changed (DMA and MSI/MSI-X sending allowed).
    BusMaster {
        /// New value.
        enabled: bool,
    },
    /// The address a BAR decodes at changed. `None` means "not decoding" (memory decode
    /// off, or the BAR unprogrammed or holding the sizing pattern).
    BarMoved {
        /// BAR number (0 or 2).
        bar: u8,
        /// Previous decode address.
        old: Option<u64>,
        /// New decode address.
        new: Option<u64>,
    },
    /// The INTx line level changed (interrupt status, INTx disable, or MSI/MSI-X enable).
    IntxLevel {
        /// Whether INTA# is now asserted.
        asserted: bool,
    },
    /// The MSI enable, address, data or mask changed; carries the new configuration.
    MsiChanged {
        /// MSI Enable.
        enabled: bool,
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
        /// Vector 0 mask bit.
        masked: bool,
    },
    /// The pending MSI vector was unmasked (or became deliverable) and must fire now; its
    /// pending bit has been cleared.
    MsiFire {
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
    },
    /// MSI-X Enable or Function Mask changed.
    MsixEnable {
        /// MSI-X Enable.
        enabled: bool,
        /// Function Mask.
        function_mask: bool,
    },
    /// An MSI-X table entry changed; carries the new entry.
    MsixEntryChanged {
        /// Vector number.
        vector: u16,
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
        /// Vector Control mask bit.
        masked: bool,
    },
    /// A pending MSI-X vector became deliverable and must fire now; its PBA bit has been
    /// cleared.
    MsixFire {
        /// Vector number.
        vector: u16,
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
    },
    /// The PMCSR power state changed.
    PowerState {
        /// Previous state.
        old: PowerState,
        /// New state.
        new: PowerState,
    },
}

/// The guest-visible effects of the configuration registers, compared before and after a
/// write to find what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) io: bool,
    pub(crate) memory: bool,
    pub(crate) bus_master: bool,
    pub(crate) bars: [(u8, Option<u64>); 2],
    pub(crate) intx: bool,
    pub(crate) msi: MsiConfig,
    pub(crate) msix: MsixControl,
    pub(crate) power: PowerState,
}

impl Snapshot {
    /// The changes from `self` to `after`, in the documented order.
    pub(crate) fn diff(&self, after: &Snapshot) -> Vec<ConfigChange> {
        let mut out = Vec::new();
        if self.io != after.io {
            out.push(ConfigChange::IoDecode { enabled: after.io });
        }
        if self.memory != after.memory {
            out.push(ConfigChange::MemoryDecode {
                enabled: after.memory,
            });
        }
        if self.bus_master != after.bus_master {
            out.push(ConfigChange::BusMaster {
                enabled: after.bus_master,
            });
        }
        for (&(bar, old), &(_, new)) in self.bars.iter().zip(after.bars.iter()) {
            if old != new {
                out.push(ConfigChange::BarMoved { bar, old, new });
            }
        }
        if self.intx != after.intx {
            out.push(ConfigChange::IntxLevel {
                asserted: after.intx,
            });
        }
        let (b, a) = (self.msi, after.msi);
        if (b.enabled, b.address, b.data, b.masked) != (a.enabled, a.address, a.data, a.masked) {
            out.push(ConfigChange::MsiChanged {
                enabled: a.enabled,
                address: a.address,
                data: a.data,
                masked: a.masked,
            });
        }
        if self.msix != after.msix {
            out.push(ConfigChange::MsixEnable {
                enabled: after.msix.enabled,
                function_mask: after.msix.function_mask,
            });
        }
        if self.power != after.power {
            out.push(ConfigChange::PowerState {
                old: self.power,
                new: after.power,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Snapshot {
        Snapshot {
            io: false,
            memory: false,
            bus_master: false,
            bars: [(0, None), (2, None)],
            intx: false,
            msi: MsiConfig {
                enabled: false,
                address: 0,
                data: 0,
                masked: false,
                pending: false,
            },
            msix: MsixControl {
                enabled: false,
                function_mask: false,
            },
            power: PowerState::D0,
        }
    }

    #[test]
    fn no_change_is_empty() {
        assert!(base().diff(&base()).is_empty());
    }

    #[test]
    fn pending_alone_is_not_an_msi_change() {
        let mut after = base();
        after.msi.pending = true;
        assert!(base().diff(&after).is_empty());
    }

    #[test]
    fn changes_come_in_order() {
        let mut after = base();
        after.power = PowerState::D3Hot;
        after.memory = true;
        after.bars[1].1 = Some(0xc000_0000);
        after.msix.enabled = true;
        after.bus_master = true;
        assert_eq!(
            base().diff(&after),
            vec![
                ConfigChange::MemoryDecode { enabled: true },
                ConfigChange::BusMaster { enabled: true },
                ConfigChange::BarMoved {
                    bar: 2,
                    old: None,
                    new: Some(0xc000_0000)
                },
                ConfigChange::MsixEnable {
                    enabled: true,
                    function_mask: false
                },
                ConfigChange::PowerState {
                    old: PowerState::D0,
                    new: PowerState::D3Hot
                },
            ]
        );
    }
}
