//! What a composer plugs into a VM: the device, the guest program, and the platform layout.
//!
//! The VMM knows devices only through the VFIO contract (`mdev_core::VfioDevice`) and the
//! guest only as code it runs on a vCPU. Which device, which guest and where the firmware
//! places things is decided by whoever composes the VM (the `vgpu-migrate` tool, the
//! end-to-end tests), through a [`VmFactory`]. Nothing here names a vGPU.

use std::any::Any;
use std::fmt::Debug;

use mdev_core::VfioDevice;
use slog::Logger;

use crate::memory::GuestMem;

/// Guest-physical memory as a vCPU sees it: RAM, a BAR, or the ECAM config window.
pub trait GuestBus {
    /// Read `buf.len()` bytes at guest-physical `gpa`. Unbacked addresses read as all ones.
    fn read(&mut self, gpa: u64, buf: &mut [u8]);
    /// Write `buf` at guest-physical `gpa`. Writes to unbacked addresses are dropped.
    fn write(&mut self, gpa: u64, buf: &[u8]);
}

/// What one step of a simulated guest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStep {
    /// The guest did work.
    Progress,
    /// The guest waits for the device (it would halt until an interrupt).
    Waiting,
    /// The guest finished what it was asked to do and is idle.
    Done,
    /// The guest gave up.
    Failed,
}

/// Code that the simulated vCPU runs: a step at a time, with interrupt handlers between
/// steps. Everything the program needs must live in guest RAM, never in `self`, or a
/// migration would not carry it.
pub trait GuestProgram: Send + Debug {
    /// Run one step.
    fn step(&mut self, bus: &mut dyn GuestBus) -> GuestStep;
    /// Run the interrupt handler for `vector`.
    fn interrupt(&mut self, bus: &mut dyn GuestBus, vector: u32);
    /// Units of guest-visible progress so far, read from guest RAM (for the vGPU
    /// workload: completed frames). Used for stop points.
    fn progress(&mut self, bus: &mut dyn GuestBus) -> u64;
}

/// The part of a simulated device that does work on its own (a GPU's engine): the
/// simulated platform advances it between vCPU steps, as time passes for real hardware.
/// A device that runs on its own thread, or in another process, advances itself and
/// returns 0.
pub trait SimHardware: Send + Debug {
    /// Let the hardware do up to `budget` units of work; returns the units done.
    fn advance(&mut self, budget: usize) -> usize;
    /// Units of work done since reset (for the vGPU: commands executed). Used to place
    /// exact stop points in tests and `dump --at-command`.
    fn work_done(&mut self) -> u64;
    /// Slow the hardware down by `percent` (auto-converge); 0 is full speed.
    fn set_throttle(&mut self, percent: u8);
    /// A one-line description of the hardware's state, for a stall diagnostic.
    fn describe(&mut self) -> String;
    /// Where the hardware is inside its current unit of work (to place a switchover
    /// exactly in tests, and to report where it happened).
    fn position(&mut self) -> HardwarePosition;
    /// The composer's own type, for test hooks that need device internals.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// Where a device's hardware is inside its work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardwarePosition {
    /// Inside a unit of work that spans several steps (for the vGPU: inside a batch).
    pub mid_work: bool,
    /// Offset inside that unit (for the vGPU: byte offset in the batch).
    pub offset: u32,
    /// Interrupt causes latched and not yet acknowledged by the guest (the vGPU's IIR).
    pub irq_status: u32,
}

/// Hardware for a device that needs no advancing.
#[derive(Debug, Default)]
pub struct NoHardware;

impl SimHardware for NoHardware {
    fn advance(&mut self, _budget: usize) -> usize {
        0
    }
    fn work_done(&mut self) -> u64 {
        0
    }
    fn set_throttle(&mut self, _percent: u8) {}
    fn describe(&mut self) -> String {
        "no hardware state".into()
    }
    fn position(&mut self) -> HardwarePosition {
        HardwarePosition::default()
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// Where the platform puts things in guest-physical space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformLayout {
    /// Guest RAM starts at 0 and must end at or below this address.
    pub mmio_hole_start: u64,
    /// The smallest guest RAM the guest program runs in.
    pub min_ram: u64,
    /// The ECAM window (4 KiB) of the device's function.
    pub ecam_gpa: u64,
    /// Where the firmware step places each memory BAR (by BAR number).
    pub bar_gpas: Vec<(u8, u64)>,
}

/// What a guest's write to an I/O port means to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestSignal {
    /// Nothing the VMM acts on.
    Ignore,
    /// The guest finished what it was asked to do and is idle (it runs on if resumed).
    Done,
    /// The guest gave up or crashed; the reason in words.
    Failed(String),
}

/// A guest program built as a bootable x86-64 image, for a hardware (KVM) vCPU. The VMM
/// sets up long mode ([`crate::kvm::BootSpec`]) and runs it; the image drives the device
/// through the same BARs and ECAM window as the simulated program.
pub trait GuestImage: Send + Sync + Debug {
    /// Load the image into guest RAM; where the boot tables go, the entry and the stack.
    fn load(
        &self,
        mem: &GuestMem,
    ) -> Result<crate::kvm::BootSpec, Box<dyn std::error::Error + Send + Sync>>;
    /// What a write of `value` to `port` means.
    fn port_write(&self, port: u16, value: u32) -> GuestSignal;
}

/// The parts of one VM's machine, as a composer builds them.
#[derive(Debug)]
pub struct MachineParts {
    /// The device, reached only through the VFIO contract.
    pub device: Box<dyn VfioDevice>,
    /// The device's hardware, advanced by the simulated platform.
    pub hardware: Box<dyn SimHardware>,
    /// The program the simulated vCPU runs.
    pub guest: Box<dyn GuestProgram>,
    /// The same program as a bootable image for a KVM vCPU, if there is one.
    pub image: Option<std::sync::Arc<dyn GuestImage>>,
}

/// Builds the device and guest of a VM on its guest RAM (the source's VM, a snapshot's
/// restore target, a migration target).
pub trait VmFactory: Send + Sync + Debug {
    /// The platform layout of VMs this factory builds.
    fn layout(&self) -> PlatformLayout;
    /// Build the parts for a device of `device_type` on guest RAM `mem`.
    fn parts(
        &self,
        device_type: &str,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>>;
    /// Whether guest RAM must be shared memory (a memfd another process can map), as a
    /// device served by another process (vfio-user) needs. Default: private memory.
    fn shared_memory(&self) -> bool {
        false
    }
}
