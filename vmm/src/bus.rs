//! The guest-physical bus: routes each vCPU access to guest RAM, a BAR, or the ECAM window.

use mdev_core::VfioDevice;
use pci_config_replay::{BarMapping, HostResources, InterruptRoute};
use slog::{warn, Logger};
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vgpu_sim::workload::layout::ECAM_GPA;
use vgpu_sim::workload::GuestBus;

use crate::memory::{self, GuestMem};
use crate::ratelimit::RateLimit;

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

/// Find what backs `gpa..gpa+len` given the current BAR map.
pub fn decode(mem: &GuestMem, bars: &[BarMapping], gpa: u64, len: usize) -> Target {
    let end = gpa.saturating_add(len as u64);
    if end <= memory::size(mem) {
        return Target::Ram;
    }
    if gpa >= ECAM_GPA && end <= ECAM_GPA + ECAM_SIZE {
        return Target::Region(VFIO_PCI_CONFIG_REGION_INDEX, gpa - ECAM_GPA);
    }
    for b in bars {
        if gpa >= b.guest_addr && end <= b.guest_addr.saturating_add(b.size) {
            return Target::Region(b.region.id, b.region.offset + (gpa - b.guest_addr));
        }
    }
    Target::Unbacked
}

/// How the VMM learns the BAR map and routes from a device's config space.
pub trait ConfigView {
    /// The BARs that decode now, on `host`'s regions.
    fn bar_map(&self, host: &HostResources) -> Option<Vec<BarMapping>>;
    /// The enabled message vectors, on `host`'s sinks.
    fn routes(&self, host: &HostResources) -> Option<Vec<InterruptRoute>>;
}

impl ConfigView for vgpu_sim::Vgpu {
    fn bar_map(&self, host: &HostResources) -> Option<Vec<BarMapping>> {
        self.config().bar_map(host).ok()
    }
    fn routes(&self, host: &HostResources) -> Option<Vec<InterruptRoute>> {
        self.config().interrupt_routes(host).ok()
    }
}

/// A vCPU's view of the machine for one step.
pub struct VmBus<'a, D: VfioDevice + ConfigView> {
    /// Guest RAM.
    pub mem: &'a GuestMem,
    /// The device.
    pub dev: &'a mut D,
    /// Current BAR map, rebuilt whenever a write changes the config.
    pub bars: &'a mut Vec<BarMapping>,
    /// Current interrupt routes, rebuilt likewise.
    pub routes: &'a mut Vec<InterruptRoute>,
    /// This host's resources.
    pub host: &'a HostResources,
    /// Logger.
    pub log: &'a Logger,
    /// Rate limit for warnings about bad guest accesses.
    pub warn_limit: &'a mut RateLimit,
}

impl<D: VfioDevice + ConfigView> VmBus<'_, D> {
    /// After a write that may have changed the PCI face (config space or the MSI-X
    /// table): the device's side effects are its own; the VMM rebuilds the BAR map and
    /// routes from the config space.
    fn refresh(&mut self) {
        if let Some(b) = self.dev.bar_map(self.host) {
            *self.bars = b;
        }
        if let Some(r) = self.dev.routes(self.host) {
            *self.routes = r;
        }
    }
}

impl<D: VfioDevice + ConfigView> VmBus<'_, D> {
    /// The device's own offset in region `index` for offset `off` in this host's region
    /// (see [`decode`]): the region's `HostRegion::offset` taken off. Regions that back no
    /// BAR (the config space) are addressed directly. `None` below the region's start.
    fn device_offset(&self, index: u32, off: u64) -> Option<u64> {
        match self
            .host
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

impl<D: VfioDevice + ConfigView> std::fmt::Debug for VmBus<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBus").field("bars", &self.bars).finish()
    }
}

impl<D: VfioDevice + ConfigView> GuestBus for VmBus<'_, D> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        match decode(self.mem, self.bars, gpa, buf.len()) {
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
        match decode(self.mem, self.bars, gpa, buf.len()) {
            Target::Ram => {
                let _ = memory::write(self.mem, gpa, buf);
            }
            Target::Region(index, off) => {
                let Some(off) = self.device_offset(index, off) else {
                    self.below_window(gpa, index);
                    return;
                };
                match self.dev.region_write(index, off, buf) {
                    Ok(()) => self.refresh(),
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
