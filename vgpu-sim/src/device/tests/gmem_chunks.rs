//! Graphics memory as `GMEM` 2.0 chunks: what the device writes, what it refuses (through
//! v2 and the v1 region, leaving the live device as it was), and the 1.x whole-memory
//! section it still reads.

use mdev_core::uapi::*;
use mdev_core::{MigState, MigrationDevice, VfioDevice};
use state_region::format::{inspect, ContextEncoder, ContextHeader, SECTION_HEADER_SIZE};

use super::stream::{load_v1, prepared, refused, save_v1, v1_set, v1_u64};
use super::*;
use crate::device::migration::{
    SectionId, GMEM_CHUNK, GMEM_CHUNK_HEADER, GMEM_VERSION, SECTION_MAJOR, SECTION_MINOR,
};

const MIG: u32 = crate::device::MIGRATION_REGION_INDEX;
const GMEM: u32 = SectionId::Gmem as u32;

/// A section: id, major, minor, payload.
type Section = (u32, u16, u16, Vec<u8>);

/// The sections of a verified stream: (id, major, minor, payload), the end left out.
fn sections(stream: &[u8]) -> Vec<Section> {
    let summary = inspect(stream, crate::inspect::context_limits(None)).unwrap();
    let n = summary.sections.len() - 1;
    summary.sections[..n]
        .iter()
        .map(|s| {
            let at = s.offset as usize + SECTION_HEADER_SIZE;
            let h = s.header;
            (
                h.id,
                h.major,
                h.minor,
                stream[at..at + h.length as usize].to_vec(),
            )
        })
        .collect()
}

/// A stream of `sections` with correct digests and chain (a "resealed" stream: only the
/// device's own checks can refuse it).
fn reseal(sections: &[Section]) -> Vec<u8> {
    let (mut enc, mut out) = ContextEncoder::new(&ContextHeader::new("vgpu-64").unwrap());
    for (id, major, minor, payload) in sections {
        out.extend(enc.section(*id, *major, *minor, payload).unwrap());
    }
    out.extend(enc.end());
    out
}

/// A saved stream of a device with non-zero graphics memory, and that device.
fn saved() -> (Vec<u8>, Vgpu, GuestMemoryMmap<AtomicBitmap>) {
    let (mut d, m) = prepared();
    let s = save_v2(&mut d, 1 << 20);
    (s, d, m)
}

#[test]
fn graphics_memory_is_saved_in_ordered_chunks() {
    let (s, d, _m) = saved();
    let secs = sections(&s);
    let chunks: Vec<_> = secs.iter().filter(|s| s.0 == GMEM).collect();
    let size = d.graphics_memory().bytes().len() as u64;
    assert_eq!(chunks.len() as u64, size / GMEM_CHUNK);
    for (i, (_, major, minor, payload)) in chunks.iter().enumerate() {
        assert_eq!((*major, *minor), GMEM_VERSION);
        assert_eq!(payload.len() as u64, GMEM_CHUNK_HEADER + GMEM_CHUNK);
        let at = u64::from_le_bytes(payload[..8].try_into().unwrap());
        assert_eq!(at, i as u64 * GMEM_CHUNK);
        let mem = &d.graphics_memory().bytes()[at as usize..(at + GMEM_CHUNK) as usize];
        assert!(
            payload[8..] == *mem,
            "chunk {i} carries graphics memory at {at}"
        );
    }
    // The chunks come first, in one run, before the fixed sections.
    assert!(secs[..chunks.len()].iter().all(|s| s.0 == GMEM));
}

#[test]
fn chunked_streams_load_through_both_protocols_in_any_write_size() {
    let (s, d, m) = saved();
    for (v1, chunk) in [
        (false, 333_333),
        (false, 4 << 20),
        (true, 1 << 20),
        (true, 77_777),
    ] {
        let mut t = device_on(VGPU_64, copy_ram(&m));
        if v1 {
            load_v1(&mut t, &s, chunk);
        } else {
            load_v2(&mut t, &s, chunk);
        }
        assert_eq!(t.mig_state(), MigState::Stop, "v1 {v1} chunk {chunk}");
        assert_eq!(t.state(), d.state(), "v1 {v1} chunk {chunk}");
        assert!(t.graphics_memory().bytes() == d.graphics_memory().bytes());
    }
    // And the v1 region saves the same bytes.
    let (mut b, _mb) = prepared();
    assert!(save_v1(&mut b) == s);
}

fn load_v2(t: &mut Vgpu, s: &[u8], chunk: usize) {
    let st = t.set_mig_state(MigState::Resuming).unwrap().stream.unwrap();
    for c in s.chunks(chunk) {
        assert_eq!(t.write_data(st, c).unwrap(), c.len());
    }
    t.set_mig_state(MigState::Stop).unwrap();
}

/// Load `stream` through the v1 region into a target with live state of its own,
/// expecting refusal; the live state is untouched. Returns the reason.
fn refused_v1(stream: &[u8]) -> String {
    let mut t = device();
    wr(&mut t, REG_SCRATCH0, 0x4321);
    t.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0, &[0xdd; 64])
        .unwrap();
    t.set_mig_state(MigState::Stop).unwrap();
    let before = t.state();
    v1_set(&mut t, VFIO_DEVICE_STATE_V1_RESUMING);
    let mut why = None;
    for c in stream.chunks(1 << 20) {
        let off = v1_u64(&mut t, 16);
        t.region_write(MIG, off, c).unwrap();
        if let Err(e) = t.region_write(MIG, 24, &(c.len() as u64).to_le_bytes()) {
            why = Some(e.to_string());
            break;
        }
    }
    let end = t.region_write(MIG, 0, &0u32.to_le_bytes());
    assert!(end.is_err(), "the refused stream does not commit");
    assert_eq!(t.state(), before, "live state untouched");
    assert_eq!(t.graphics_memory().bytes()[0], 0xdd);
    assert_eq!(t.graphics_memory().bytes()[0x3000], 0);
    t.reset().unwrap();
    why.unwrap_or_else(|| end.unwrap_err().to_string())
}

#[test]
fn a_corrupted_chunk_is_refused_through_both_protocols() {
    let (s, _d, _m) = saved();
    let first = 14 + "vgpu-64".len();
    let chunk = (GMEM_CHUNK_HEADER + GMEM_CHUNK) as usize + 48;
    let n = (VGPU_64.gmem_size / GMEM_CHUNK) as usize;
    let digest = "section GMEM (id 1) does not match its SHA-256 digest";
    for (what, at, want) in [
        // The offset is checked as it arrives, before the chunk's digest.
        (
            "first chunk's offset",
            first + 16 + 2,
            "chunk at offset 524288, expected the next at 0",
        ),
        ("first chunk's data", first + 16 + 8 + 0x3000, digest),
        ("a middle chunk's length", first + 100 * chunk + 9, digest),
        (
            "a middle chunk's data",
            first + 100 * chunk + 16 + 8 + 5,
            digest,
        ),
        ("the last chunk's digest", first + n * chunk - 1, digest),
    ] {
        let mut bad = s.clone();
        bad[at] ^= 0x08;
        for why in [refused(&bad, VGPU_64), refused_v1(&bad)] {
            assert!(why.contains(want), "{what}: {why}");
        }
    }
}

#[test]
fn resealed_chunks_missing_repeated_or_out_of_order_are_refused() {
    let (s, _d, _m) = saved();
    let secs = sections(&s);
    let n = secs.iter().filter(|x| x.0 == GMEM).count();
    let with = |f: &dyn Fn(&mut Vec<Section>)| {
        let mut v = secs.clone();
        f(&mut v);
        reseal(&v)
    };
    const C: u64 = GMEM_CHUNK;
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            with(&|v| v.swap(3, 4)),
            format!("chunk at offset {}, expected the next at {}", 4 * C, 3 * C),
        ),
        (
            with(&|v| {
                v.remove(10);
            }),
            format!(
                "chunk at offset {}, expected the next at {}",
                11 * C,
                10 * C
            ),
        ),
        (
            with(&|v| {
                let c = v[7].clone();
                v.insert(8, c);
            }),
            format!("chunk at offset {}, expected the next at {}", 7 * C, 8 * C),
        ),
        (
            with(&|v| {
                v.remove(n - 1);
            }),
            format!(
                "the chunks cover {} of the {} bytes",
                (n as u64 - 1) * C,
                n as u64 * C
            ),
        ),
        (
            with(&|v| v[n - 1].3.extend_from_slice(&[1; 16])),
            "ends beyond graphics memory".into(),
        ),
        (
            with(&|v| v[5].3.truncate(8)),
            "a chunk of 8 bytes has no data".into(),
        ),
        (
            with(&|v| v[0].1 = 3),
            "section GMEM: version 3.0 is not supported (this device reads 1.x and 2.x)".into(),
        ),
    ];
    for (stream, want) in cases {
        let why = refused(&stream, VGPU_64);
        assert!(why.contains(&want), "{want}: {why}");
        let why = refused_v1(&stream);
        assert!(why.contains(&want), "v1, {want}: {why}");
    }
}

/// A 1.x context: all of graphics memory in one `GMEM` section.
fn whole(secs: &[Section]) -> Vec<Section> {
    let mut mem = Vec::new();
    for (_, _, _, p) in secs.iter().filter(|x| x.0 == GMEM) {
        mem.extend_from_slice(&p[8..]);
    }
    let mut out = vec![(GMEM, SECTION_MAJOR, SECTION_MINOR, mem)];
    out.extend(secs.iter().filter(|x| x.0 != GMEM).cloned());
    out
}

#[test]
fn a_whole_gmem_section_of_version_1_still_loads_and_is_not_mixed_with_chunks() {
    let (s, d, m) = saved();
    let secs = sections(&s);
    let old = reseal(&whole(&secs));
    let mut t = device_on(VGPU_64, copy_ram(&m));
    load_v2(&mut t, &old, 1 << 20);
    assert_eq!(t.state(), d.state());
    assert!(t.graphics_memory().bytes() == d.graphics_memory().bytes());

    let mut mixed = whole(&secs);
    mixed.insert(1, secs[0].clone());
    let why = refused(&reseal(&mixed), VGPU_64);
    assert!(
        why.contains("section GMEM: version 2.0 after GMEM sections of version 1.x"),
        "{why}"
    );
    let mut pages = secs.clone();
    pages.insert(0, (SectionId::GmemPages as u32, 1, 1, vec![0; 4100]));
    let why = refused(&reseal(&pages), VGPU_64);
    assert!(why.contains("already carried GMEM_PAGES"), "{why}");
}

#[test]
fn a_staging_area_faulted_in_at_creation_loads_the_same_and_is_used_once() {
    let (s, _d, m) = saved();
    let mut cfg = VgpuConfig::new(VGPU_64, copy_ram(&m));
    cfg.prefault_staging = true;
    let mut t = Vgpu::new(cfg).unwrap();
    assert!(t.spare_staging.is_some(), "built with its staging");
    load_v2(&mut t, &s, 1 << 20);
    assert!(t.spare_staging.is_none(), "the first resume staged in it");
    assert_eq!(save_v2(&mut t, 1 << 20), s, "the same state as without it");
    // A second resume stages in fresh memory, to the same result.
    t.set_mig_state(MigState::Stop).unwrap();
    load_v2(&mut t, &s, 1 << 20);
    assert_eq!(save_v2(&mut t, 1 << 20), s);
}
