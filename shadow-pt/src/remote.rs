//! Guest memory the device cannot map, reached through a port ([`RemoteDma`]).
//!
//! A device served in another process gets guest RAM either as file descriptors it maps
//! (the fast path: [`crate::Translation::Ram`]) or, where the VMM does not share them, as
//! bare ranges it reaches by messages (vfio-user's `DMA_READ`/`DMA_WRITE`). The second kind
//! is a [`RemoteMemory`]: the ranges and the port. Pages a GTT entry maps inside those
//! ranges become [`crate::Translation::Remote`]; device DMA through them goes to the port,
//! with the same checks (not present, read-only, out of range) and the same dirty log as
//! DMA to mapped RAM. A port that fails (the peer answered with an error, garbage, or not
//! at all) is a DMA fault for the device.
//!
//! How a device gets its remote memory: explicitly ([`crate::ShadowGtt::with_remote`]),
//! or, for devices built by a factory chain that passes only mapped guest memory (the
//! vfio-user server's `DeviceFactory` and the platform's `VmFactory::parts`), from the
//! one [`install`]ed on the building thread for the duration of the build
//! ([`installed`]). Nothing else is ambient.

use std::cell::RefCell;
use std::fmt::Debug;
use std::sync::Arc;

use snafu::Snafu;

use crate::entry::PAGE_SIZE;

/// A remote access that failed (the port's reason, for the device's log).
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(display("remote DMA of {len} bytes at {gpa:#x} failed: {why}"))]
pub struct RemoteDmaError {
    /// Guest-physical address of the access.
    pub gpa: u64,
    /// Its length.
    pub len: usize,
    /// Why it failed.
    pub why: String,
}

/// Reads and writes guest memory the device cannot map.
pub trait RemoteDma: Send + Sync + Debug {
    /// Read `buf.len()` bytes of guest memory at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RemoteDmaError>;
    /// Write `buf` to guest memory at `gpa`.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), RemoteDmaError>;
}

/// Guest memory reached through a port: page-aligned ranges (gpa, size) and the port.
#[derive(Debug, Clone)]
pub struct RemoteMemory {
    ranges: Vec<(u64, u64)>,
    port: Arc<dyn RemoteDma>,
}

impl RemoteMemory {
    /// Ranges `(gpa, size)` served by `port`.
    pub fn new(ranges: Vec<(u64, u64)>, port: Arc<dyn RemoteDma>) -> Self {
        Self { ranges, port }
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The port.
    pub fn port(&self) -> &Arc<dyn RemoteDma> {
        &self.port
    }

    /// Whether the whole page at `gpa` lies inside one range.
    pub fn contains_page(&self, gpa: u64) -> bool {
        self.range_of(gpa).is_some()
    }

    /// The range `(start, size)` that holds the whole page at `gpa`. One port call never
    /// crosses a range's end (the peer checks each access against one of its maps).
    pub fn range_of(&self, gpa: u64) -> Option<(u64, u64)> {
        let last = gpa.checked_add(PAGE_SIZE - 1)?;
        self.ranges
            .iter()
            .copied()
            .find(|&(start, size)| gpa >= start && size > 0 && last <= start + (size - 1))
    }
}

thread_local! {
    static INSTALLED: RefCell<Option<RemoteMemory>> = const { RefCell::new(None) };
}

/// Run `build` with `remote` installed on this thread (see the module docs): devices built
/// inside take it from [`installed`]. The previous installation (normally none) is put back
/// afterwards, also if `build` panics.
pub fn install<T>(remote: Option<RemoteMemory>, build: impl FnOnce() -> T) -> T {
    struct Restore(Option<RemoteMemory>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            INSTALLED.with(|i| *i.borrow_mut() = prev);
        }
    }
    let prev = INSTALLED.with(|i| std::mem::replace(&mut *i.borrow_mut(), remote));
    let _restore = Restore(prev);
    build()
}

/// The remote memory [`install`]ed on this thread, if any.
pub fn installed() -> Option<RemoteMemory> {
    INSTALLED.with(|i| i.borrow().clone())
}
