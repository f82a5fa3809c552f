//! Construction parameters of a configuration space: what differs between vGPU types.

use snafu::ensure;

use crate::error::params_error::{
    BarSizeSnafu, MsixOffsetSnafu, MsixOutsideBar0Snafu, MsixOverlapSnafu, MsixTableSizeSnafu,
};
use crate::error::ParamsError;

/// Smallest BAR this crate builds: one host page, so every BAR can be mapped directly.
pub const MIN_BAR_SIZE: u64 = 4096;
/// PCI Express Base 4.0 §7.7.2.2 Message Control for MSI-X: Table Size is 11 bits (N-1).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// PCI Express Base 4.0 §7.7.2 MSI-X Capability and Table Structure: 16 bytes per entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// What identifies a simulated GPU function and sizes its resources.
///
/// Everything here is read-only to the guest; two devices built from equal params accept
/// each other's saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigParams {
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// BAR0 size (MMIO registers and GTT window): a power of two, at least 4 KiB.
    pub bar0_size: u64,
    /// BAR2 size (graphics aperture): a power of two, at least 4 KiB.
    pub bar2_size: u64,
    /// Number of MSI-X vectors, 1..=2048.
    pub msix_table_size: u16,
    /// Offset of the MSI-X table inside BAR0, 8-byte aligned.
    pub msix_table_offset: u64,
    /// Offset of the MSI-X pending bit array inside BAR0, 8-byte aligned.
    pub msix_pba_offset: u64,
}

impl Default for ConfigParams {
    /// An Intel Gen9-like vGPU: 8086:1912, 16 MiB BAR0 (2 MiB MMIO, GTT in the top 8 MiB),
    /// 256 MiB aperture, 8 MSI-X vectors with the table at 4 MiB in the unused hole of BAR0.
    fn default() -> Self {
        Self {
            vendor_id: 0x8086,
            device_id: 0x1912,
            subsystem_vendor_id: 0x8086,
            subsystem_id: 0x2212,
            revision: 0x06,
            bar0_size: 16 << 20,
            bar2_size: 256 << 20,
            msix_table_size: 8,
            msix_table_offset: 0x40_0000,
            msix_pba_offset: 0x40_1000,
        }
    }
}

impl ConfigParams {
    /// Bytes of the MSI-X table.
    pub fn msix_table_len(&self) -> u64 {
        u64::from(self.msix_table_size) * MSIX_ENTRY_SIZE
    }

    /// Bytes of the pending bit array: one bit per vector, in whole QWORDs
    /// (PCI Express Base 4.0 §7.7.2.10 Pending Bits for MSI-X PBA Entries).
    pub fn msix_pba_len(&self) -> u64 {
        u64::from(self.msix_table_size).div_ceil(64) * 8
    }

    /// Checks that the params describe a device this crate can build.
    pub fn validate(&self) -> Result<(), ParamsError> {
        for (bar, size) in [(0u8, self.bar0_size), (2, self.bar2_size)] {
            ensure!(
                size.is_power_of_two() && size >= MIN_BAR_SIZE,
                BarSizeSnafu { bar, size }
            );
        }
        ensure!(
            (1..=MSIX_MAX_VECTORS).contains(&self.msix_table_size),
            MsixTableSizeSnafu {
                size: self.msix_table_size
            }
        );
        let structures = [
            ("table", self.msix_table_offset, self.msix_table_len()),
            ("PBA", self.msix_pba_offset, self.msix_pba_len()),
        ];
        for (what, offset, len) in structures {
            ensure!(
                offset % 8 == 0 && offset <= 0xffff_fff8,
                MsixOffsetSnafu { what, offset }
            );
            // Both terms are below 2^32 + 2^15, so the sum cannot overflow.
            let end = offset + len;
            ensure!(
                end <= self.bar0_size,
                MsixOutsideBar0Snafu {
                    what,
                    end,
                    bar0_size: self.bar0_size
                }
            );
        }
        let table = self.msix_table_offset..self.msix_table_offset + self.msix_table_len();
        let pba = self.msix_pba_offset..self.msix_pba_offset + self.msix_pba_len();
        ensure!(
            table.end <= pba.start || pba.end <= table.start,
            MsixOverlapSnafu {
                table: table.start,
                pba: pba.start
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_intel_vga() {
        let p = ConfigParams::default();
        assert_eq!(p.vendor_id, 0x8086);
        assert_eq!(p.bar0_size, 16 << 20);
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.msix_table_len(), 128);
        assert_eq!(p.msix_pba_len(), 8);
    }

    #[test]
    fn pba_len_rounds_up_to_qwords() {
        let p = ConfigParams {
            msix_table_size: 65,
            ..Default::default()
        };
        assert_eq!(p.msix_pba_len(), 16);
        let p = ConfigParams {
            msix_table_size: 2048,
            ..Default::default()
        };
        assert_eq!(p.msix_pba_len(), 256);
    }

    #[test]
    fn rejects_bad_params() {
        let d = ConfigParams::default();
        let cases = [
            (
                ConfigParams {
                    bar2_size: 3 << 20,
                    ..d
                },
                ParamsError::BarSize {
                    bar: 2,
                    size: 3 << 20,
                },
            ),
            (
                ConfigParams {
                    bar0_size: 2048,
                    ..d
                },
                ParamsError::BarSize { bar: 0, size: 2048 },
            ),
            (
                ConfigParams {
                    msix_table_size: 0,
                    ..d
                },
                ParamsError::MsixTableSize { size: 0 },
            ),
            (
                ConfigParams {
                    msix_table_size: 2049,
                    ..d
                },
                ParamsError::MsixTableSize { size: 2049 },
            ),
            (
                ConfigParams {
                    msix_table_offset: 0x40_0004,
                    ..d
                },
                ParamsError::MsixOffset {
                    what: "table",
                    offset: 0x40_0004,
                },
            ),
            (
                ConfigParams {
                    msix_pba_offset: 1 << 32,
                    bar0_size: 1 << 33,
                    ..d
                },
                ParamsError::MsixOffset {
                    what: "PBA",
                    offset: 1 << 32,
                },
            ),
            (
                ConfigParams {
                    msix_pba_offset: (16 << 20) - 4,
                    ..d
                },
                ParamsError::MsixOffset {
                    what: "PBA",
                    offset: (16 << 20) - 4,
                },
            ),
            (
                ConfigParams {
                    msix_pba_offset: (16 << 20) - 8,
                    msix_table_size: 65,
                    ..d
                },
                ParamsError::MsixOutsideBar0 {
                    what: "PBA",
                    end: (16 << 20) + 8,
                    bar0_size: 16 << 20,
                },
            ),
            (
                ConfigParams {
                    msix_pba_offset: 0x40_0078,
                    ..d
                },
                ParamsError::MsixOverlap {
                    table: 0x40_0000,
                    pba: 0x40_0078,
                },
            ),
        ];
        for (params, err) in cases {
            assert_eq!(params.validate(), Err(err), "{params:?}");
        }
    }
}
