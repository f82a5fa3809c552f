//! Save and restore at many points; pre-copy; interrupts across migration.

use mdev_core::uapi::*;
use mdev_core::{MigState, MigrationDevice, VfioDevice};

use super::*;

/// Save `src` (stopping it), restore into a fresh device over a copy of its RAM, check the
/// target's state and graphics memory, and that the target re-saves identical bytes.
fn round_trip(
    src: &mut Vgpu,
    m: &GuestMemoryMmap<AtomicBitmap>,
) -> (Vgpu, GuestMemoryMmap<AtomicBitmap>) {
    let state = src.state();
    let stream = save_v2(src, 1 << 20);
    src.set_mig_state(MigState::Stop).unwrap();
    let tm = copy_ram(m);
    let mut dst = device_on(VGPU_64, tm.clone());
    assert_eq!(load_v2(&mut dst, &stream, 300_000), Ok(MigState::Stop));
    assert_eq!(dst.state(), state);
    assert!(dst.graphics_memory().bytes() == src.graphics_memory().bytes());
    for e in 0..MAPPED + 2 {
        assert_eq!(
            dst.gtt()
                .translation(e)
                .map(|t| matches!(t, shadow_pt::Translation::Ram { .. })),
            src.gtt()
                .translation(e)
                .map(|t| matches!(t, shadow_pt::Translation::Ram { .. }))
        );
    }
    let again = save_v2(&mut dst, 777_777);
    assert!(again == stream, "re-save differs");
    dst.set_mig_state(MigState::Stop).unwrap();
    (dst, tm)
}

#[test]
fn fresh_device_round_trips() {
    let m = mem();
    let mut d = device_on(VGPU_64, m.clone());
    round_trip(&mut d, &m);
}

#[test]
fn idle_and_mid_batch_contexts_resume_exactly() {
    let (mut d, m, _rec) = booted();
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0x1234, &[7; 5000])
        .unwrap();
    wr(&mut d, REG_SCRATCH0 + 8, 0x5555);
    wr(&mut d, REG_DSP_SURF, 0x4000);
    // Idle.
    let mut p = Prog::new();
    p.store(gaddr(DATA_ENTRY), 1);
    submit(&mut d, &m, &p);
    d.run(10);
    d.set_mig_state(MigState::Running).unwrap();
    round_trip(&mut d, &m);
    // Mid-batch: 3 of 20 stores done on the source.
    d.set_mig_state(MigState::Running).unwrap();
    let r = batch_of_stores(&m, 20);
    submit(&mut d, &m, &r);
    assert_eq!(d.run(4), 4);
    let (mut dst, tm) = round_trip(&mut d, &m);
    assert_eq!(read_u32(&tm, gpa(DATA_ENTRY) + 4 * 3), 0);
    dst.set_mig_state(MigState::Running).unwrap();
    let rec = wire_msix_sink(&mut dst);
    assert_eq!(dst.run(100), 18);
    assert!(dst.is_idle());
    for i in 0..20 {
        assert_eq!(read_u32(&tm, gpa(DATA_ENTRY) + 4 * i), i as u32 + 1);
    }
    let _ = rec;
}

/// Wire a recorder on MSI-X (the config space came with the device: the target's replay
/// is the VMM's job, so here the test enables MSI-X itself).
fn wire_msix_sink(d: &mut Vgpu) -> std::sync::Arc<Recorder> {
    wire_msix(d)
}

#[test]
fn pending_interrupt_survives_and_is_delivered_after_restore() {
    let (mut d, m, rec) = booted();
    let mut p = Prog::new();
    p.cmd(OP_USER_INTERRUPT, &[]);
    submit(&mut d, &m, &p);
    d.run(10);
    assert_eq!(rec.take(), vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0)]);
    assert_eq!(rd(&mut d, REG_IIR), INT_USER);
    // The guest has not acknowledged it when the source stops.
    let (mut dst, _tm) = round_trip(&mut d, &m);
    assert_eq!(rd(&mut dst, REG_IIR), INT_USER);
    let rec2 = wire_msix(&mut dst);
    assert!(rec2.take().is_empty(), "not before the device runs");
    dst.set_mig_state(MigState::Running).unwrap();
    assert_eq!(rec2.take(), vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0)]);
    // Once only.
    dst.run(10);
    assert!(rec2.take().is_empty());
    // An owed interrupt (raised with no sink) survives too.
    let m3 = mem();
    let mut s = device_on(VGPU_64, m3.clone());
    wr(&mut s, REG_IMR, 0);
    wr(&mut s, REG_IER, INT_ALL);
    s.latch(INT_FLIP_DONE);
    assert!(s.state().irq_owed);
    let (dst3, _) = round_trip(&mut s, &m3);
    assert!(dst3.state().irq_owed);
}

#[test]
fn precopy_rounds_then_stop_copy_reproduce_graphics_memory() {
    let (mut d, m, _rec) = booted();
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0, &[1; 3 * 4096])
        .unwrap();
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 40 << 20, &[2; 100])
        .unwrap();
    d.set_mig_state(MigState::PreCopy).unwrap();
    let info = d.precopy_info().unwrap();
    assert!(info.initial_bytes > 4 * 4100, "{info:?}");
    assert_eq!(info.dirty_bytes, 0);
    let mut stream = drain(&mut d, 5000);
    let info = d.precopy_info().unwrap();
    assert_eq!((info.initial_bytes, info.dirty_bytes), (0, 0));
    // The device keeps running and dirtying: engine draws, guest writes the aperture.
    for round in 0..3u32 {
        let mut p = Prog::new();
        p.cmd(
            OP_SET_RENDER_TARGET,
            &[0x10_0000 + round * 0x4000, 256, 64 | (64 << 16)],
        );
        p.cmd(OP_CLEAR, &[0x1111_1111 * (round + 1)]);
        submit(&mut d, &m, &p);
        assert_eq!(d.run(10), 2);
        d.region_write(
            VFIO_PCI_BAR2_REGION_INDEX,
            0x800 + u64::from(round),
            &[9; 3],
        )
        .unwrap();
        assert!(d.precopy_info().unwrap().dirty_bytes > 0);
        stream.extend(drain(&mut d, 64 << 10));
    }
    // A page dirtied after the last pre-copy read goes in stop-copy.
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 50 << 20, &[3; 10])
        .unwrap();
    let est = d.stop_copy_size().unwrap();
    d.set_mig_state(MigState::StopCopy).unwrap();
    let exact = d.stop_copy_size().unwrap();
    assert_eq!(est, exact, "nothing changed between estimate and stop");
    let rest = drain(&mut d, 1 << 20);
    assert_eq!(rest.len() as u64, exact);
    stream.extend(rest);
    let mut dst = device_on(VGPU_64, copy_ram(&m));
    assert_eq!(load_v2(&mut dst, &stream, 4096), Ok(MigState::Stop));
    assert!(dst.graphics_memory().bytes() == d.graphics_memory().bytes());
    assert_eq!(dst.state(), d.state());
    // The stream is much smaller than graphics memory: only non-zero and dirty pages.
    assert!(stream.len() < 1 << 20, "{}", stream.len());
}

#[test]
fn precopy_can_be_cancelled_and_restarted() {
    let (mut d, _m, _rec) = booted();
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0, &[1; 10])
        .unwrap();
    let first = d.set_mig_state(MigState::PreCopy).unwrap().stream.unwrap();
    let _ = drain(&mut d, 100);
    d.set_mig_state(MigState::Running).unwrap();
    // vfio.h: leaving PRE_COPY ends the session; its data_fd then fails (ENODEV).
    assert_eq!(
        d.read_data(first, &mut [0; 4]),
        Err(mdev_core::MigrationError::StaleStream { stream: first.id() })
    );
    assert!(d.read_data(stale_stream(), &mut [0; 4]).is_err());
    assert!(d.precopy_info().is_err());
    d.set_mig_state(MigState::PreCopy).unwrap();
    let s = drain(&mut d, 1 << 20);
    // The new stream starts with a fresh header and a full first pass.
    assert_eq!(&s[..8], b"VGPUCTX\0");
    assert!(s.len() > 4100);
}

/// A named change applied to a device.
type Change = Box<dyn Fn(&mut Vgpu)>;

#[test]
fn every_kind_of_change_changes_the_state_and_the_stream() {
    let m = mem();
    let base_dev = device_on(VGPU_64, m.clone());
    let base = base_dev.state();
    let changes: Vec<(&str, Change)> = vec![
        ("scratch", Box::new(|d| wr(d, REG_SCRATCH0 + 60, 1))),
        ("ring", Box::new(ring_on)),
        ("irq mask", Box::new(|d| wr(d, REG_IMR, 0))),
        (
            "irq owed",
            Box::new(|d| {
                wr(d, REG_IMR, 0);
                wr(d, REG_IER, INT_USER);
                d.latch(INT_USER);
            }),
        ),
        ("display", Box::new(|d| wr(d, REG_DSP_STRIDE, 256))),
        ("gtt", Box::new(|d| gtt_wr(d, 9, gpa(0) | GTT_PRESENT))),
    ];
    for (what, change) in changes {
        let mut d = device_on(VGPU_64, m.clone());
        change(&mut d);
        assert_ne!(d.state(), base, "{what}");
        let (t, _) = round_trip(&mut d, &m);
        assert_eq!(t.state(), d.state(), "{what}");
    }
    // The engine's own state (a render target set) changes the state too.
    let (mut d, m2, _rec) = booted();
    let before = d.state();
    let mut p = Prog::new();
    p.cmd(OP_SET_RENDER_TARGET, &[0, 256, 64 | (64 << 16)]);
    submit(&mut d, &m2, &p);
    d.run(1);
    assert_ne!(d.state().engine, before.engine);
    round_trip(&mut d, &m2);
}

#[test]
fn engine_status_reads_live() {
    let (mut d, m, _rec) = booted();
    let mut p = Prog::new();
    p.cmd(OP_NOOP, &[]);
    submit(&mut d, &m, &p);
    assert_eq!(rd(&mut d, REG_ENGINE_STATUS) & ENGINE_BUSY, ENGINE_BUSY);
    d.run(10);
    assert_eq!(rd(&mut d, REG_ENGINE_STATUS) & ENGINE_BUSY, 0);
}

/// include/uapi/linux/vfio.h (data_fd, `VFIO_MIG_GET_PRECOPY_INFO`): in PRE_COPY a read
/// with nothing available fails with ENOMSG, and more data may come later; a 0-length read
/// is the end of the stream only in STOP_COPY.
#[test]
fn precopy_with_nothing_available_is_enomsg_and_only_stop_copy_ends_with_zero() {
    let (mut d, _m, _rec) = booted();
    d.set_mig_state(MigState::PreCopy).unwrap();
    let _ = drain(&mut d, 1 << 20);
    let mut buf = [0u8; 64];
    assert_eq!(
        d.read_data(open_stream(&d), &mut buf),
        Err(mdev_core::MigrationError::NoDataNow {
            state: MigState::PreCopy
        })
    );
    // New dirt makes data available again in the same session.
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0, &[5; 16])
        .unwrap();
    assert!(d.read_data(open_stream(&d), &mut buf).unwrap() > 0);
    let _ = drain(&mut d, 1 << 20);
    d.set_mig_state(MigState::StopCopy).unwrap();
    let _ = drain(&mut d, 1 << 20);
    assert_eq!(
        d.read_data(open_stream(&d), &mut buf),
        Ok(0),
        "the end of the stream"
    );
}
