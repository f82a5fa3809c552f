//! A simulated mdev vGPU, modelled on Intel GVT-g: register BAR with an MSI-X table and a
//! GTT window, an aperture BAR onto graphics memory, a render engine fed by a ring and batch
//! buffers, a display plane, and live migration through the v1 device-state region and the
//! v2 migration state machine.
//!
//! * [`regs`], [`cmd`]: the register map and the command set (the guest driver's contract).
//! * [`engine`]: the render engine.
//! * [`device`]: the PCI function ([`Vgpu`]) and its migration.
//! * [`types`]: mdev types (`vgpu-64`, `vgpu-512`) and the parent's resource accounting.
//! * [`workload`]: the seeded 3D workload's guest driver.
//! * [`inspect`]: decoding a saved context for people (the CLI's `inspect`).

#![deny(missing_docs)]

pub mod engine;

pub mod device;
pub mod inspect;
pub mod types;

/// The register map, the command set and the workload driver live in `vgpu-guest` (they
/// also build for the freestanding guest image); re-exported here under their old paths.
pub use vgpu_guest::{cmd, regs, workload};

pub use device::{SharedVgpu, Vgpu, VgpuConfig, VgpuError, VgpuState};
pub use shadow_pt::DirtyTracking;
pub use types::{VgpuParent, VgpuType, VGPU_512, VGPU_64, VGPU_TYPES};
