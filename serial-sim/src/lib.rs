//! A second, small migratable device for the VMM: a serial-port-like PCI function in the
//! spirit of Linux's `mtty` sample, with nothing to do with graphics. It proves that
//! `vmm` drives any device that implements the `mdev_core` VFIO contract.
//!
//! * [`regs`]: PCI identity, the BAR0 register map, the line's byte transform;
//! * [`device`]: the device ([`device::Serial`]): TX and RX FIFOs, a line advanced by the
//!   platform, an interrupt latch raising MSI-X vector 0 through its `ConfigSpace`, a
//!   4 KiB scratch BAR, and v2 migration (STOP_COPY, PRE_COPY, P2P) with the v1 region
//!   (`state_region::StateRegion`) on top; [`device::SharedSerial`] is how a VMM holds it;
//! * [`state`]: the saved state's own versioned, checksummed format;
//! * [`compose`]: the only module that uses `vmm`: the guest driver, the line as
//!   `SimHardware`, and the `VmFactory` for device type `serial-16`.

#![deny(missing_docs)]

pub mod compose;
pub mod device;
pub mod regs;
pub mod state;
