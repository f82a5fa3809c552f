//! The vGPU's guest-visible side, `no_std`: what a guest kernel needs to drive the device.
//!
//! * [`regs`], [`cmd`]: the register map and the command set (the device's ABI).
//! * [`workload`]: the seeded 3D workload's guest driver, which sees only a
//!   [`workload::GuestBus`].
//! * [`x86`]: the contract between a VMM and the freestanding x86-64 guest image that runs
//!   the driver (memory map, status port).
//!
//! The crate has no dependencies and uses only `core` and `alloc`, so the same driver runs
//! on the host (the simulated vCPU, through `vgpu-sim`'s re-exports) and in the guest image
//! (`guest-x86`, built by `guest-image`).

#![no_std]
#![deny(missing_docs)]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod cmd;
pub mod regs;
pub mod workload;
pub mod x86;
