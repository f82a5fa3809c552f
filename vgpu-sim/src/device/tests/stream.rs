//! The stream through the v1 region, and streams that must be refused.

use mdev_core::uapi::*;
use mdev_core::{MigState, MigrationDevice, VfioDevice};
use state_region::format::{ContextEncoder, ContextHeader};
use state_region::DATA_OFFSET;

use super::*;
use crate::device::migration::{SectionId, SECTION_MAJOR, SECTION_MINOR};
use crate::device::VgpuState;
use crate::types::VGPU_512;

/// A hand-built section: id, major version, payload.
pub(super) type Sec = (u32, u16, Vec<u8>);

const MIG: u32 = crate::device::MIGRATION_REGION_INDEX;

pub(super) fn v1_set(d: &mut Vgpu, state: u32) {
    d.region_write(MIG, 0, &state.to_le_bytes()).unwrap();
}

pub(super) fn v1_u64(d: &mut Vgpu, off: u64) -> u64 {
    let mut b = [0u8; 8];
    d.region_read(MIG, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Save through the v1 region as a VMM would: SAVING, then pending/offset/size/data.
pub(super) fn save_v1(d: &mut Vgpu) -> Vec<u8> {
    v1_set(d, VFIO_DEVICE_STATE_V1_SAVING);
    let mut out = Vec::new();
    while v1_u64(d, 8) != 0 {
        let off = v1_u64(d, 16);
        let size = v1_u64(d, 24) as usize;
        let mut chunk = vec![0u8; size];
        d.region_read(MIG, off, &mut chunk).unwrap();
        out.extend(chunk);
    }
    out
}

pub(super) fn load_v1(d: &mut Vgpu, stream: &[u8], chunk: usize) {
    v1_set(d, VFIO_DEVICE_STATE_V1_RESUMING);
    for c in stream.chunks(chunk) {
        let off = v1_u64(d, 16);
        assert_eq!(off, DATA_OFFSET);
        d.region_write(MIG, off, c).unwrap();
        d.region_write(MIG, 24, &(c.len() as u64).to_le_bytes())
            .unwrap();
    }
    v1_set(d, 0);
}

pub(super) fn prepared() -> (Vgpu, GuestMemoryMmap<AtomicBitmap>) {
    let (mut d, m, _rec) = booted();
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0x3000, &[5; 9000])
        .unwrap();
    let r = batch_of_stores(&m, 8);
    submit(&mut d, &m, &r);
    d.run(3);
    (d, m)
}

#[test]
fn v1_region_and_v2_give_the_same_stream() {
    let (mut a, _ma) = prepared();
    let (mut b, mb) = prepared();
    assert_eq!(a.state(), b.state());
    let v2 = save_v2(&mut a, 1 << 20);
    let v1 = save_v1(&mut b);
    assert!(v1 == v2);
    let mut c = device_on(VGPU_64, copy_ram(&mb));
    load_v1(&mut c, &v1, 1 << 20);
    assert_eq!(c.mig_state(), MigState::Stop);
    assert_eq!(c.state(), b.state());
    assert!(c.graphics_memory().bytes() == b.graphics_memory().bytes());
}

/// A target with some live state of its own, to check a refused stream leaves it alone.
fn target() -> Vgpu {
    let mut t = device();
    wr(&mut t, REG_SCRATCH0, 0x1234);
    t.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0, &[0xee; 64])
        .unwrap();
    t.set_mig_state(MigState::Stop).unwrap();
    t
}

/// Load `stream` into a fresh target, expecting refusal; returns the reason.
pub(super) fn refused(stream: &[u8], ty: VgpuType) -> String {
    let mut t = if ty == VGPU_64 {
        target()
    } else {
        device_on(ty, mem())
    };
    let before = t.state();
    let s = t.set_mig_state(MigState::Resuming).unwrap().stream.unwrap();
    let mut first = None;
    for c in stream.chunks(1 << 20) {
        if let Err(e) = t.write_data(s, c) {
            first = Some(e.to_string());
            break;
        }
    }
    let arc = t.set_mig_state(MigState::Stop).unwrap_err().to_string();
    assert_eq!(t.mig_state(), MigState::Error);
    assert_eq!(t.state(), before, "live state untouched");
    if ty == VGPU_64 {
        assert_eq!(t.graphics_memory().bytes()[0], 0xee);
        assert_eq!(t.graphics_memory().bytes()[64], 0);
    }
    t.reset().unwrap();
    assert_eq!(t.mig_state(), MigState::Running);
    first.unwrap_or(arc)
}

#[test]
fn corrupted_truncated_and_wrong_type_streams_are_refused() {
    let (mut d, _m) = prepared();
    let s = save_v2(&mut d, 1 << 20);
    let gmem_section = 14 + "vgpu-64".len();
    let cases: Vec<(&str, usize)> = vec![
        ("bad magic", 3),
        ("type name", 16),
        ("section header", gmem_section + 2),
        ("graphics memory payload", gmem_section + 16 + 0x3000),
        ("graphics memory digest", gmem_section + 16 + (64 << 20) + 5),
        ("register section", s.len() - 200),
        ("end digest", s.len() - 1),
    ];
    for (what, at) in cases {
        let mut bad = s.clone();
        bad[at] ^= 0x40;
        let why = refused(&bad, VGPU_64);
        assert!(!why.is_empty(), "{what}");
    }
    for cut in [s.len() - 1, s.len() - 48, s.len() / 2, 10, 0] {
        let why = refused(&s[..cut], VGPU_64);
        assert!(
            why.contains("ends") || why.contains("truncated"),
            "{cut}: {why}"
        );
    }
    let why = refused(&s, VGPU_512);
    assert!(why.contains("vgpu-64"), "{why}");
    let mut long = s.clone();
    long.push(0);
    let why = refused(&long, VGPU_64);
    assert!(why.contains("after the end section"), "{why}");
}

/// A stream of the given sections (id, major, payload), without graphics memory.
pub(super) fn stream_of(sections: &[Sec]) -> Vec<u8> {
    stream_of_minor(sections, SECTION_MINOR)
}

/// [`stream_of`] with every section at minor version `minor`.
pub(super) fn stream_of_minor(sections: &[Sec], minor: u16) -> Vec<u8> {
    let (mut enc, mut out) = ContextEncoder::new(&ContextHeader::new("vgpu-64").unwrap());
    for (id, major, payload) in sections {
        out.extend(enc.section(*id, *major, minor, payload).unwrap());
    }
    out.extend(enc.end());
    out
}

pub(super) fn fixed(st: &VgpuState) -> Vec<Sec> {
    super::super::migration::sections_for_test(st)
        .into_iter()
        .map(|(id, p)| (id as u32, SECTION_MAJOR, p))
        .collect()
}

#[test]
fn hand_built_streams_load_or_are_refused_by_section_and_field() {
    let base = device().state();
    // The fixed sections alone make a valid context (graphics memory all zero).
    let mut t = device();
    assert_eq!(
        load_v2(&mut t, &stream_of(&fixed(&base)), 999),
        Ok(MigState::Stop)
    );
    assert_eq!(t.state(), base);

    let with = |f: &dyn Fn(&mut VgpuState)| {
        let mut st = base.clone();
        f(&mut st);
        fixed(&st)
    };
    let mut cases: Vec<(Vec<Sec>, &str)> = Vec::new();
    // Ring enabled outside the GTT range.
    cases.push((
        with(&|st| st.regs.set(REG_RING_CTL, RING_CTL_ENABLE)),
        "section MMIO: enabled ring",
    ));
    cases.push((
        with(&|st| st.regs.set(REG_DSP_SURF, 64 << 20)),
        "section DISPLAY: DSP_SURF",
    ));
    // Engine state that does not validate (a batch outside the GTT range).
    cases.push((
        with(&|st| {
            st.engine.in_batch = true;
            st.engine.batch_start = 0x1000;
        }),
        "section ENGINE: engine state",
    ));
    // Bits outside a register's valid mask.
    let mut s = fixed(&base);
    s[0].2[0..4].copy_from_slice(&0x123u32.to_le_bytes()); // RING_START_LO not page aligned
    cases.push((s, "section MMIO: register RING_START_LO"));
    let mut s = fixed(&base);
    let irq = s.iter_mut().find(|x| x.0 == SectionId::Irq as u32).unwrap();
    let n = irq.2.len();
    irq.2[n - 4..].copy_from_slice(&2u32.to_le_bytes());
    cases.push((s, "section IRQ: MSI owed flag"));
    let mut s = fixed(&base);
    s.remove(1);
    cases.push((s, "section GTT is missing"));
    let mut s = fixed(&base);
    s.push(s[0].clone());
    cases.push((s, "section MMIO appears twice"));
    let mut s = fixed(&base);
    s[0].1 = 2;
    cases.push((s, "section MMIO: version 2.1"));
    let mut s = fixed(&base);
    s[0].2.push(0);
    cases.push((s, "section MMIO (id 3) declares 77"));
    let mut s = fixed(&base);
    s.push((99, 1, vec![]));
    cases.push((s, "unknown section id 99"));
    let mut s = fixed(&base);
    s.insert(0, (SectionId::Gmem as u32, 1, vec![0; 4096]));
    cases.push((s, "section GMEM: length 4096"));
    let mut s = fixed(&base);
    let mut rec = 20_000u32.to_le_bytes().to_vec();
    rec.extend([0u8; 4096]);
    s.insert(0, (SectionId::GmemPages as u32, 1, rec));
    cases.push((s, "section GMEM_PAGES: page index 20000"));
    let mut s = fixed(&base);
    s.insert(0, (SectionId::GmemPages as u32, 1, vec![0; 100]));
    cases.push((s, "whole number"));
    for (sections, want) in cases {
        let why = refused(&stream_of(&sections), VGPU_64);
        assert!(why.contains(want), "want {want:?}, got {why:?}");
    }
}

#[test]
fn streams_are_read_in_any_chunk_sizes() {
    let (mut d, _m) = prepared();
    let a = save_v2(&mut d, 1 << 20);
    d.set_mig_state(MigState::Stop).unwrap();
    let b = save_v2(&mut d, 4093);
    assert!(a == b);
    d.set_mig_state(MigState::Stop).unwrap();
    let mut t = device();
    assert_eq!(load_v2(&mut t, &a, 7), Ok(MigState::Stop));
    assert_eq!(t.state(), d.state());
}

#[test]
fn data_calls_outside_their_states_are_refused() {
    let mut d = device();
    assert!(d.read_data(stale_stream(), &mut [0; 8]).is_err());
    assert!(d.write_data(stale_stream(), &[0; 8]).is_err());
    assert!(d.precopy_info().is_err());
    assert!(d.stop_copy_size().unwrap() > 64 << 20);
    let s = d.set_mig_state(MigState::StopCopy).unwrap().stream.unwrap();
    assert!(d.write_data(s, &[0; 8]).is_err());
    assert!(d.set_mig_state(MigState::PreCopy).is_err());
    assert_eq!(d.mig_state(), MigState::StopCopy);
}

/// Read chunks through the v1 region until `pending_bytes` is 0.
fn v1_drain(d: &mut Vgpu, out: &mut Vec<u8>) {
    while v1_u64(d, 8) != 0 {
        let off = v1_u64(d, 16);
        let size = v1_u64(d, 24) as usize;
        let mut chunk = vec![0u8; size];
        d.region_read(MIG, off, &mut chunk).unwrap();
        out.extend(chunk);
    }
}

#[test]
fn v1_precopy_then_stop_and_copy() {
    let (mut d, m) = prepared();
    v1_set(
        &mut d,
        VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RUNNING,
    );
    assert_eq!(d.mig_state(), MigState::PreCopy);
    let mut stream = Vec::new();
    v1_drain(&mut d, &mut stream);
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0x9000, &[4; 100])
        .unwrap();
    d.run(100);
    v1_drain(&mut d, &mut stream);
    v1_set(&mut d, VFIO_DEVICE_STATE_V1_SAVING);
    assert_eq!(d.mig_state(), MigState::StopCopy);
    v1_drain(&mut d, &mut stream);
    let mut t = device_on(VGPU_64, copy_ram(&m));
    load_v1(&mut t, &stream, 1 << 20);
    assert_eq!(t.mig_state(), MigState::Stop);
    assert_eq!(t.state(), d.state());
    assert!(t.graphics_memory().bytes() == d.graphics_memory().bytes());
}

#[test]
fn the_pipeline3d_section_is_required_checked_and_restored() {
    let base = device().state();
    let mut st = base.clone();
    st.pipeline3d.viewport.width = 100;
    st.pipeline3d.cull = crate::cmd::CULL_FRONT;
    st.pipeline3d.mvp[3] = 7;
    st.pipeline3d.depth_buffer = crate::engine::Surface::from_dwords(0x1000, 64, 16 | (4 << 16));
    let mut t = device();
    assert_eq!(
        load_v2(&mut t, &stream_of(&fixed(&st)), 999),
        Ok(MigState::Stop)
    );
    assert_eq!(
        t.state().pipeline3d,
        st.pipeline3d,
        "the 3D state comes back"
    );

    let p3d = SectionId::Pipeline3d as u32;
    let mut cases: Vec<(Vec<Sec>, &str)> = Vec::new();
    let mut bad = base.clone();
    bad.pipeline3d.cull = 3;
    cases.push((
        fixed(&bad),
        "section PIPELINE3D: 3D pipeline state: cull mode",
    ));
    let mut bad = base.clone();
    bad.pipeline3d.depth_buffer = crate::engine::Surface::from_dwords(64 << 20, 64, 16 | (4 << 16));
    cases.push((fixed(&bad), "section PIPELINE3D"));
    let mut s = fixed(&base);
    s.retain(|x| x.0 != p3d);
    cases.push((s, "section PIPELINE3D is missing"));
    let mut s = fixed(&base);
    if let Some(x) = s.iter_mut().find(|x| x.0 == p3d) {
        x.1 = 2;
    }
    cases.push((s, "section PIPELINE3D: version 2"));
    let mut s = fixed(&base);
    if let Some(x) = s.iter_mut().find(|x| x.0 == p3d) {
        x.2[0] = b'X';
    }
    cases.push((s, "section PIPELINE3D: bad magic"));
    for (sections, want) in cases {
        let why = refused(&stream_of(&sections), VGPU_64);
        assert!(why.contains(want), "want {want:?}, got {why:?}");
    }
}

#[test]
fn a_saved_stream_carries_pipeline3d_at_its_own_version() {
    let (mut d, _m) = prepared();
    let bytes = save_v2(&mut d, 1 << 20);
    let mut p = state_region::format::ContextParser::new(crate::inspect::context_limits(None));
    struct Versions(Vec<(u32, u16, u16)>);
    impl state_region::format::SectionSink for Versions {
        fn begin(&mut self, h: &state_region::format::SectionHeader) -> Result<(), String> {
            self.0.push((h.id, h.major, h.minor));
            Ok(())
        }
        fn data(
            &mut self,
            _: &state_region::format::SectionHeader,
            _: u64,
            _: &[u8],
        ) -> Result<(), String> {
            Ok(())
        }
        fn end(&mut self, _: &state_region::format::SectionHeader) -> Result<(), String> {
            Ok(())
        }
    }
    let mut v = Versions(Vec::new());
    p.feed(&bytes, &mut v).unwrap();
    let (major, minor) = SectionId::Pipeline3d.version();
    assert!(
        v.0.contains(&(SectionId::Pipeline3d as u32, major, minor)),
        "{:?}",
        v.0
    );
    assert!(v
        .0
        .contains(&(SectionId::Engine as u32, SECTION_MAJOR, SECTION_MINOR)));
}
