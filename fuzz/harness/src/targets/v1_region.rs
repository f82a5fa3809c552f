//! Sequences of VMM accesses to the v1 migration region (`state-region`'s `StateRegion`,
//! region 9 of the vGPU): the header fields (`device_state`, `pending_bytes`,
//! `data_offset`, `data_size`) and the data window, each decoded from the input.
//!
//! Besides single accesses, two ops follow the uAPI's own steps, so the fuzzer reaches deep
//! states: a save step (read `pending_bytes`, `data_offset`, `data_size`, then the data)
//! and a resume step (write a chunk of the input at `data_offset`, then `data_size`).
//!
//! Invariants: no panic; while the device is not in ERROR, `device_state` reads back as
//! the v1 value of the device's v2 state; `data_size` never exceeds the window and
//! `data_offset` lies in the region; at the end (for one input in eight, by length: the
//! check is slow) a running or stopped device is still migratable (after a resume
//! sequence that committed, the loaded state saves and loads).

use mdev_core::migration::v2_to_v1;
use mdev_core::{MigState, VfioDevice};
use state_region::DATA_OFFSET;
use vgpu_sim::device::MIGRATION_REGION_INDEX as REGION;

use crate::device::{assert_migratable, check_migratable, fresh_on, guest_mem};
use crate::Input;

/// Offsets of the header fields.
pub const DEVICE_STATE: u64 = 0;
/// `pending_bytes`.
pub const PENDING_BYTES: u64 = 8;
/// `data_offset`.
pub const DATA_OFFSET_FIELD: u64 = 16;
/// `data_size`.
pub const DATA_SIZE: u64 = 24;
/// Data windows the first byte picks from.
pub const WINDOWS: [usize; 3] = [65536, 4096, 1 << 20];
/// v1 `device_state` values the write op picks from (STOP, RUNNING, SAVING,
/// RUNNING|SAVING, RESUMING); 5 picks a raw value.
pub const STATES: [u32; 5] = [0, 1, 2, 3, 4];

/// Ops (the op byte modulo 9).
pub mod op {
    /// Write `device_state`.
    pub const SET_STATE: u8 = 0;
    /// Read a header field.
    pub const READ_FIELD: u8 = 1;
    /// Write `data_size`.
    pub const WRITE_SIZE: u8 = 2;
    /// Read part of the window.
    pub const READ_WINDOW: u8 = 3;
    /// Write part of the window.
    pub const WRITE_WINDOW: u8 = 4;
    /// Any access anywhere in the region.
    pub const RAW: u8 = 5;
    /// One save step.
    pub const SAVE_STEP: u8 = 6;
    /// One resume step.
    pub const RESUME_STEP: u8 = 7;
    /// Run the engine a little.
    pub const RUN: u8 = 8;
}

fn read_u64(d: &mut vgpu_sim::Vgpu, off: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    d.region_read(REGION, off, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

fn check(d: &mut vgpu_sim::Vgpu, window: u64, size: u64) {
    let mut b = [0u8; 4];
    if d.mig_state() != MigState::Error && d.region_read(REGION, DEVICE_STATE, &mut b).is_ok() {
        let v1 = u32::from_le_bytes(b) & 7;
        assert_eq!(
            v1,
            v2_to_v1(d.mig_state()),
            "device_state and the v2 state disagree"
        );
    }
    if let Some(s) = read_u64(d, DATA_SIZE) {
        assert!(s <= window, "data_size {s} over the {window}-byte window");
    }
    if let Some(o) = read_u64(d, DATA_OFFSET_FIELD) {
        assert!(
            o == 0 || (DATA_OFFSET..size).contains(&o),
            "data_offset {o} outside"
        );
    }
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let window = i.pick(&WINDOWS);
    let mut d = fresh_on(guest_mem(), window);
    let size = d.region_info(REGION).expect("the migration region").size();
    let w = window as u64;
    let mut steps = 0;
    while !i.is_empty() && steps < 256 {
        steps += 1;
        match i.u8() % 9 {
            op::SET_STATE => {
                let sel = i.u8();
                let v = if sel % 6 == 5 {
                    i.u32()
                } else {
                    STATES[usize::from(sel % 6)]
                };
                let _ = d.region_write(REGION, DEVICE_STATE, &v.to_le_bytes());
            }
            op::READ_FIELD => {
                let off = u64::from(i.u8() % 32);
                let mut b = vec![0u8; usize::from(i.pick(&[1u8, 2, 4, 8]))];
                let _ = d.region_read(REGION, off, &mut b);
            }
            op::WRITE_SIZE => {
                let v = i.u64() % (2 * w + 2);
                let _ = d.region_write(REGION, DATA_SIZE, &v.to_le_bytes());
            }
            op::READ_WINDOW => {
                let off = u64::from(i.u32()) % (w + 16);
                let mut b = vec![0u8; usize::from(i.u16()) % 8193];
                let _ = d.region_read(REGION, DATA_OFFSET + off, &mut b);
            }
            op::WRITE_WINDOW => {
                let off = u64::from(i.u32()) % (w + 16);
                let len = usize::from(i.u16()) % 8193;
                let _ = d.region_write(REGION, DATA_OFFSET + off, i.bytes(len));
            }
            op::RAW => {
                let off = i.u64() % (size + 64);
                let len = usize::from(i.u8() % 17);
                if i.u8() & 1 == 0 {
                    let mut b = vec![0u8; len];
                    let _ = d.region_read(REGION, off, &mut b);
                } else {
                    let _ = d.region_write(REGION, off, i.bytes(len));
                }
            }
            op::SAVE_STEP => save_step(&mut d),
            op::RESUME_STEP => {
                let len = (i.u32() as usize) % (window + 1);
                let chunk = i.bytes(len).to_vec();
                resume_step(&mut d, &chunk);
            }
            _ => {
                d.run(usize::from(i.u8()));
            }
        }
        check(&mut d, w, size);
    }
    if check_migratable(data.len()) {
        assert_migratable(&mut d);
    }
}

/// The uAPI's save step: `pending_bytes`, then `data_offset` (which makes the device stage
/// the next chunk), `data_size`, and the data.
pub fn save_step(d: &mut vgpu_sim::Vgpu) {
    let Some(pending) = read_u64(d, PENDING_BYTES) else {
        return;
    };
    if pending == 0 {
        return;
    }
    let (Some(off), Some(size)) = (read_u64(d, DATA_OFFSET_FIELD), read_u64(d, DATA_SIZE)) else {
        return;
    };
    let mut b = vec![0u8; size.min(1 << 20) as usize];
    let _ = d.region_read(REGION, off, &mut b);
}

/// The uAPI's resume step: `data_offset`, the chunk at it, then `data_size`.
pub fn resume_step(d: &mut vgpu_sim::Vgpu, chunk: &[u8]) {
    let Some(off) = read_u64(d, DATA_OFFSET_FIELD) else {
        return;
    };
    let _ = d.region_write(REGION, off, chunk);
    let _ = d.region_write(REGION, DATA_SIZE, &(chunk.len() as u64).to_le_bytes());
}
