//! Engine-level tests over [`TestBus`]: each command, the ring and batches, every error, and
//! stopping and resuming after every command.

mod commands;
mod errors;
mod resume;
mod ring;

use super::testbus::{Cmds, TestBus};
use super::Engine;

/// Graphics memory of the tests' devices.
const GMEM: usize = 0x40000;

/// An engine and a device whose ring holds `cmds`.
fn device(cmds: Cmds) -> (Engine, TestBus) {
    let mut bus = TestBus::new(GMEM);
    bus.submit(&cmds.0);
    (Engine::new(), bus)
}

/// Run until idle or halted.
fn run_all(e: &mut Engine, bus: &mut TestBus) -> usize {
    e.run(bus, usize::MAX)
}

/// The 64-bit value of a LO/HI register pair.
fn reg64(bus: &TestBus, lo: u32, hi: u32) -> u64 {
    use super::EngineBus;
    u64::from(bus.reg(lo)) | (u64::from(bus.reg(hi)) << 32)
}
