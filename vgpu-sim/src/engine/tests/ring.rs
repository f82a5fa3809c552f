//! The ring, batches, budgets and idleness.

use super::super::testbus::{Cmds, TestBus, BATCH, RESULTS, RING, RING_SIZE};
use super::super::{Engine, EngineBus};
use super::{device, reg64, run_all, GMEM};
use crate::regs::{
    ENGINE_BUSY, ENGINE_IN_BATCH, REG_ACTHD_HI, REG_ACTHD_LO, REG_BB_ADDR_HI, REG_BB_ADDR_LO,
    REG_BB_OFFSET, REG_CMD_COUNT, REG_ENGINE_STATUS, REG_RING_CTL, REG_RING_HEAD, REG_RING_TAIL,
    RING_CTL_ENABLE, RING_CTL_SIZE_SHIFT,
};

#[test]
fn commands_wrap_at_the_end_of_the_ring() {
    let mut bus = TestBus::new(GMEM);
    // A 4-dword STORE_DWORD starting 8 bytes before the end: its payload wraps.
    bus.ring_at(RING_SIZE - 8);
    bus.submit(&Cmds::default().store(RESULTS, 7).noop().0);
    let mut e = Engine::new();
    assert_eq!(run_all(&mut e, &mut bus), 2);
    assert_eq!(bus.get(RESULTS), 7);
    assert_eq!(bus.reg(REG_RING_HEAD), 12);
    assert_eq!(reg64(&bus, REG_ACTHD_LO, REG_ACTHD_HI), RING + 12);
}

#[test]
fn the_ring_size_comes_from_ring_ctl() {
    let mut bus = TestBus::new(GMEM);
    bus.set_reg(REG_RING_CTL, RING_CTL_ENABLE | (1 << RING_CTL_SIZE_SHIFT));
    bus.ring_at(RING_SIZE - 4);
    bus.submit(&Cmds::default().noop().noop().0);
    let mut e = Engine::new();
    assert_eq!(run_all(&mut e, &mut bus), 2);
    // Two pages: no wrap at one page.
    assert_eq!(bus.reg(REG_RING_HEAD), RING_SIZE + 4);
}

#[test]
fn batches_run_and_return_to_the_ring() {
    let ring = Cmds::default().batch_start(BATCH).store(RESULTS + 8, 3);
    let batch = Cmds::default()
        .store(RESULTS, 1)
        .store(RESULTS + 4, 2)
        .batch_end();
    let (mut e, mut bus) = device(ring);
    bus.put(BATCH, &batch.0);
    let status = |bus: &TestBus| bus.reg(REG_ENGINE_STATUS);
    let bb = |bus: &TestBus| {
        (
            reg64(bus, REG_BB_ADDR_LO, REG_BB_ADDR_HI),
            bus.reg(REG_BB_OFFSET),
        )
    };
    let acthd = |bus: &TestBus| reg64(bus, REG_ACTHD_LO, REG_ACTHD_HI);

    assert_eq!(e.run(&mut bus, 1), 1);
    assert_eq!(bus.reg(REG_RING_HEAD), 12, "head already past BATCH_START");
    assert_eq!(status(&bus), ENGINE_BUSY | ENGINE_IN_BATCH);
    assert_eq!(bb(&bus), (BATCH, 0));
    assert_eq!(acthd(&bus), BATCH);
    assert!(e.state().in_batch);

    assert_eq!(e.run(&mut bus, 1), 1);
    assert_eq!(bb(&bus), (BATCH, 16));
    assert_eq!(acthd(&bus), BATCH + 16);
    assert_eq!((bus.get(RESULTS), bus.get(RESULTS + 4)), (1, 0));

    assert_eq!(e.run(&mut bus, 2), 2);
    assert_eq!(bb(&bus), (0, 0));
    assert_eq!(status(&bus), ENGINE_BUSY);
    assert_eq!(acthd(&bus), RING + 12);
    assert!(!e.state().in_batch);

    assert_eq!(run_all(&mut e, &mut bus), 1);
    assert_eq!(bus.get(RESULTS + 8), 3);
    assert_eq!(status(&bus), 0);
    assert_eq!(bus.reg(REG_CMD_COUNT), 5);
}

#[test]
fn a_batch_keeps_running_while_head_equals_tail() {
    let (mut e, mut bus) = device(Cmds::default().batch_start(BATCH));
    bus.put(BATCH, &Cmds::default().noop().noop().batch_end().0);
    assert_eq!(e.run(&mut bus, 1), 1);
    assert_eq!(bus.reg(REG_RING_HEAD), bus.reg(REG_RING_TAIL));
    assert!(!e.is_idle(&bus));
    assert_eq!(run_all(&mut e, &mut bus), 3);
    assert!(e.is_idle(&bus));
}

#[test]
fn run_honours_the_budget() {
    let (mut e, mut bus) = device(Cmds::default().noop().noop().noop().noop().noop());
    assert_eq!(e.run(&mut bus, 0), 0);
    assert_eq!(e.run(&mut bus, 2), 2);
    assert_eq!(bus.reg(REG_RING_HEAD), 8);
    assert_eq!(bus.reg(REG_ENGINE_STATUS), ENGINE_BUSY);
    assert_eq!(e.run(&mut bus, 10), 3);
}

#[test]
fn a_disabled_ring_is_idle_even_in_a_batch() {
    let (mut e, mut bus) = device(Cmds::default().batch_start(BATCH).noop());
    bus.put(BATCH, &Cmds::default().noop().batch_end().0);
    assert_eq!(e.run(&mut bus, 1), 1);
    bus.set_reg(REG_RING_CTL, 0);
    assert!(e.is_idle(&bus));
    assert_eq!(run_all(&mut e, &mut bus), 0);
    bus.set_reg(REG_RING_CTL, RING_CTL_ENABLE);
    assert_eq!(run_all(&mut e, &mut bus), 3);
}

#[test]
fn sync_regs_publishes_the_state_after_reset() {
    let (mut e, mut bus) = device(Cmds::default().batch_start(BATCH));
    bus.put(BATCH, &Cmds::default().noop().batch_end().0);
    e.run(&mut bus, 2);
    assert_eq!(bus.reg(REG_BB_OFFSET), 4);
    e.reset();
    bus.ring_at(0);
    e.sync_regs(&mut bus);
    assert_eq!(bus.reg(REG_ENGINE_STATUS), 0);
    assert_eq!(reg64(&bus, REG_BB_ADDR_LO, REG_BB_ADDR_HI), 0);
    assert_eq!(bus.reg(REG_BB_OFFSET), 0);
    assert_eq!(reg64(&bus, REG_ACTHD_LO, REG_ACTHD_HI), RING);
}
