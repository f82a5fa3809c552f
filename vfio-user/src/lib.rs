//! vfio-user for the project: a device served from its own process, and a client that
//! makes such a device a [`mdev_core::VfioDevice`] again.
//!
//! The protocol is QEMU's `docs/interop/vfio-user.rst` (version 0.1, as libvfio-user and
//! QEMU 10.1 speak it): a 16-byte header, `VERSION` with JSON capabilities, DMA maps whose
//! memory comes as file descriptors or, without one, is reached by `DMA_READ/WRITE`
//! messages from the server to the client, region and irq info, region reads and writes,
//! irqs on eventfds, reset, and migration v2 through `DEVICE_FEATURE` and
//! `MIG_DATA_READ/WRITE`.
//!
//! * [`proto`]: header, command numbers, capabilities, bounded payload readers.
//! * [`wire`]: one message per `sendmsg` with `SCM_RIGHTS`; bounded receive with deadlines.
//! * [`server`]: [`server::Server`] hosts one device ([`server::DeviceFactory`]) for one
//!   client at a time.
//! * [`client`]: [`client::Client`] connects, maps guest memory, and implements
//!   `VfioDevice`, `MigrationDevice` and `DmaDirtyLog` over the socket.
//! * [`clock`]: the simulation clock region (a project extension) through which a
//!   simulated platform advances a device's engine in another process.

#![deny(missing_docs)]

pub mod client;
pub mod clock;
pub mod proto;
pub mod server;
pub mod wire;
