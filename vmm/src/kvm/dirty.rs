//! KVM's dirty log: the guest pages the vCPU wrote.
//!
//! KVM logs the guest's own writes (and the accessed/dirty bits its page walker sets); it
//! does not see what the VMM writes through its mapping (that is vm-memory's bitmap,
//! [`memory::harvest_dirty`]) nor device DMA (the device's
//! log). A migration source merges all three.

use mdev_core::DirtyBitmap;
use snafu::ResultExt;

use super::error::{IoctlSnafu, Result};
use super::KvmMachine;
use crate::memory::{self, PAGE_SIZE};

impl KvmMachine {
    /// `KVM_GET_DIRTY_LOG` on every slot (reading clears it), as a bitmap over all guest
    /// RAM with the geometry of [`memory::harvest_dirty`]'s (from 0, 4 KiB pages), so that
    /// `DirtyBitmap::merge` combines them.
    pub fn harvest_dirty(&self) -> Result<DirtyBitmap> {
        // PAGE_SIZE is a power of two; new() cannot fail.
        let mut out = DirtyBitmap::new(0, memory::size(&self.mem), PAGE_SIZE)
            .unwrap_or_else(|_| unreachable!());
        self.harvest_dirty_into(&mut out)?;
        Ok(out)
    }

    /// `KVM_GET_DIRTY_LOG` on every slot, marking the pages written since the last harvest
    /// in `into` (pages outside it are ignored; it must use 4 KiB pages to be exact). Returns
    /// how many pages KVM reported. Callable while the vCPU runs.
    pub fn harvest_dirty_into(&self, into: &mut DirtyBitmap) -> Result<u64> {
        let mut n = 0;
        for s in &self.slots {
            let words = self
                .vm
                .get_dirty_log(s.slot, s.size as usize)
                .context(IoctlSnafu {
                    what: "KVM_GET_DIRTY_LOG",
                })?;
            for (w, word) in words.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    into.mark(s.gpa + (w as u64 * 64 + b) * PAGE_SIZE);
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
