//! PCI configuration space of a simulated GPU function (an mdev vGPU), with save and
//! replay onto a migration target.
//!
//! - [`ConfigSpace`] is the live device: 4 KiB of registers with writable and
//!   write-1-to-clear masks, a VGA type-0 header, two 64-bit memory BARs, PM, MSI, MSI-X and
//!   PCI Express capabilities and an extended capability chain. Guest writes return
//!   [`ConfigChange`]s; interrupts return a [`Delivery`]. Nothing reaches into a VMM.
//! - [`ConfigSpaceState`] is the plain saved state, with a versioned, checksummed byte
//!   format ([`ConfigSpaceState::to_bytes`], [`ConfigSpaceState::from_bytes`]).
//! - [`replay`] checks a saved state against a target device, replays it through the
//!   guest's own write path in a safe order, and resolves BARs and interrupt vectors against
//!   the target's [`HostResources`].
//! - [`ConfigSpace::lspci_hex`] and [`ConfigSpace::decoded`] show it as `lspci` would.
//!
//! ```
//! use pci_config_replay::{replay, ConfigParams, ConfigSpace, HostResources, HostRegion};
//!
//! let mut source = ConfigSpace::new(ConfigParams::default()).unwrap();
//! source.write_u32(0x10, 0xde00_0000); // BAR0
//! source.write_u16(0x04, 0x0006); // memory decode + bus master
//! let bytes = source.state().to_bytes();
//!
//! let saved = pci_config_replay::ConfigSpaceState::from_bytes(&bytes).unwrap();
//! let mut target = ConfigSpace::new(ConfigParams::default()).unwrap();
//! let host = HostResources {
//!     bar_regions: [Some(HostRegion::vfio_bar(0, 0)), None, None, None, None, None],
//!     interrupt_sinks: vec![],
//! };
//! let result = replay(&mut target, &saved, &host).unwrap();
//! assert_eq!(target.bytes(), source.bytes());
//! assert_eq!(result.bar_map[0].guest_addr, 0xde00_0000);
//! ```

#![deny(missing_docs)]

pub mod bar;
mod block;
pub mod caps;
mod config;
mod error;
mod host;
mod lspci;
mod params;
mod probe;
pub mod regs;
mod replay;
mod state;

pub use bar::BarSlot;
pub use caps::msi::MsiConfig;
pub use caps::msix::{MsixControl, MsixEntry};
pub use caps::pm::PowerState;
pub use config::{ConfigChange, ConfigSpace, Delivery, DropReason};
pub use error::{
    AccessError, ParamsError, PortError, ProbeError, ReplayError, ResourceError, StateError,
};
pub use host::{BarMapping, HostRegion, HostResources, InterruptKind, InterruptRoute};
pub use params::{ConfigParams, MIN_BAR_SIZE, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS};
pub use probe::{probe, ConfigPort};
pub use replay::{
    check_compatible, replay, replay_plan, verify_replayed, FireVector, PendingVector,
    ReplayResult, ReplayWrite,
};
pub use state::{
    crc32, ConfigSpaceState, STATE_HEADER_LEN, STATE_MAGIC, STATE_MAX_LEN, STATE_VERSION_MAJOR,
    STATE_VERSION_MINOR,
};
