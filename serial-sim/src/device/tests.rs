use std::sync::{Arc, Mutex};

use mdev_core::uapi::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
};
use mdev_core::{IrqSink, MigState, MigrationDevice, MigrationError, VfioDevice};
use slog::{o, Discard, Logger};

use super::*;
use crate::regs::*;

#[derive(Debug, Default)]
struct Sink(Mutex<Vec<(u32, u32)>>);

impl IrqSink for Sink {
    fn signal(&self, index: u32, vector: u32) {
        self.0.lock().unwrap().push((index, vector));
    }
}

impl Sink {
    fn take(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn device() -> (Serial, Arc<Sink>) {
    let mut d = Serial::new(&SerialConfig::new(Logger::root(Discard, o!()))).unwrap();
    let sink = Arc::new(Sink::default());
    d.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, Some(sink.clone()))
        .unwrap();
    (d, sink)
}

fn w(d: &mut Serial, reg: u64, v: u32) {
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, reg, &v.to_le_bytes())
        .unwrap();
}

fn r(d: &mut Serial, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    d.region_read(VFIO_PCI_BAR0_REGION_INDEX, reg, &mut b)
        .unwrap();
    u32::from_le_bytes(b)
}

fn cfg_w(d: &mut Serial, off: u64, v: &[u8]) {
    d.region_write(VFIO_PCI_CONFIG_REGION_INDEX, off, v)
        .unwrap();
}

/// Memory and bus master on, MSI-X enabled, entry 0 programmed with `masked`.
fn enable_msix(d: &mut Serial, masked: bool) {
    cfg_w(d, 0x04, &6u16.to_le_bytes());
    let cap = d
        .config()
        .capabilities()
        .into_iter()
        .find(|c| c.0 == 0x11)
        .unwrap()
        .1;
    w(d, MSIX_TABLE_OFFSET, 0xfee0_0000);
    w(d, MSIX_TABLE_OFFSET + 8, 0x41);
    w(d, MSIX_TABLE_OFFSET + 12, u32::from(masked));
    let ctl = d.config().read_u16(u64::from(cap) + 2);
    cfg_w(d, u64::from(cap) + 2, &(ctl | 0x8000).to_le_bytes());
}

#[test]
fn line_transforms_bytes_in_order_and_respects_fifo_depths() {
    let (mut d, _) = device();
    w(&mut d, REG_KEY, 0x33);
    for i in 0..TX_DEPTH as u32 + 2 {
        w(&mut d, REG_TX, i);
    }
    assert_eq!(r(&mut d, REG_TX_COUNT), TX_DEPTH as u32);
    assert_ne!(r(&mut d, REG_LSR) & LSR_OE, 0, "overrun reported");
    assert_eq!(r(&mut d, REG_LSR) & LSR_OE, 0, "and cleared by the read");
    assert_eq!(d.advance(3), 3);
    assert_eq!(r(&mut d, REG_RX_LEVEL), 3);
    for i in 0..3u8 {
        assert_eq!(
            r(&mut d, REG_RX),
            u32::from(transform(i, 0x33, u64::from(i)))
        );
    }
    assert_eq!(r(&mut d, REG_LSR) & LSR_DR, 0);
}

#[test]
fn received_data_raises_msix_once_until_acknowledged() {
    let (mut d, sink) = device();
    enable_msix(&mut d, false);
    w(&mut d, REG_IER, INT_RX);
    w(&mut d, REG_TX, 1);
    w(&mut d, REG_TX, 2);
    d.advance(1);
    d.advance(1);
    assert_eq!(sink.take(), vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0)], "one edge");
    assert_eq!(r(&mut d, REG_ISR), INT_RX);
    r(&mut d, REG_RX);
    r(&mut d, REG_RX);
    w(&mut d, REG_ISR, INT_RX);
    assert_eq!(r(&mut d, REG_ISR), 0);
    assert!(sink.take().is_empty());
}

#[test]
fn a_masked_vector_is_pending_and_fires_when_unmasked() {
    let (mut d, sink) = device();
    enable_msix(&mut d, true);
    w(&mut d, REG_IER, INT_RX);
    w(&mut d, REG_TX, 1);
    d.advance(1);
    assert!(sink.take().is_empty());
    assert!(d.config().msix_pending(0));
    w(&mut d, MSIX_TABLE_OFFSET + 12, 0);
    assert_eq!(sink.take(), vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0)]);
}

#[test]
fn bad_guest_accesses_are_ignored() {
    let (mut d, _) = device();
    let mut b = [0u8; 2];
    d.region_read(VFIO_PCI_BAR0_REGION_INDEX, REG_TX_COUNT + 1, &mut b)
        .unwrap();
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, REG_TX, &[1, 2])
        .unwrap();
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, 0x400, &[1, 2, 3, 4])
        .unwrap();
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, MSIX_PBA_OFFSET, &[1, 2, 3, 4])
        .unwrap();
    assert_eq!(r(&mut d, REG_TX_COUNT), 0);
    assert!(d
        .region_read(VFIO_PCI_BAR2_REGION_INDEX, BAR2_SIZE - 2, &mut [0u8; 4])
        .is_err());
}

/// Save `src` through the v2 stream (STOP_COPY) and return the bytes.
fn save(src: &mut Serial) -> Vec<u8> {
    let s = src
        .set_mig_state(MigState::StopCopy)
        .unwrap()
        .stream
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        let n = src.read_data(s, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn v2_round_trip_carries_fifos_counters_scratch_and_pending_irq() {
    let (mut src, _) = device();
    enable_msix(&mut src, true);
    w(&mut src, REG_KEY, 7);
    w(&mut src, REG_IER, INT_RX);
    for i in 0..5 {
        w(&mut src, REG_TX, i);
    }
    src.advance(3);
    src.region_write(VFIO_PCI_BAR2_REGION_INDEX, 8, b"scratch!")
        .unwrap();
    let before = src.state();
    let bytes = save(&mut src);
    assert_eq!(src.stop_copy_size().unwrap(), 0);

    let (mut dst, sink) = device();
    let rs = dst
        .set_mig_state(MigState::Resuming)
        .unwrap()
        .stream
        .unwrap();
    for c in bytes.chunks(77) {
        assert_eq!(dst.write_data(rs, c).unwrap(), c.len());
    }
    dst.set_mig_state(MigState::Stop).unwrap();
    assert_eq!(dst.state(), before);
    assert!(dst.config().msix_pending(0), "PBA bit carried");
    dst.set_mig_state(MigState::Running).unwrap();
    // Unmasking the pending vector fires it on the target.
    w(&mut dst, MSIX_TABLE_OFFSET + 12, 0);
    assert!(sink.take().contains(&(VFIO_PCI_MSIX_IRQ_INDEX, 0)));
    assert_eq!(r(&mut dst, REG_RX), u32::from(transform(0, 7, 0)));
}

#[test]
fn refused_resume_changes_nothing_and_keeps_the_last_state() {
    let (mut src, _) = device();
    w(&mut src, REG_KEY, 9);
    let mut bytes = save(&mut src);
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let (mut dst, _) = device();
    w(&mut dst, REG_KEY, 3);
    let before = dst.state();
    let rs = dst
        .set_mig_state(MigState::Resuming)
        .unwrap()
        .stream
        .unwrap();
    dst.write_data(rs, &bytes).unwrap();
    let e = dst.set_mig_state(MigState::Stop).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    // Like samples/vfio-mdev/mtty.c, a failed arc keeps the last state reached (not ERROR).
    assert_eq!(dst.mig_state(), MigState::Resuming);
    assert_eq!(dst.state(), before);
    dst.reset().unwrap();
    assert_eq!(dst.mig_state(), MigState::Running);
}

#[test]
fn resume_refuses_more_than_the_largest_state() {
    let (mut dst, _) = device();
    let rs = dst
        .set_mig_state(MigState::Resuming)
        .unwrap()
        .stream
        .unwrap();
    let e = dst
        .write_data(rs, &vec![0u8; crate::state::MAX_LEN + 1])
        .unwrap_err();
    assert!(e.to_string().contains("maximum"), "{e}");
}

#[test]
fn precopy_is_empty_and_stop_copy_follows_it() {
    let (mut d, _) = device();
    let p = d.set_mig_state(MigState::PreCopy).unwrap().stream.unwrap();
    let info = d.precopy_info().unwrap();
    assert_eq!((info.initial_bytes, info.dirty_bytes), (0, 0));
    // vfio.h: a read of the data stream in PRE_COPY with nothing available fails with
    // ENOMSG; only in STOP_COPY does a 0-length read end the stream.
    assert!(matches!(
        d.read_data(p, &mut [0u8; 64]),
        Err(MigrationError::NoDataNow {
            state: MigState::PreCopy
        })
    ));
    let expect = d.state().to_bytes();
    d.set_mig_state(MigState::StopCopy).unwrap();
    let mut buf = vec![0u8; expect.len() + 10];
    assert_eq!(d.read_data(p, &mut buf).unwrap(), expect.len());
    assert_eq!(&buf[..expect.len()], &expect[..]);
}
