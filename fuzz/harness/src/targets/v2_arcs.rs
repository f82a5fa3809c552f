//! Sequences of v2 migration calls (`mdev_core::MigrationDevice` on a vGPU): state
//! changes to any state, reads and writes of the data stream, `precopy_info`,
//! `stop_copy_size`, reset, with guest work in between (engine runs, aperture writes
//! that dirty graphics memory between pre-copy reads).
//!
//! Reads and writes go through the data stream handle the last state change opened, or
//! (picked by the input) through an older handle or a made-up one, which the device must
//! refuse as stale.
//!
//! Invariants: no panic; a refused state change (no path in the uAPI's arc table) changes
//! nothing: neither the state nor the device; a successful one reaches exactly the
//! requested state; a read never returns more than asked, and only in a saving state
//! through the open session's handle; a reset always brings RUNNING back; at the end (for
//! one input in eight, by length: the check is slow) a running or stopped device is
//! migratable.

use mdev_core::migration::ALL_STATES;
use mdev_core::uapi::VFIO_PCI_BAR2_REGION_INDEX;
use mdev_core::{DataStream, MigState, MigrationDevice, MigrationError, VfioDevice};

use crate::device::{assert_migratable, check_migratable, digest, fresh};
use crate::Input;

/// Ops (the op byte modulo 8).
pub mod op {
    /// `set_mig_state`.
    pub const SET_STATE: u8 = 0;
    /// `read_data`.
    pub const READ: u8 = 1;
    /// `write_data` of input bytes.
    pub const WRITE: u8 = 2;
    /// `precopy_info`.
    pub const PRECOPY_INFO: u8 = 3;
    /// `stop_copy_size`.
    pub const STOP_COPY_SIZE: u8 = 4;
    /// `reset`.
    pub const RESET: u8 = 5;
    /// The engine runs.
    pub const RUN: u8 = 6;
    /// The guest writes graphics memory through the aperture.
    pub const APERTURE: u8 = 7;
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let mut d = fresh();
    let mut open: Option<DataStream> = None;
    let mut old: Vec<DataStream> = Vec::new();
    let mut steps = 0;
    while !i.is_empty() && steps < 256 {
        steps += 1;
        match i.u8() % 8 {
            op::SET_STATE => {
                let target = i.pick(&ALL_STATES);
                let from = d.mig_state();
                let before = digest(&d);
                match d.set_mig_state(target) {
                    Ok(t) => {
                        assert_eq!(t.state, target, "reached another state than asked");
                        assert_eq!(d.mig_state(), target);
                        if let Some(s) = t.stream {
                            old.extend(open.replace(s));
                        }
                    }
                    Err(MigrationError::ArcFailed { .. }) => {}
                    Err(_) => {
                        assert_eq!(d.mig_state(), from, "a refused change moved the state");
                        assert_eq!(digest(&d), before, "a refused change changed the device");
                    }
                }
            }
            op::READ => {
                let mut b = vec![0u8; 1 + usize::from(i.u16())];
                let s = handle(&mut i, open, &old);
                let current = open == Some(s);
                if let Ok(n) = d.read_data(s, &mut b) {
                    assert!(n <= b.len(), "read_data returned more than asked");
                    assert!(
                        d.mig_state().is_saving(),
                        "data read outside a saving state"
                    );
                    assert!(current, "a read through a stale handle succeeded");
                }
            }
            op::WRITE => {
                let len = usize::from(i.u16());
                let s = handle(&mut i, open, &old);
                let current = open == Some(s);
                if d.write_data(s, i.bytes(len)).is_ok() {
                    assert_eq!(
                        d.mig_state(),
                        MigState::Resuming,
                        "data written outside RESUMING"
                    );
                    assert!(current, "a write through a stale handle succeeded");
                }
            }
            op::PRECOPY_INFO => {
                let _ = d.precopy_info();
            }
            op::STOP_COPY_SIZE => {
                let _ = d.stop_copy_size();
            }
            op::RESET => {
                d.reset().expect("reset");
                old.extend(open.take());
                assert_eq!(d.mig_state(), MigState::Running, "reset is RUNNING");
            }
            op::RUN => {
                d.run(usize::from(i.u8()));
            }
            _ => {
                let off = u64::from(i.u32()) % (1 << 20);
                let len = usize::from(i.u8());
                let _ = d.region_write(VFIO_PCI_BAR2_REGION_INDEX, off, i.bytes(len));
            }
        }
    }
    if check_migratable(data.len()) {
        assert_migratable(&mut d);
    }
}

/// The handle an access uses: the open one (the low bits of the selector are not 7), an
/// older one, or a made-up one.
fn handle(i: &mut Input, open: Option<DataStream>, old: &[DataStream]) -> DataStream {
    let sel = i.u8();
    match (sel & 7, open) {
        (7, _) if sel & 8 == 0 && !old.is_empty() => old[usize::from(sel >> 4) % old.len()],
        (7, _) => DataStream::from_id(u64::from(i.u16())),
        (_, Some(s)) => s,
        (_, None) => DataStream::from_id(u64::from(sel)),
    }
}
