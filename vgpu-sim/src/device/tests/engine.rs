//! The engine driven through the device: ring, batch, DMA, interrupts, run gating.

use mdev_core::uapi::*;
use std::sync::Arc;
use std::time::Duration;

use mdev_core::{DmaRange, MigState, MigrationDevice, VfioDevice};

use crate::device::throttle::ManualClock;

use super::*;

#[test]
fn ring_program_writes_guest_ram_and_interrupts() {
    let (mut d, m, rec) = booted();
    let mut p = Prog::new();
    p.store(gaddr(DATA_ENTRY), 0xcafe);
    let seq = gaddr(DATA_ENTRY) + 64;
    p.cmd(OP_PIPE_CONTROL, &[seq as u32, (seq >> 32) as u32, 7]);
    p.cmd(OP_USER_INTERRUPT, &[]);
    submit(&mut d, &m, &p);
    assert!(!d.is_idle());
    assert_eq!(d.run(100), 3);
    assert!(d.is_idle());
    assert_eq!(read_u32(&m, gpa(DATA_ENTRY)), 0xcafe);
    assert_eq!(read_u32(&m, gpa(DATA_ENTRY) + 64), 7);
    assert_eq!(rd(&mut d, REG_SEQNO), 7);
    assert_eq!(rd(&mut d, REG_RING_HEAD), p.len());
    assert_eq!(rd(&mut d, REG_IIR), INT_PIPE_NOTIFY | INT_USER);
    assert_eq!(rec.take(), vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0)]);
}

#[test]
fn dma_dirty_log_sees_engine_writes() {
    let (mut d, m, _rec) = booted();
    let log = d.dma_dirty_log().unwrap();
    log.start(
        &[DmaRange {
            iova: 0,
            length: RAM as u64,
        }],
        4096,
    )
    .unwrap();
    let mut p = Prog::new();
    p.store(gaddr(DATA_ENTRY) + 8, 1);
    p.store(gaddr(DATA_ENTRY + 1) + 8, 2);
    submit(&mut d, &m, &p);
    d.run(10);
    let log = d.dma_dirty_log().unwrap();
    let bm = log.report(0, RAM as u64, 4096).unwrap();
    assert_eq!(
        bm.iter_dirty().collect::<Vec<_>>(),
        vec![gpa(DATA_ENTRY), gpa(DATA_ENTRY + 1)]
    );
}

#[test]
fn unmapped_dma_faults_with_gtt_error() {
    let (mut d, m, _rec) = booted();
    gtt_wr(&mut d, DATA_ENTRY, 0);
    let mut p = Prog::new();
    p.store(gaddr(DATA_ENTRY), 1);
    submit(&mut d, &m, &p);
    assert_eq!(d.run(10), 0);
    assert!(d.is_halted());
    assert_eq!(rd(&mut d, REG_IIR) & INT_GTT_ERROR, INT_GTT_ERROR);
    assert_eq!(rd(&mut d, REG_ERROR_STATUS), INT_GTT_ERROR);
    assert_eq!(rd(&mut d, REG_ERROR_ADDR_LO), gaddr(DATA_ENTRY) as u32);
}

#[test]
fn runs_only_while_running_and_stops_between_commands() {
    let (mut d, m, _rec) = booted();
    let r = batch_of_stores(&m, 10);
    submit(&mut d, &m, &r);
    assert_eq!(d.run(4), 4, "BATCH_START and 3 stores");
    assert_eq!(
        rd(&mut d, REG_ENGINE_STATUS) & ENGINE_IN_BATCH,
        ENGINE_IN_BATCH
    );
    d.set_mig_state(MigState::RunningP2p).unwrap();
    assert_eq!(d.run(1), 1, "RUNNING_P2P still runs");
    d.set_mig_state(MigState::Stop).unwrap();
    assert_eq!(d.run(100), 0);
    assert_eq!(
        read_u32(&m, gpa(DATA_ENTRY) + 4 * 4),
        0,
        "stopped mid-batch"
    );
    d.set_mig_state(MigState::Running).unwrap();
    assert_eq!(d.run(100), 7);
    assert_eq!(read_u32(&m, gpa(DATA_ENTRY) + 4 * 9), 10);
}

#[test]
fn throttle_scales_the_budget() {
    // The throttle reads a clock the test controls: every read moves it 1 ms on, so each
    // engine run costs 1 ms of busy time whatever the machine's speed.
    let clock = Arc::new(ManualClock::default());
    let (mut d, m, _rec) = booted_with_clock(clock.clone());
    let r = batch_of_stores(&m, 200);
    submit(&mut d, &m, &r);
    d.set_throttle(75);
    assert_eq!(d.throttle(), 75);
    d.set_throttle(200);
    assert_eq!(d.throttle(), 99, "clamped");
    clock.advance(Duration::from_millis(2));
    clock.step_each_read(Duration::from_millis(1));
    // Throttled to 1%, the engine may run once in a fresh window, then must wait: 1 ms busy
    // is more than 1% of anything shorter than the 50 ms window.
    let first = d.run(10);
    assert_eq!(first, 10, "a fresh window lets the engine run");
    let mut more = 0;
    for _ in 0..10 {
        more += d.run(10);
    }
    assert_eq!(more, 0, "the engine used its share and waits");
    // A new window lets it run again.
    clock.advance(Duration::from_millis(60));
    assert_eq!(d.run(10), 10, "the next window runs");
    d.set_throttle(0);
    assert_eq!(d.run(10), 10);
    for _ in 0..10 {
        assert_eq!(d.run(10), 10, "unthrottled, the engine always runs");
    }
}

#[test]
fn engine_draws_into_graphics_memory_and_marks_it_dirty() {
    let (mut d, m, _rec) = booted();
    let mut p = Prog::new();
    p.cmd(OP_SET_RENDER_TARGET, &[0x2000, 64 * 4, 64 | (16 << 16)]);
    p.cmd(OP_CLEAR, &[0xff00_ff00]);
    p.cmd(OP_FLIP, &[0x2000]);
    submit(&mut d, &m, &p);
    assert_eq!(d.run(10), 3);
    let g = d.graphics_memory();
    assert_eq!(&g.bytes()[0x2000..0x2004], &0xff00_ff00u32.to_le_bytes());
    assert!(g.dirty().test(2) && !g.dirty().test(3));
    assert_eq!(rd(&mut d, REG_DSP_SURF), 0x2000);
    assert_eq!(rd(&mut d, REG_FLIP_COUNT), 1);
    let _ = d.region_info(VFIO_PCI_BAR2_REGION_INDEX).unwrap();
}

// The hang check (i915's hangcheck, counted in commands rather than time): a batch that
// runs past MAX_BATCH_BYTES without its BATCH_END halts the engine with INT_ENGINE_HANG; the
// device stays migratable and a migrated device keeps the hang.
#[test]
fn a_batch_that_never_ends_is_stopped_by_the_hang_check_and_migrates_hung() {
    use crate::cmd::OP_BATCH_START;
    use crate::regs::{INT_ENGINE_HANG, MAX_BATCH_BYTES, REG_ACTHD_LO, REG_BB_OFFSET};
    let (mut d, m, rec) = booted();
    // One zeroed page behind 4097 GTT entries: a batch there is NOOP after NOOP over the
    // same page, with no end (a batch that loops on itself).
    let zero_page = gpa(MAPPED - 1);
    let first = 1024;
    for e in first..first + u64::from(MAX_BATCH_BYTES) / PAGE_SIZE + 1 {
        gtt_wr(&mut d, e, zero_page | GTT_PRESENT);
    }
    let mut p = Prog::new();
    let start = gaddr(first);
    p.cmd(OP_BATCH_START, &[start as u32, (start >> 32) as u32]);
    submit(&mut d, &m, &p);
    rec.take();
    let limit = (MAX_BATCH_BYTES / 4) as usize;
    let done = d.run(limit + 10);
    assert_eq!(
        done,
        1 + limit,
        "BATCH_START and every NOOP up to the limit"
    );
    assert!(d.is_halted());
    assert_eq!(rd(&mut d, REG_ERROR_STATUS), INT_ENGINE_HANG);
    assert_eq!(rd(&mut d, REG_IIR) & INT_ENGINE_HANG, INT_ENGINE_HANG);
    assert_eq!(rd(&mut d, REG_BB_OFFSET), MAX_BATCH_BYTES);
    assert!(!rec.take().is_empty(), "the error interrupt was raised");
    assert_eq!(d.run(10), 0, "halted until reset");
    // Migrate the hung device: the target is hung at the same place.
    d.set_mig_state(MigState::Stop).unwrap();
    let stream = save_v2(&mut d, 1 << 20);
    let mut t = device_on(VGPU_64, m.clone());
    assert_eq!(load_v2(&mut t, &stream, 1 << 20), Ok(MigState::Stop));
    t.set_mig_state(MigState::Running).unwrap();
    assert!(t.is_halted());
    assert_eq!(rd(&mut t, REG_ERROR_STATUS), INT_ENGINE_HANG);
    assert_eq!(rd(&mut t, REG_ACTHD_LO), rd(&mut d, REG_ACTHD_LO));
    assert_eq!(t.run(10), 0);
}
