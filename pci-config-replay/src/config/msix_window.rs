//! The MSI-X table and PBA as the device's BAR0 handler sees them.
//!
//! Offsets are relative to the start of the table (or PBA): the device subtracts
//! [`ConfigSpace::msix_table_range`]`.start` from its BAR0 offset. Only aligned DWORD and
//! QWORD accesses are supported (PCI Express Base 4.0 §7.7.2); other reads return all ones
//! and other writes are ignored. The PBA is read-only; the device should drop PBA writes.

use super::{ConfigChange, ConfigSpace};

impl ConfigSpace {
    /// Guest read of the MSI-X table at `offset` from its start.
    pub fn msix_table_read(&self, offset: u64, data: &mut [u8]) {
        self.msix_table().read(offset, data);
    }

    /// Guest write of the MSI-X table at `offset` from its start. Returns the changed entry
    /// and, if the write unmasked a pending vector, the vector that must fire now.
    pub fn msix_table_write(&mut self, offset: u64, data: &[u8]) -> Vec<ConfigChange> {
        let mut out = Vec::new();
        if let Some(vector) = self.msix_table_mut().write(offset, data) {
            if let Some(e) = self.msix_entry(vector) {
                out.push(ConfigChange::MsixEntryChanged {
                    vector,
                    address: e.address,
                    data: e.data,
                    masked: e.masked,
                });
            }
            out.extend(self.fire_ready());
        }
        out
    }

    /// Guest read of the pending bit array at `offset` from its start.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        self.msix_table().pba_read(offset, data);
    }
}
