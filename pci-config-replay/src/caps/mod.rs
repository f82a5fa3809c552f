//! Capabilities: where each one sits and how it is installed.
//!
//! Standard list (from the Capabilities Pointer at 0x34):
//! `0x40 PM -> 0x50 MSI -> 0x70 MSI-X -> 0x80 PCI Express -> end`.
//! Extended chain (from 0x100): `0x100 Vendor-Specific -> 0x110 LTR -> end`.

pub mod ext;
pub mod msi;
pub mod msix;
pub mod pcie;
pub mod pm;

use crate::block::RegisterBlock;
use crate::params::ConfigParams;

/// Offset of the Power Management capability.
pub const PM_BASE: usize = 0x40;
/// Offset of the MSI capability.
pub const MSI_BASE: usize = 0x50;
/// Offset of the MSI-X capability.
pub const MSIX_BASE: usize = 0x70;
/// Offset of the PCI Express capability.
pub const PCIE_BASE: usize = 0x80;
/// Offset of the Vendor-Specific Extended Capability (the first extended capability).
pub const VSEC_BASE: usize = 0x100;
/// Offset of the Latency Tolerance Reporting Extended Capability.
pub const LTR_BASE: usize = 0x110;

// The layout is fixed: check at compile time that no capability overlaps the next.
const _: () = {
    assert!(PM_BASE + pm::LEN <= MSI_BASE);
    assert!(MSI_BASE + msi::LEN <= MSIX_BASE);
    assert!(MSIX_BASE + msix::LEN <= PCIE_BASE);
    assert!(PCIE_BASE + pcie::LEN <= crate::regs::CONFIG_SPACE_STD_SIZE);
    assert!(VSEC_BASE + ext::VSEC_LEN <= LTR_BASE);
    assert!(LTR_BASE + ext::LTR_LEN <= crate::regs::CONFIG_SPACE_SIZE);
};

/// Installs every capability with its masks and links the lists.
pub(crate) fn install(block: &mut RegisterBlock, params: &ConfigParams) {
    pm::install(block, PM_BASE, MSI_BASE as u8);
    msi::install(block, MSI_BASE, MSIX_BASE as u8);
    msix::install(block, MSIX_BASE, PCIE_BASE as u8, params);
    pcie::install(block, PCIE_BASE, 0);
    ext::install_vsec(block, VSEC_BASE, LTR_BASE as u16);
    ext::install_ltr(block, LTR_BASE, 0);
}

/// A named register, used to say which field differs when a replay is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) name: &'static str,
}

const fn f(offset: usize, len: usize, name: &'static str) -> Field {
    Field { offset, len, name }
}

/// Every register of the device, by offset. Bytes not listed are reserved and read 0.
pub(crate) const FIELDS: &[Field] = &[
    f(0x00, 2, "vendor ID"),
    f(0x02, 2, "device ID"),
    f(0x04, 2, "command"),
    f(0x06, 2, "status"),
    f(0x08, 1, "revision ID"),
    f(0x09, 3, "class code"),
    f(0x0c, 1, "cache line size"),
    f(0x0d, 1, "latency timer"),
    f(0x0e, 1, "header type"),
    f(0x0f, 1, "BIST"),
    f(0x10, 4, "BAR0"),
    f(0x14, 4, "BAR1"),
    f(0x18, 4, "BAR2"),
    f(0x1c, 4, "BAR3"),
    f(0x20, 4, "BAR4"),
    f(0x24, 4, "BAR5"),
    f(0x28, 4, "CardBus CIS pointer"),
    f(0x2c, 2, "subsystem vendor ID"),
    f(0x2e, 2, "subsystem ID"),
    f(0x30, 4, "expansion ROM base address"),
    f(0x34, 1, "capabilities pointer"),
    f(0x3c, 1, "interrupt line"),
    f(0x3d, 1, "interrupt pin"),
    f(0x3e, 1, "Min_Gnt"),
    f(0x3f, 1, "Max_Lat"),
    f(PM_BASE, 2, "PM capability header"),
    f(PM_BASE + pm::PMC, 2, "PM capabilities (PMC)"),
    f(PM_BASE + pm::PMCSR, 2, "PM control/status (PMCSR)"),
    f(PM_BASE + pm::PMCSR_BSE, 1, "PM bridge extensions"),
    f(PM_BASE + pm::DATA, 1, "PM data"),
    f(MSI_BASE, 2, "MSI capability header"),
    f(MSI_BASE + msi::CONTROL, 2, "MSI message control"),
    f(MSI_BASE + msi::ADDRESS_LO, 4, "MSI message address"),
    f(MSI_BASE + msi::ADDRESS_HI, 4, "MSI message upper address"),
    f(MSI_BASE + msi::DATA, 2, "MSI message data"),
    f(MSI_BASE + msi::EXT_DATA, 2, "MSI extended message data"),
    f(MSI_BASE + msi::MASK_BITS, 4, "MSI mask bits"),
    f(MSI_BASE + msi::PENDING_BITS, 4, "MSI pending bits"),
    f(MSIX_BASE, 2, "MSI-X capability header"),
    f(
        MSIX_BASE + msix::CONTROL,
        2,
        "MSI-X message control (table size)",
    ),
    f(MSIX_BASE + msix::TABLE_OFFSET, 4, "MSI-X table offset/BIR"),
    f(MSIX_BASE + msix::PBA_OFFSET, 4, "MSI-X PBA offset/BIR"),
    f(PCIE_BASE, 2, "PCI Express capability header"),
    f(
        PCIE_BASE + pcie::CAPABILITIES,
        2,
        "PCI Express capabilities",
    ),
    f(
        PCIE_BASE + pcie::DEVICE_CAPABILITIES,
        4,
        "device capabilities",
    ),
    f(PCIE_BASE + pcie::DEVICE_CONTROL, 2, "device control"),
    f(PCIE_BASE + pcie::DEVICE_STATUS, 2, "device status"),
    f(PCIE_BASE + pcie::LINK_CAPABILITIES, 4, "link capabilities"),
    f(PCIE_BASE + pcie::LINK_CONTROL, 2, "link control"),
    f(PCIE_BASE + pcie::LINK_STATUS, 2, "link status"),
    f(
        PCIE_BASE + pcie::DEVICE_CAPABILITIES2,
        4,
        "device capabilities 2",
    ),
    f(PCIE_BASE + pcie::DEVICE_CONTROL2, 2, "device control 2"),
    f(
        PCIE_BASE + pcie::LINK_CAPABILITIES2,
        4,
        "link capabilities 2",
    ),
    f(PCIE_BASE + pcie::LINK_CONTROL2, 2, "link control 2"),
    f(VSEC_BASE, 4, "vendor-specific extended capability header"),
    f(VSEC_BASE + ext::VSEC_HEADER, 4, "vendor-specific header"),
    f(VSEC_BASE + ext::VSEC_TAG, 4, "vendor-specific tag"),
    f(VSEC_BASE + ext::VSEC_MODEL, 4, "vendor-specific model"),
    f(LTR_BASE, 4, "LTR extended capability header"),
    f(LTR_BASE + ext::LTR_MAX_SNOOP, 2, "LTR max snoop latency"),
    f(
        LTR_BASE + ext::LTR_MAX_NO_SNOOP,
        2,
        "LTR max no-snoop latency",
    ),
];

/// The register containing `offset`, or a one-byte "reserved" field.
pub(crate) fn field_at(offset: usize) -> Field {
    FIELDS
        .iter()
        .find(|fd| (fd.offset..fd.offset + fd.len).contains(&offset))
        .copied()
        .unwrap_or(Field {
            offset,
            len: 1,
            name: "reserved byte",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_sorted_and_disjoint() {
        for pair in FIELDS.windows(2) {
            if let [a, b] = pair {
                assert!(a.offset + a.len <= b.offset, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn field_lookup() {
        assert_eq!(field_at(0x03).name, "device ID");
        assert_eq!(field_at(0x0a).name, "class code");
        assert_eq!(field_at(0x72).name, "MSI-X message control (table size)");
        assert_eq!(field_at(0x200).name, "reserved byte");
        assert_eq!(field_at(0x200).offset, 0x200);
    }
}
