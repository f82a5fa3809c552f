//! A shadow page table over a vGPU's graphics translation table (GTT).
//!
//! The guest programs GTT entries with guest-physical page addresses; the device must reach
//! those pages from the host. [`ShadowGtt`] keeps, for every entry, the value the guest
//! wrote (the only thing ever saved) and a *shadow* entry holding the host translation,
//! derived from `vm-memory` and rebuilt on restore (host addresses never travel):
//!
//! ```text
//!  guest writes entry i ──► validate (present? reserved bits? page inside guest RAM?)
//!                             │ ok                     │ outside RAM / reserved bits
//!                             ▼                        ▼
//!                  shadow[i] = host address     shadow[i] = scratch page
//!                                               (reads 0, writes dropped; the device
//!                                                raises its GTT error interrupt)
//! ```
//!
//! Device DMA goes through the shadow ([`ShadowGtt::dma_read`], [`ShadowGtt::dma_write`]),
//! straight to the host mapping of guest RAM: it bypasses `vm-memory`'s dirty bitmap exactly
//! as real device DMA bypasses the CPU's dirty log. Which guest pages the device wrote is
//! told by the crate's own DMA dirty log ([`mdev_core::DmaDirtyLog`]), in one of three ways
//! ([`DirtyTracking`]): precise per-write tracking through the shadow, the conservative
//! "every pinned page" query GVT-g used, or nothing (a negative control).
//!
//! Guest RAM the device cannot map (a device in another process that was given bare ranges
//! instead of file descriptors) is reached through a port ([`remote`]): the same checks,
//! the same dirty log, one port call per run of consecutive pages.

#![deny(missing_docs)]

mod dirty;
pub mod entry;
mod error;
mod gtt;
pub mod remote;

pub use dirty::{tracking_page_size, DirtyTracking};
pub use entry::{
    EntryStatus, ScratchReason, PAGE_SIZE, PTE_ADDR_MASK, PTE_PRESENT, PTE_RESERVED_MASK,
    PTE_WRITABLE,
};
pub use error::{DmaError, Result, ShadowError};
pub use gtt::{RebuildSummary, ShadowGtt, ShadowGttState, Translation, MAX_ENTRIES};
pub use remote::{RemoteDma, RemoteDmaError, RemoteMemory};
