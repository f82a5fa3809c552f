//! What each fuzz target does with its input and the invariants it asserts, kept out of
//! the libFuzzer binaries so that the same code runs under `cargo test` (every committed
//! seed, in `tests`) and builds the seed corpus (`gen-corpus`).
//!
//! One module per untrusted input in [`targets`]; [`device`] builds the vGPU the device
//! targets drive through its public VFIO face (`mdev_core::VfioDevice`,
//! `mdev_core::MigrationDevice`) only, and takes the state digest that "a refused input
//! changes nothing" compares; [`seeds`] builds real inputs (a real snapshot stream, a real
//! device context, real save and resume sequences) for the corpus.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod device;
pub mod input;
pub mod seeds;
pub mod stream_fix;
pub mod targets;

pub use input::Input;

/// A fuzz target's body: what it does with one input (panics on a finding).
pub type Target = fn(&[u8]);

/// Every fuzz target by name, with its entry point.
pub const TARGETS: [(&str, Target); 10] = [
    ("stream_reader", targets::stream_reader::run),
    ("snapshot_restore", targets::snapshot_restore::run),
    ("control_messages", targets::control_messages::run),
    ("device_context", targets::device_context::run),
    ("v1_region", targets::v1_region::run),
    ("v2_arcs", targets::v2_arcs::run),
    ("config_space", targets::config_space::run),
    ("gpu_commands", targets::gpu_commands::run),
    ("guest_mmio", targets::guest_mmio::run),
    ("vfio_user_messages", targets::vfio_user_messages::run),
];

#[cfg(test)]
mod tests;
