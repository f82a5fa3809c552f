//! The host side: what QEMU does for a VFIO mdev in a real system.
//!
//! * [`memory`]: guest RAM (vm-memory with an `AtomicBitmap`: the CPU dirty log);
//! * [`platform`]: what a composer plugs in: the device, the guest program, the layout
//!   ([`platform::VmFactory`]); nothing in this crate names a vGPU;
//! * [`vcpu`]: a simulated vCPU that runs a guest program;
//! * [`pci`]: the VMM's view of the device's PCI face, kept through its config region;
//! * [`bus`]: guest-physical dispatch to RAM, the device's BARs and its ECAM config window;
//! * [`irq`]: interrupt delivery from the device through MSI routes to the vCPU;
//! * [`vm`]: the VM that ties them together, boots the guest and runs it;
//! * [`kvm`]: a KVM vCPU backend: a guest in guest RAM on a hardware vCPU, its MMIO and port
//!   I/O exits to a handler, pause by kick, vCPU state, the KVM dirty log;
//! * [`stream`]: the migration stream format (a snapshot file is the same stream);
//! * [`snapshot`]: save to and restore from a stream.
//!
//! The VMM reaches the device only through `mdev_core::VfioDevice` (region reads and writes,
//! irq wiring, the v2 migration interface), as QEMU reaches a VFIO device only through its fd.

#![deny(missing_docs)]

pub mod bus;
pub mod error;
pub mod irq;
pub mod kvm;
pub mod memory;
pub mod migration;
pub mod pci;
pub mod platform;
pub mod ratelimit;
pub mod snapshot;
pub mod stream;
pub mod vcpu;
pub mod vm;

pub use error::{Result, VmmError};
pub use platform::{
    GuestBus, GuestImage, GuestProgram, GuestSignal, GuestStep, HardwarePosition, MachineParts,
    PlatformLayout, SimHardware, VmFactory,
};
pub use vm::{KvmRunReport, StopAt, Vm, VmConfig};
