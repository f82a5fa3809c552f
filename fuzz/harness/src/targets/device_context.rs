//! The device context parser (`vgpu-sim`'s resuming side, `state-region`'s push parser),
//! through the public load path a VMM uses: a fresh `vgpu-64`, RESUMING, the context in
//! `write_data` chunks, STOP (validate and commit).
//!
//! First byte: bit 0 picks the mode. Raw: the rest is the context's bytes. Structured: the
//! rest is a header and a list of sections (id, versions, payload), which the harness
//! encodes with correct section digests and chain, so that mutations reach the section
//! decoders behind the digests instead of stopping at the first digest. Second byte: the
//! write size.
//!
//! Invariants: no panic; a refused context changes nothing on the device (registers, GTT,
//! engine, config space and sampled graphics memory equal a fresh device's) and a reset
//! brings it back to RUNNING; an accepted context leaves a device that saves, and whose
//! context loads into another fresh device with the same state.

use mdev_core::{MigState, VfioDevice};
use state_region::format::{ContextEncoder, ContextHeader};

use crate::device::{assert_migratable, digest, fresh, load};
use crate::input::Output;
use crate::Input;

/// Write sizes the second byte picks from.
pub const CHUNKS: [usize; 6] = [1 << 20, 4096, 1, 7, 65536, 333];

/// Encode a structured input (after the mode and chunk bytes) as a context with correct
/// digests.
pub fn encode_structured(i: &mut Input) -> Vec<u8> {
    let name_sel = i.u8();
    let name = match name_sel {
        0 => "vgpu-64".to_string(),
        1 => "vgpu-512".to_string(),
        n => String::from_utf8_lossy(i.bytes(usize::from(n % 70))).into_owned(),
    };
    let (major, minor) = (i.u16(), i.u16());
    let header = ContextHeader {
        major,
        minor,
        mdev_type: name,
    };
    let (mut enc, mut out) = ContextEncoder::new(&header);
    while !i.is_empty() {
        let (id, smajor, sminor) = (i.u32(), i.u16(), i.u16());
        let len = i.u32() as usize;
        let payload = i.bytes(len);
        if let Ok(bytes) = enc.section(id, smajor, sminor, payload) {
            out.extend(bytes);
        }
    }
    out.extend(enc.end());
    out
}

/// The structured encoding of `sections` (for seeds): mode 1, `chunk` index, header, and
/// each section.
pub fn structured_seed(chunk: u8, name_sel: u8, sections: &[(u32, u16, u16, Vec<u8>)]) -> Vec<u8> {
    let mut o = Output::default();
    o.u8(1).u8(chunk).u8(name_sel);
    o.u16(state_region::format::FORMAT_MAJOR)
        .u16(state_region::format::FORMAT_MINOR);
    for (id, major, minor, payload) in sections {
        o.u32(*id).u16(*major).u16(*minor).u32(payload.len() as u32);
        o.raw(payload);
    }
    o.bytes
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let mode = i.u8();
    let chunk = i.pick(&CHUNKS);
    let context = if mode & 1 == 1 {
        encode_structured(&mut i)
    } else {
        i.rest().to_vec()
    };
    let mut d = fresh();
    let before = digest(&d);
    match load(&mut d, &context, chunk) {
        Ok(state) => {
            assert_eq!(state, MigState::Stop);
            assert_migratable(&mut d);
        }
        Err(_) => {
            let after = digest(&d);
            assert_eq!(
                after.state, before.state,
                "a refused context changed the device"
            );
            assert_eq!(
                after.gmem, before.gmem,
                "a refused context changed graphics memory"
            );
            d.reset().expect("reset");
            assert_eq!(
                d.mig_state(),
                MigState::Running,
                "reset after a refused context"
            );
        }
    }
}
