//! Interrupt latching, masking and delivery.

use mdev_core::uapi::*;
use mdev_core::{MigState, MigrationDevice, VfioDevice};
use pci_config_replay::caps::{msi, msix, MSIX_BASE, MSI_BASE};

use super::*;
use crate::engine::EngineBus;

const MSIX: (u32, u32) = (VFIO_PCI_MSIX_IRQ_INDEX, 0);

#[test]
fn events_latch_through_imr_and_deliver_once_per_edge() {
    let mut d = device();
    let rec = wire_msix(&mut d);
    // Masked in IMR: ISR sees it, IIR does not.
    d.raise(INT_USER);
    assert_eq!(rd(&mut d, REG_ISR), INT_USER);
    assert_eq!(rd(&mut d, REG_IIR), 0);
    wr(&mut d, REG_IMR, 0);
    // In IIR but not enabled in IER: no signal.
    d.raise(INT_USER);
    assert_eq!(rd(&mut d, REG_IIR), INT_USER);
    assert!(rec.take().is_empty());
    // Enabling it raises the condition: one signal.
    wr(&mut d, REG_IER, INT_ALL);
    assert_eq!(rec.take(), vec![MSIX]);
    // More events while the condition holds: no new signal.
    d.raise(INT_PIPE_NOTIFY);
    d.raise(INT_USER);
    assert!(rec.take().is_empty());
    // The guest clears one bit; others remain: signalled again.
    wr(&mut d, REG_IIR, INT_USER);
    assert_eq!(rd(&mut d, REG_IIR), INT_PIPE_NOTIFY);
    assert_eq!(rec.take(), vec![MSIX]);
    // Cleared entirely: nothing; the next event signals.
    wr(&mut d, REG_IIR, INT_ALL);
    assert!(rec.take().is_empty());
    d.raise(INT_FLIP_DONE);
    assert_eq!(rec.take(), vec![MSIX]);
    // Undefined bits are ignored.
    d.raise(1 << 20);
    assert_eq!(rd(&mut d, REG_IIR), INT_FLIP_DONE);
}

#[test]
fn masked_msix_vector_fires_when_unmasked() {
    let mut d = device();
    let rec = wire_msix(&mut d);
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_IER, INT_ALL);
    // Mask vector 0 in the table.
    let ctrl = MSIX_TABLE_OFFSET + msix::ENTRY_VECTOR_CONTROL as u64;
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, ctrl, &1u32.to_le_bytes())
        .unwrap();
    d.raise(INT_USER);
    assert!(rec.take().is_empty());
    assert!(d.config().msix_pending(0));
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, ctrl, &0u32.to_le_bytes())
        .unwrap();
    assert!(
        !d.config().msix_pending(0),
        "the pending bit cleared as it fired"
    );
    assert_eq!(
        rec.take(),
        vec![MSIX],
        "the device signals the unmasked vector itself"
    );
    // Function mask: same through the config region.
    cfg_wr16(
        &mut d,
        (MSIX_BASE + msix::CONTROL) as u64,
        msix::CTL_ENABLE | msix::CTL_FUNCTION_MASK,
    );
    wr(&mut d, REG_IIR, INT_ALL);
    d.raise(INT_USER);
    assert!(rec.take().is_empty());
    cfg_wr16(&mut d, (MSIX_BASE + msix::CONTROL) as u64, msix::CTL_ENABLE);
    assert_eq!(rec.take(), vec![MSIX]);
}

#[test]
fn msi_and_intx_modes() {
    let mut d = device();
    cfg_wr16(&mut d, pci_config_replay::regs::COMMAND as u64, 0x0006);
    let rec = std::sync::Arc::new(Recorder::default());
    for i in [VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX] {
        d.set_irqs(i, 0, 1, Some(rec.clone())).unwrap();
    }
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_IER, INT_ALL);
    // Neither MSI nor MSI-X: INTx.
    d.raise(INT_USER);
    assert_eq!(rec.take(), vec![(VFIO_PCI_INTX_IRQ_INDEX, 0)]);
    assert!(d.config().intx_asserted());
    wr(&mut d, REG_IIR, INT_ALL);
    assert!(!d.config().intx_asserted());
    // MSI.
    let base = MSI_BASE as u64;
    d.region_write(
        VFIO_PCI_CONFIG_REGION_INDEX,
        base + msi::ADDRESS_LO as u64,
        &0xfee0_0000u32.to_le_bytes(),
    )
    .unwrap();
    cfg_wr16(&mut d, base + msi::CONTROL as u64, msi::CTL_ENABLE);
    d.raise(INT_USER);
    assert_eq!(rec.take(), vec![(VFIO_PCI_MSI_IRQ_INDEX, 0)]);
}

#[test]
fn owed_interrupt_waits_for_sink_and_running() {
    let mut d = device();
    cfg_wr16(&mut d, pci_config_replay::regs::COMMAND as u64, 0x0006);
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_IER, INT_ALL);
    d.raise(INT_USER);
    assert!(d.state().irq_owed, "no sink yet: owed");
    d.set_mig_state(MigState::Stop).unwrap();
    let rec = std::sync::Arc::new(Recorder::default());
    d.set_irqs(VFIO_PCI_INTX_IRQ_INDEX, 0, 1, Some(rec.clone()))
        .unwrap();
    assert!(rec.take().is_empty(), "stopped: nothing signalled");
    d.set_mig_state(MigState::Running).unwrap();
    assert_eq!(rec.take(), vec![(VFIO_PCI_INTX_IRQ_INDEX, 0)]);
    assert!(!d.state().irq_owed);
}

/// include/uapi/linux/vfio.h (`VFIO_DEVICE_STATE_STOP`): a stopped device generates no
/// interrupts. A pending vector unmasked while the device is stopped (as a VMM's config
/// replay on a target does) is delivered once the device runs, not before.
#[test]
fn no_interrupt_while_stopped_and_the_fire_is_delivered_on_running() {
    let mut d = device();
    let rec = wire_msix(&mut d);
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_IER, INT_ALL);
    let ctrl = MSIX_TABLE_OFFSET + msix::ENTRY_VECTOR_CONTROL as u64;
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, ctrl, &1u32.to_le_bytes())
        .unwrap();
    d.raise(INT_USER);
    assert!(d.config().msix_pending(0));
    d.set_mig_state(MigState::Stop).unwrap();
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, ctrl, &0u32.to_le_bytes())
        .unwrap();
    assert!(rec.take().is_empty(), "nothing signalled in STOP");
    d.set_mig_state(MigState::Running).unwrap();
    assert_eq!(rec.take(), vec![MSIX], "delivered once the device runs");
    assert!(rec.take().is_empty(), "exactly once");
}
