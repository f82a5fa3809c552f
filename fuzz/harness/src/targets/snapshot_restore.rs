//! The VMM's whole restore path (`vmm::snapshot::restore_with`), fed the input as a
//! snapshot file: the stream reader, guest RAM records against the header's RAM size, the
//! device's data through its v1 region, the config space check and replay, the vCPU
//! record. The VM is one with `serial-sim` (the mtty-like device that `vmm`'s own tests
//! use): the vGPU's VM needs the platform crate, whose nested guest build cannot take the
//! fuzz build's flags; the VMM code under test is the same.
//!
//! Each input runs twice: as it is, and resealed (`stream_fix`), so that mutations also
//! reach what follows the digest check.
//!
//! Invariants: no panic; a refused file is one error; an accepted file gives a VM that
//! saves again, and that save restores.

use std::sync::Arc;

use serial_sim::compose::{self, SerialFactory, DEVICE_TYPE};
use slog::{o, Discard, Logger};
use vmm::{StopAt, Vm, VmConfig};

/// Guest RAM of the seed's VM.
pub const RAM: u64 = 4 << 20;

/// The host a snapshot is restored on.
pub fn host() -> VmConfig {
    let mut cfg = VmConfig::new(
        DEVICE_TYPE,
        Arc::new(SerialFactory::default()),
        Logger::root(Discard, o!()),
    );
    cfg.ram_size = RAM;
    cfg
}

/// A real snapshot: the serial guest stopped mid-stream (bytes in the RX FIFO, the
/// interrupt raised), saved.
pub fn seed() -> Vec<u8> {
    let mut vm = Vm::new(&host()).expect("a serial VM");
    compose::boot(&mut vm, 7, 3000, 0x45).expect("boot");
    vm.run(StopAt::Command(1234)).expect("run");
    let mut out = Vec::new();
    vmm::snapshot::save(&mut vm, &mut out).expect("save");
    out
}

/// The fuzz target's body: the input as it is, and resealed (its end digests recomputed,
/// so that a mutation reaches the commit, the config replay and the vCPU restore).
pub fn run(data: &[u8]) {
    restore(data);
    let sealed = crate::stream_fix::reseal(data);
    if sealed != data {
        restore(&sealed);
    }
}

fn restore(data: &[u8]) {
    let Ok(mut vm) = vmm::snapshot::restore_with(data, &host()) else {
        return;
    };
    let mut again = Vec::new();
    vmm::snapshot::save(&mut vm, &mut again).expect("a restored VM saves");
    if let Err(e) = vmm::snapshot::restore_with(&again[..], &host()) {
        panic!("a restored VM's own snapshot does not restore: {e}");
    }
}
