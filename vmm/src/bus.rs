//! The guest-physical bus: routes each vCPU access to guest RAM, a BAR, or the ECAM window.

use std::sync::{Mutex, MutexGuard};

use mdev_core::VfioDevice;
use pci_config_replay::BarMapping;
use slog::{warn, Logger};
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

use crate::memory::{self, GuestMem};
use crate::pci::PciFace;
use crate::platform::GuestBus;
use crate::ratelimit::RateLimit;

/// Lock the PCI face; a poisoned lock (a panic while it was held) still yields it.
pub fn lock_face(face: &Mutex<PciFace>) -> MutexGuard<'_, PciFace> {
    face.lock().unwrap_or_else(|p| p.into_inner())
}

/// Size of the ECAM window of our single function.
pub const ECAM_SIZE: u64 = 4096;

/// What the bus decided a guest-physical address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Guest RAM.
    Ram,
    /// A BAR: region index and offset into the region.
    Region(u32, u64),
    /// Nothing is there.
    Unbacked,
}

/// Find what backs `gpa..gpa+len` given the ECAM window and the current BAR map.
pub fn decode(mem: &GuestMem, ecam_gpa: u64, bars: &[BarMapping], gpa: u64, len: usize) -> Target {
    let end = gpa.saturating_add(len as u64);
    if end <= memory::size(mem) {
        return Target::Ram;
    }
    if gpa >= ecam_gpa && end <= ecam_gpa + ECAM_SIZE {
        return Target::Region(VFIO_PCI_CONFIG_REGION_INDEX, gpa - ecam_gpa);
    }
    for b in bars {
        if gpa >= b.guest_addr && end <= b.guest_addr.saturating_add(b.size) {
            return Target::Region(b.region.id, b.region.offset + (gpa - b.guest_addr));
        }
    }
    Target::Unbacked
}

/// A vCPU's view of the machine for one access.
pub struct VmBus<'a> {
    /// Guest RAM.
    pub mem: &'a GuestMem,
    /// The device.
    pub dev: &'a mut dyn VfioDevice,
    /// The VMM's view of its PCI face (BAR map and routes), refreshed after writes that
    /// may change it; shared with the VMM's other threads.
    pub face: &'a Mutex<PciFace>,
    /// The ECAM window.
    pub ecam_gpa: u64,
    /// Logger.
    pub log: &'a Logger,
    /// Rate limit for warnings about bad guest accesses.
    pub warn_limit: &'a mut RateLimit,
}

impl VmBus<'_> {
    /// After a write to the config space or the MSI-X table: the device's side effects are
    /// its own; the VMM re-reads its BAR map and routes through the regions.
    fn refresh(&mut self) {
        if let Err(e) = lock_face(self.face).refresh(self.dev) {
            if self.warn_limit.allow() {
                warn!(self.log, "cannot re-read the device's PCI face"; "error" => %e);
            }
        }
    }

    /// The device's own offset in region `index` for offset `off` in this host's region
    /// (see [`decode`]): the region's `HostRegion::offset` taken off. Regions that back no
    /// BAR (the config space) are addressed directly. `None` below the region's start.
    fn device_offset(&self, index: u32, off: u64) -> Option<u64> {
        match lock_face(self.face)
            .host()
            .bar_regions
            .iter()
            .flatten()
            .find(|r| r.id == index)
        {
            Some(r) => off.checked_sub(r.offset),
            None => Some(off),
        }
    }

    /// A BAR map entry pointed below its host region's offset (a map resolved against
    /// another host's resources): the access is dropped.
    fn below_window(&mut self, gpa: u64, index: u32) {
        if self.warn_limit.allow() {
            warn!(self.log, "guest access below its BAR's host region offset dropped";
                  "gpa" => format!("{gpa:#x}"), "region" => index);
        }
    }
}

impl std::fmt::Debug for VmBus<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBus")
            .field("bars", &lock_face(self.face).bars())
            .finish()
    }
}

impl GuestBus for VmBus<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        let target = decode(
            self.mem,
            self.ecam_gpa,
            lock_face(self.face).bars(),
            gpa,
            buf.len(),
        );
        match target {
            Target::Ram => {
                if memory::read(self.mem, gpa, buf).is_err() {
                    buf.fill(0xff);
                }
            }
            Target::Region(index, off) => {
                let Some(off) = self.device_offset(index, off) else {
                    self.below_window(gpa, index);
                    buf.fill(0xff);
                    return;
                };
                if let Err(e) = self.dev.region_read(index, off, buf) {
                    if self.warn_limit.allow() {
                        warn!(self.log, "guest read failed"; "gpa" => format!("{gpa:#x}"), "error" => %e);
                    }
                    buf.fill(0xff);
                }
            }
            Target::Unbacked => {
                if self.warn_limit.allow() {
                    warn!(self.log, "guest read of unbacked address"; "gpa" => format!("{gpa:#x}"), "len" => buf.len());
                }
                buf.fill(0xff);
            }
        }
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) {
        let target = decode(
            self.mem,
            self.ecam_gpa,
            lock_face(self.face).bars(),
            gpa,
            buf.len(),
        );
        match target {
            Target::Ram => {
                let _ = memory::write(self.mem, gpa, buf);
            }
            Target::Region(index, off) => {
                let Some(off) = self.device_offset(index, off) else {
                    self.below_window(gpa, index);
                    return;
                };
                match self.dev.region_write(index, off, buf) {
                    Ok(()) => {
                        if index == VFIO_PCI_CONFIG_REGION_INDEX
                            || lock_face(self.face).is_msix(index, off)
                        {
                            self.refresh();
                        }
                    }
                    Err(e) => {
                        if self.warn_limit.allow() {
                            warn!(self.log, "guest write failed"; "gpa" => format!("{gpa:#x}"), "error" => %e);
                        }
                    }
                }
            }
            Target::Unbacked => {
                if self.warn_limit.allow() {
                    warn!(self.log, "guest write to unbacked address dropped"; "gpa" => format!("{gpa:#x}"), "len" => buf.len());
                }
            }
        }
    }
}
