//! One module per untrusted input; each has `run(data)`, the body of its fuzz target.

pub mod config_space;
pub mod control_messages;
pub mod device_context;
pub mod gpu_commands;
pub mod guest_mmio;
pub mod snapshot_restore;
pub mod stream_reader;
pub mod v1_region;
pub mod v2_arcs;
pub mod vfio_user_messages;
