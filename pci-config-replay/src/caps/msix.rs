//! MSI-X capability, table and pending bit array
//! (PCI Express Base 4.0 §7.7.2; PCI Local Bus 3.0 §6.8.2).
//!
//! The capability lives in configuration space; the table and PBA live in BAR0 at the
//! offsets given by [`crate::ConfigParams`]. Table and PBA accesses must be aligned DWORD
//! or QWORD accesses (§7.7.2): other sizes read all ones and writes are dropped.

use crate::block::RegisterBlock;
use crate::params::{ConfigParams, MSIX_ENTRY_SIZE};
use crate::regs::CAP_ID_MSIX;

/// PCI Express Base 4.0 §7.7.2.2 Message Control Register for MSI-X offset.
pub const CONTROL: usize = 0x02;
/// PCI Express Base 4.0 §7.7.2.3 Table Offset/Table BIR Register for MSI-X offset.
pub const TABLE_OFFSET: usize = 0x04;
/// PCI Express Base 4.0 §7.7.2.4 PBA Offset/PBA BIR Register for MSI-X offset.
pub const PBA_OFFSET: usize = 0x08;
/// Length of the capability structure.
pub const LEN: usize = 0x0c;

/// PCI Express Base 4.0 §7.7.2.2 Message Control: Table Size field (bits 10:0), N-1.
pub const CTL_TABLE_SIZE_MASK: u16 = 0x07ff;
/// PCI Express Base 4.0 §7.7.2.2 Message Control: Function Mask.
pub const CTL_FUNCTION_MASK: u16 = 1 << 14;
/// PCI Express Base 4.0 §7.7.2.2 Message Control: MSI-X Enable.
pub const CTL_ENABLE: u16 = 1 << 15;
/// PCI Express Base 4.0 §7.7.2.3 Table Offset/Table BIR: BIR field (bits 2:0).
pub const BIR_MASK: u32 = 0b111;

/// PCI Express Base 4.0 §7.7.2.5 Message Address for MSI-X Table Entries: entry dword 0;
/// bits 1:0 are reserved (DWORD aligned).
pub const ENTRY_ADDRESS_LO: usize = 0x0;
/// PCI Express Base 4.0 §7.7.2.6 Message Upper Address for MSI-X Table Entries: dword 1.
pub const ENTRY_ADDRESS_HI: usize = 0x4;
/// PCI Express Base 4.0 §7.7.2.7 Message Data for MSI-X Table Entries: dword 2.
pub const ENTRY_DATA: usize = 0x8;
/// PCI Express Base 4.0 §7.7.2.8 Vector Control for MSI-X Table Entries: dword 3.
pub const ENTRY_VECTOR_CONTROL: usize = 0xc;
/// PCI Express Base 4.0 §7.7.2.8 Vector Control: Mask Bit (reset value 1).
pub const VECTOR_CONTROL_MASK: u32 = 1 << 0;
/// Writable mask of the four dwords of a table entry.
pub const ENTRY_WRITABLE: [u32; 4] = [0xffff_fffc, u32::MAX, u32::MAX, VECTOR_CONTROL_MASK];

/// One MSI-X table entry as the VMM needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Vector Control Mask Bit.
    pub masked: bool,
}

/// The MSI-X capability control bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixControl {
    /// MSI-X Enable.
    pub enabled: bool,
    /// Function Mask.
    pub function_mask: bool,
}

/// Installs the capability at `base` linking to `next`.
pub(crate) fn install(block: &mut RegisterBlock, base: usize, next: u8, params: &ConfigParams) {
    block.init(base, 1, u32::from(CAP_ID_MSIX), 0, 0);
    block.init(base + 1, 1, u32::from(next), 0, 0);
    let table_size = params.msix_table_size.saturating_sub(1) & CTL_TABLE_SIZE_MASK;
    block.init(
        base + CONTROL,
        2,
        u32::from(table_size),
        u32::from(CTL_FUNCTION_MASK | CTL_ENABLE),
        0,
    );
    // validate() keeps both offsets 8-aligned below 4 GiB; BIR 0 is BAR0.
    block.init(
        base + TABLE_OFFSET,
        4,
        params.msix_table_offset as u32 & !BIR_MASK,
        0,
        0,
    );
    block.init(
        base + PBA_OFFSET,
        4,
        params.msix_pba_offset as u32 & !BIR_MASK,
        0,
        0,
    );
}

/// Reads the control bits.
pub(crate) fn control(block: &RegisterBlock, base: usize) -> MsixControl {
    let ctl = block.u16(base + CONTROL);
    MsixControl {
        enabled: ctl & CTL_ENABLE != 0,
        function_mask: ctl & CTL_FUNCTION_MASK != 0,
    }
}

/// The MSI-X table and PBA contents (the state behind BAR0's MSI-X window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MsixTable {
    entries: Vec<u8>,
    pba: Vec<u64>,
    vectors: u16,
}

fn aligned_qword_or_dword(offset: u64, len: usize) -> bool {
    (len == 4 || len == 8) && offset % len as u64 == 0
}

impl MsixTable {
    /// A reset table: every entry zero and masked, nothing pending.
    pub(crate) fn new(params: &ConfigParams) -> Self {
        let vectors = params.msix_table_size;
        let mut entries = vec![0u8; usize::from(vectors) * MSIX_ENTRY_SIZE as usize];
        for entry in entries.chunks_exact_mut(MSIX_ENTRY_SIZE as usize) {
            if let Some(b) = entry.get_mut(ENTRY_VECTOR_CONTROL) {
                *b = VECTOR_CONTROL_MASK as u8;
            }
        }
        let pba = vec![0u64; usize::from(vectors).div_ceil(64)];
        Self {
            entries,
            pba,
            vectors,
        }
    }

    /// Number of vectors.
    pub(crate) fn vectors(&self) -> u16 {
        self.vectors
    }

    /// The raw table bytes.
    pub(crate) fn entry_bytes(&self) -> &[u8] {
        &self.entries
    }

    /// The PBA words.
    pub(crate) fn pba_words(&self) -> &[u64] {
        &self.pba
    }

    /// Reads `data.len()` bytes at `offset` from the table start; unsupported accesses
    /// read all ones.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) {
        read_aligned(&self.entries, offset, data);
    }

    /// Guest write at `offset` from the table start through the entry masks. Returns the
    /// vector whose entry changed, if any. Unsupported accesses are dropped.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Option<u16> {
        if !aligned_qword_or_dword(offset, data.len()) {
            return None;
        }
        let vector = u16::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let before = self.entry(vector)?;
        let start = usize::try_from(offset).ok()?;
        for (i, &value) in data.iter().enumerate() {
            let pos = start + i;
            let mask = ENTRY_WRITABLE
                .get((pos % MSIX_ENTRY_SIZE as usize) / 4)
                .map(|m| (m >> (8 * (pos % 4))) as u8)
                .unwrap_or(0);
            if let Some(b) = self.entries.get_mut(pos) {
                *b = (*b & !mask) | (value & mask);
            }
        }
        (self.entry(vector)? != before).then_some(vector)
    }

    /// Reads `data.len()` bytes at `offset` from the PBA start; unsupported accesses read
    /// all ones.
    pub(crate) fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let bytes: Vec<u8> = self.pba.iter().flat_map(|w| w.to_le_bytes()).collect();
        read_aligned(&bytes, offset, data);
    }

    fn dword(&self, vector: u16, reg: usize) -> Option<u32> {
        let start = usize::from(vector) * MSIX_ENTRY_SIZE as usize + reg;
        let bytes = self.entries.get(start..start + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Entry `vector`, or `None` beyond the table.
    pub(crate) fn entry(&self, vector: u16) -> Option<MsixEntry> {
        let lo = u64::from(self.dword(vector, ENTRY_ADDRESS_LO)?);
        let hi = u64::from(self.dword(vector, ENTRY_ADDRESS_HI)?);
        Some(MsixEntry {
            address: (hi << 32) | lo,
            data: self.dword(vector, ENTRY_DATA)?,
            masked: self.dword(vector, ENTRY_VECTOR_CONTROL)? & VECTOR_CONTROL_MASK != 0,
        })
    }

    /// Whether the PBA bit of `vector` is set.
    pub(crate) fn pending(&self, vector: u16) -> bool {
        self.pba
            .get(usize::from(vector) / 64)
            .is_some_and(|w| w & (1 << (vector % 64)) != 0)
    }

    /// Device-side update of the PBA bit of `vector` (ignored beyond the table).
    pub(crate) fn set_pending(&mut self, vector: u16, pending: bool) {
        if vector >= self.vectors {
            return;
        }
        if let Some(w) = self.pba.get_mut(usize::from(vector) / 64) {
            let bit = 1u64 << (vector % 64);
            if pending {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }

    /// Device-side restore of the whole PBA; bits beyond the table are dropped.
    pub(crate) fn restore_pba(&mut self, words: &[u64]) {
        for v in 0..self.vectors {
            let bit = words
                .get(usize::from(v) / 64)
                .is_some_and(|w| w & (1 << (v % 64)) != 0);
            self.set_pending(v, bit);
        }
    }
}

fn read_aligned(bytes: &[u8], offset: u64, data: &mut [u8]) {
    let src = aligned_qword_or_dword(offset, data.len())
        .then(|| usize::try_from(offset).ok())
        .flatten()
        .and_then(|start| bytes.get(start..start.checked_add(data.len())?));
    match src {
        Some(src) => data.copy_from_slice(src),
        None => data.fill(0xff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(vectors: u16) -> ConfigParams {
        ConfigParams {
            msix_table_size: vectors,
            ..Default::default()
        }
    }

    #[test]
    fn capability_layout() {
        let p = params(8);
        let mut b = RegisterBlock::new();
        install(&mut b, 0x70, 0x80, &p);
        assert_eq!(b.u32(0x70), 0x0007_8011);
        assert_eq!(b.u32(0x74), 0x0040_0000);
        assert_eq!(b.u32(0x78), 0x0040_1000);
        b.guest_write(0x72, &[0xff, 0xff]);
        assert_eq!(b.u16(0x72), 0xc007, "table size read-only");
        assert_eq!(
            control(&b, 0x70),
            MsixControl {
                enabled: true,
                function_mask: true
            }
        );
    }

    #[test]
    fn reset_entries_are_masked() {
        let t = MsixTable::new(&params(3));
        for v in 0..3 {
            assert!(t.entry(v).is_some_and(|e| e.masked));
        }
        assert_eq!(t.entry(3), None);
        assert_eq!(t.pba_words(), &[0]);
    }

    #[test]
    fn entry_writes_use_masks_and_report_changes() {
        let mut t = MsixTable::new(&params(4));
        assert_eq!(t.write(0x10, &0xfee0_0003u32.to_le_bytes()), Some(1));
        assert_eq!(t.write(0x18, &0x4041u32.to_le_bytes()), Some(1));
        assert_eq!(t.write(0x1c, &0xffff_fffeu32.to_le_bytes()), Some(1));
        assert_eq!(
            t.entry(1),
            Some(MsixEntry {
                address: 0xfee0_0000,
                data: 0x4041,
                masked: false
            })
        );
        // Reserved vector-control bits stay 0; rewriting the same value is no change.
        let mut d = [0u8; 4];
        t.read(0x1c, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
        assert_eq!(t.write(0x1c, &0u32.to_le_bytes()), None);
        // QWORD write of address lo+hi.
        assert_eq!(t.write(0x20, &0x1_fee0_1000u64.to_le_bytes()), Some(2));
        assert_eq!(t.entry(2).map(|e| e.address), Some(0x1_fee0_1000));
    }

    #[test]
    fn unsupported_accesses_are_dropped_or_read_ones() {
        let mut t = MsixTable::new(&params(2));
        let before = t.clone();
        assert_eq!(t.write(0x1, &[0; 4]), None);
        assert_eq!(t.write(0x0, &[0; 2]), None);
        assert_eq!(t.write(0x4, &[0; 8]), None);
        assert_eq!(t.write(0x20, &[0; 4]), None, "beyond the table");
        assert_eq!(t.write(u64::MAX - 3, &[0; 4]), None);
        assert_eq!(t, before);
        let mut d = [0u8; 2];
        t.read(0, &mut d);
        assert_eq!(d, [0xff; 2]);
        let mut d = [0u8; 4];
        t.read(0x20, &mut d);
        assert_eq!(d, [0xff; 4]);
        t.pba_read(8, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn pba_bits() {
        let mut t = MsixTable::new(&params(70));
        assert_eq!(t.pba_words().len(), 2);
        t.set_pending(0, true);
        t.set_pending(65, true);
        t.set_pending(70, true);
        assert!(t.pending(0) && t.pending(65) && !t.pending(70));
        let mut d = [0u8; 8];
        t.pba_read(8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 2);
        let mut d = [0u8; 4];
        t.pba_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        t.set_pending(0, false);
        assert!(!t.pending(0));
        t.restore_pba(&[u64::MAX, u64::MAX]);
        assert_eq!(t.pba_words(), &[u64::MAX, 0x3f]);
    }
}
