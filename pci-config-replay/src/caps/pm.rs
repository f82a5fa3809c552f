//! PCI Power Management capability (PCI Express Base 4.0 §7.5.2; PCI Bus Power Management
//! Interface Specification 1.2 §3.2).
//!
//! The function supports D0 and D3hot only, no PME, and sets No_Soft_Reset so a D3hot to
//! D0 transition keeps its configuration.

use crate::block::RegisterBlock;
use crate::regs::CAP_ID_PM;

/// PCI Express Base 4.0 §7.5.2.1 Power Management Capabilities register (PMC) offset.
pub const PMC: usize = 0x02;
/// PCI Express Base 4.0 §7.5.2.2 Power Management Control/Status register (PMCSR) offset.
pub const PMCSR: usize = 0x04;
/// PCI Bus PM 1.2 §3.2.5 PMCSR_BSE Bridge Support Extensions (not a bridge: 0).
pub const PMCSR_BSE: usize = 0x06;
/// PCI Bus PM 1.2 §3.2.6 Data register (not implemented: 0).
pub const DATA: usize = 0x07;
/// Length of the capability structure.
pub const LEN: usize = 0x08;

/// PCI Express Base 4.0 §7.5.2.1 PMC: Version field (bits 2:0), 011b = PM 1.2.
pub const PMC_VERSION_1_2: u16 = 0b011;
/// PCI Express Base 4.0 §7.5.2.1 PMC: D1_Support.
pub const PMC_D1_SUPPORT: u16 = 1 << 9;
/// PCI Express Base 4.0 §7.5.2.1 PMC: D2_Support.
pub const PMC_D2_SUPPORT: u16 = 1 << 10;
/// PCI Express Base 4.0 §7.5.2.1 PMC: PME_Support field (bits 15:11).
pub const PMC_PME_SUPPORT_MASK: u16 = 0x1f << 11;

/// PCI Express Base 4.0 §7.5.2.2 PMCSR: PowerState field (bits 1:0).
pub const PMCSR_POWER_STATE_MASK: u16 = 0b11;
/// PCI Express Base 4.0 §7.5.2.2 PMCSR: No_Soft_Reset (read-only 1: D3hot->D0 keeps state).
pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
/// PCI Express Base 4.0 §7.5.2.2 PMCSR: PME_En (read-only 0: no PME support).
pub const PMCSR_PME_ENABLE: u16 = 1 << 8;
/// PCI Express Base 4.0 §7.5.2.2 PMCSR: PME_Status (read-only 0: no PME support).
pub const PMCSR_PME_STATUS: u16 = 1 << 15;

/// A device power state (PCI Express Base 4.0 §7.5.2.2 PMCSR PowerState field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Light sleep (not supported by this device).
    D1,
    /// Deeper sleep (not supported by this device).
    D2,
    /// Soft off; configuration kept (No_Soft_Reset).
    D3Hot,
}

impl PowerState {
    /// Decodes the two-bit PowerState field.
    pub fn from_bits(bits: u16) -> Self {
        match bits & PMCSR_POWER_STATE_MASK {
            0 => Self::D0,
            1 => Self::D1,
            2 => Self::D2,
            _ => Self::D3Hot,
        }
    }

    /// The two-bit PowerState field value.
    pub fn bits(self) -> u16 {
        match self {
            Self::D0 => 0,
            Self::D1 => 1,
            Self::D2 => 2,
            Self::D3Hot => 3,
        }
    }

    /// Whether this device implements the state (D1 and D2 are not advertised in PMC).
    pub fn supported(self) -> bool {
        matches!(self, Self::D0 | Self::D3Hot)
    }
}

/// Installs the capability at `base` linking to `next`.
pub(crate) fn install(block: &mut RegisterBlock, base: usize, next: u8) {
    block.init(base, 1, u32::from(CAP_ID_PM), 0, 0);
    block.init(base + 1, 1, u32::from(next), 0, 0);
    block.init(base + PMC, 2, u32::from(PMC_VERSION_1_2), 0, 0);
    block.init(
        base + PMCSR,
        2,
        u32::from(PMCSR_NO_SOFT_RESET),
        u32::from(PMCSR_POWER_STATE_MASK),
        0,
    );
}

/// The current power state.
pub(crate) fn power_state(block: &RegisterBlock, base: usize) -> PowerState {
    PowerState::from_bits(block.u16(base + PMCSR))
}

/// Post-write fixup: "If software attempts to write an unsupported, optional state to this
/// field, the write operation must complete normally; however, the data is discarded and no
/// state change occurs" (PCI Express Base 4.0 §7.5.2.2). Restores `before` in that case.
pub(crate) fn discard_unsupported(block: &mut RegisterBlock, base: usize, before: PowerState) {
    let now = power_state(block, base);
    if !now.supported() {
        let pmcsr = block.u16(base + PMCSR);
        let restored = (pmcsr & !PMCSR_POWER_STATE_MASK) | before.bits();
        block.set_raw(base + PMCSR, 2, u32::from(restored));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_state_round_trip() {
        for bits in 0..4 {
            assert_eq!(PowerState::from_bits(bits).bits(), bits);
        }
        assert!(PowerState::D0.supported());
        assert!(PowerState::D3Hot.supported());
        assert!(!PowerState::D1.supported());
    }

    #[test]
    fn only_power_state_is_writable_and_unsupported_states_are_discarded() {
        let mut b = RegisterBlock::new();
        install(&mut b, 0x40, 0x50);
        assert_eq!(b.u16(0x40), 0x5001);
        assert_eq!(b.u16(0x44), PMCSR_NO_SOFT_RESET);
        b.guest_write(0x44, &[0xff, 0xff]);
        assert_eq!(b.u16(0x44), PMCSR_NO_SOFT_RESET | 3);
        assert_eq!(power_state(&b, 0x40), PowerState::D3Hot);
        b.guest_write(0x44, &[0x01, 0x00]);
        discard_unsupported(&mut b, 0x40, PowerState::D3Hot);
        assert_eq!(power_state(&b, 0x40), PowerState::D3Hot);
        b.guest_write(0x44, &[0x00, 0x00]);
        discard_unsupported(&mut b, 0x40, PowerState::D3Hot);
        assert_eq!(power_state(&b, 0x40), PowerState::D0);
    }
}
