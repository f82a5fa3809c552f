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
