//! The `CONFIG` section: the configuration space (pending bits included) travels with the
//! device context, is refused when tampered with, and interrupts pending in it are
//! delivered on the target as on the source.

use mdev_core::uapi::*;
use mdev_core::{MigState, MigrationDevice, VfioDevice};
use pci_config_replay::caps::msix;
use pci_config_replay::regs::COMMAND;

use super::stream::{fixed, load_v1, refused, save_v1, stream_of, stream_of_minor, Sec};
use super::*;
use crate::device::migration::{SectionId, SECTION_MINOR};
use crate::device::VgpuState;

const MSIX: (u32, u32) = (VFIO_PCI_MSIX_IRQ_INDEX, 0);
const VECTOR0_CTRL: u64 = MSIX_TABLE_OFFSET + msix::ENTRY_VECTOR_CONTROL as u64;

fn mask_vector0(d: &mut Vgpu, masked: bool) {
    d.region_write(
        VFIO_PCI_BAR0_REGION_INDEX,
        VECTOR0_CTRL,
        &u32::from(masked).to_le_bytes(),
    )
    .unwrap();
}

/// A booted device whose vector 0 is masked and pending: the guest masked it, then the
/// engine raised an interrupt.
fn source_with_masked_pending() -> (Vgpu, GuestMemoryMmap<AtomicBitmap>, Arc<Recorder>) {
    let (mut d, m, rec) = booted();
    mask_vector0(&mut d, true);
    d.latch(INT_USER);
    assert!(rec.take().is_empty(), "masked: not signalled");
    assert!(d.config().msix_pending(0));
    (d, m, rec)
}

/// Loads `stream` into a fresh device over a copy of `m` through v2, in odd-sized writes.
fn load_fresh(stream: &[u8], m: &GuestMemoryMmap<AtomicBitmap>) -> Vgpu {
    let mut t = device_on(VGPU_64, copy_ram(m));
    assert_eq!(load_v2(&mut t, stream, 5000), Ok(MigState::Stop));
    t
}

#[test]
fn masked_pending_vector_round_trips_and_fires_when_unmasked() {
    let (mut src, m, _rec) = source_with_masked_pending();
    let state = src.state();
    assert!(state.config.msix_pending(0));
    let stream = save_v2(&mut src, 1 << 20);
    let mut dst = load_fresh(&stream, &m);
    assert_eq!(dst.state(), state, "registers, GTT, engine and config");
    assert!(dst.config().msix_pending(0));
    assert_eq!(dst.config().state(), src.config().state());
    // The target re-saves the same bytes.
    let again = save_v2(&mut dst, 333_333);
    assert!(again == stream, "re-save differs");
    dst.set_mig_state(MigState::Stop).unwrap();

    // Still masked once the target runs: it stays pending, nothing is signalled.
    let rec = Arc::new(Recorder::default());
    dst.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, Some(rec.clone()))
        .unwrap();
    dst.set_mig_state(MigState::Running).unwrap();
    dst.run(10);
    assert!(rec.take().is_empty());
    assert!(dst.config().msix_pending(0));
    // The guest unmasks it: it fires, once.
    mask_vector0(&mut dst, false);
    assert_eq!(rec.take(), vec![MSIX]);
    assert!(!dst.config().msix_pending(0));
    dst.run(10);
    assert!(rec.take().is_empty());
}

#[test]
fn the_v1_region_carries_the_same_config_section() {
    let (mut a, m, _ra) = source_with_masked_pending();
    let (mut b, _mb, _rb) = source_with_masked_pending();
    let v2 = save_v2(&mut a, 1 << 20);
    let v1 = save_v1(&mut b);
    assert!(v1 == v2, "both paths share the section writer");
    let mut t = device_on(VGPU_64, copy_ram(&m));
    load_v1(&mut t, &v1, 1 << 20);
    assert_eq!(t.mig_state(), MigState::Stop);
    assert!(t.config().msix_pending(0));
    assert_eq!(t.state(), b.state());
}

#[test]
fn a_pending_deliverable_vector_is_delivered_after_running() {
    // Pending behind the mask, then unmasked while Bus Master was off: still pending.
    let (mut src, m, rec) = source_with_masked_pending();
    cfg_wr16(&mut src, COMMAND as u64, 0x0002);
    mask_vector0(&mut src, false);
    assert!(src.config().msix_pending(0));
    assert!(rec.take().is_empty());
    // Saved with Bus Master back on (as if it came on just before the stop): pending and
    // deliverable.
    let mut st = src.state();
    st.config.config[COMMAND] |= 0x4;
    let mut dst = device_on(VGPU_64, copy_ram(&m));
    assert_eq!(
        load_v2(&mut dst, &stream_of(&fixed(&st)), 4096),
        Ok(MigState::Stop)
    );
    assert!(!dst.config().msix_pending(0), "rebuilding delivered it");
    assert!(dst.state().irq_owed, "the device owes it");
    let rec = Arc::new(Recorder::default());
    dst.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, Some(rec.clone()))
        .unwrap();
    assert!(rec.take().is_empty(), "not before RUNNING");
    dst.set_mig_state(MigState::Running).unwrap();
    assert_eq!(rec.take(), vec![MSIX], "once, after RUNNING");
    dst.run(10);
    assert!(rec.take().is_empty());
}

/// The fixed sections of `st` with the `CONFIG` payload changed by `f`.
fn with_config(st: &VgpuState, f: impl Fn(&mut Vec<u8>)) -> Vec<Sec> {
    let mut s = fixed(st);
    let config = s
        .iter_mut()
        .find(|x| x.0 == SectionId::Config as u32)
        .unwrap();
    f(&mut config.2);
    s
}

#[test]
fn tampered_config_sections_are_refused_and_nothing_is_applied() {
    let (src, _m, _rec) = source_with_masked_pending();
    let st = src.state();
    let mut cases: Vec<(Vec<Sec>, &str)> = Vec::new();
    // A flipped byte under a valid section digest: the state's own CRC catches it.
    cases.push((
        with_config(&st, |p| p[0x100] ^= 1),
        "section CONFIG: configuration space state: checksum",
    ));
    // Another device ID, CRC recomputed: this device's params could not produce it.
    let mut other = st.clone();
    other.config.config[2] ^= 0x01;
    cases.push((
        fixed(&other),
        "section CONFIG: read-only device ID at 0x002 differs",
    ));
    // Another aperture size.
    let mut other = st.clone();
    other.config.bar_sizes[2] = 512 << 20;
    cases.push((fixed(&other), "section CONFIG: BAR2 size differs"));
    // Cut short, and over its cap.
    cases.push((
        with_config(&st, |p| p.truncate(p.len() - 10)),
        "section CONFIG: configuration space state: state truncated",
    ));
    cases.push((
        with_config(&st, |p| p.clear()),
        "section CONFIG is missing or empty",
    ));
    cases.push((
        with_config(&st, |p| p.extend([0; 8])),
        "section CONFIG (id 8) declares",
    ));
    // Not a config state at all.
    cases.push((
        with_config(&st, |p| p[0] = b'X'),
        "section CONFIG: configuration space state: bad magic",
    ));
    // Missing from a current context.
    let mut s = fixed(&st);
    s.retain(|x| x.0 != SectionId::Config as u32);
    cases.push((s, "section CONFIG is missing"));
    for (sections, want) in cases {
        let why = refused(&stream_of(&sections), VGPU_64);
        assert!(why.contains(want), "want {want:?}, got {why:?}");
    }
}

#[test]
fn contexts_from_before_the_config_section_are_refused_by_version() {
    let st = device().state();
    let mut s = fixed(&st);
    s.retain(|x| x.0 != SectionId::Config as u32);
    assert_eq!(SECTION_MINOR, 1);
    let why = refused(&stream_of_minor(&s, 0), VGPU_64);
    assert!(
        why.contains("section CONFIG is missing: the context was written with section version 1.0"),
        "{why}"
    );
    // The same context at the current minor names only the missing section.
    let why = refused(&stream_of(&s), VGPU_64);
    assert!(why.ends_with("section CONFIG is missing"), "{why}");
}

#[test]
fn inspect_shows_the_config_section() {
    let (mut src, _m, _rec) = source_with_masked_pending();
    let stream = save_v2(&mut src, 1 << 20);
    let summary = crate::inspect::summarize(&stream).unwrap();
    let get = |k: &str| {
        summary
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {summary:?}"))
    };
    let config = get("config space");
    assert!(config.starts_with("8086:"), "{config}");
    assert!(config.contains("command 0x0006"), "{config}");
    let irqs = get("config interrupts");
    assert!(irqs.contains("MSI-X enabled"), "{irqs}");
    assert!(irqs.contains("vector 0 masked PENDING"), "{irqs}");
    assert_eq!(
        crate::inspect::section_name(SectionId::Config as u32),
        "CONFIG"
    );
}
