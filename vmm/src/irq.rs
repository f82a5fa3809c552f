//! Interrupt delivery from the device to the vCPU.
//!
//! The device signals `(irq index, vector)` on the [`IrqSink`] the VMM registered with
//! `set_irqs`, as a VFIO device signals an eventfd. The VMM resolves the vector through its
//! routing table (built from the guest's MSI/MSI-X programming, see
//! `pci_config_replay::InterruptRoute`) to a message, and the message's data to a vCPU
//! vector, as KVM's irqfd and MSI routing do.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use mdev_core::IrqSink;

/// A queue of signals from the device, drained by the VMM's run loop.
#[derive(Debug, Default)]
pub struct IrqQueue {
    signals: Mutex<VecDeque<(u32, u32)>>,
}

impl IrqQueue {
    /// A new, shareable queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Take every signal received so far.
    pub fn drain(&self) -> Vec<(u32, u32)> {
        match self.signals.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        }
    }
}

impl IrqSink for IrqQueue {
    fn signal(&self, index: u32, vector: u32) {
        match self.signals.lock() {
            Ok(mut q) => q.push_back((index, vector)),
            Err(poisoned) => poisoned.into_inner().push_back((index, vector)),
        }
    }
}

/// The local APIC's MSI address window (x86).
pub const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

/// The vCPU vector an MSI message asks for, if the address targets the local APIC.
pub fn msi_vector(address: u64, data: u32) -> Option<u8> {
    (address & 0xfff0_0000 == MSI_ADDRESS_BASE).then_some(data as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_collects_in_order() {
        let q = IrqQueue::new();
        q.signal(2, 0);
        q.signal(1, 0);
        assert_eq!(q.drain(), vec![(2, 0), (1, 0)]);
        assert!(q.drain().is_empty());
    }

    #[test]
    fn msi_vector_needs_the_apic_window() {
        assert_eq!(msi_vector(0xfee0_0000, 0x41), Some(0x41));
        assert_eq!(msi_vector(0x1000, 0x41), None);
    }
}
