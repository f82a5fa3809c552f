use pci_config_replay::{ConfigParams, ConfigSpace};

use super::*;
use crate::regs::config_params;

fn sample() -> SerialState {
    let mut config = ConfigSpace::new(config_params()).unwrap();
    config.write_u32(0x10, 0xd000_0000);
    config.write_u16(0x04, 0x0006);
    SerialState {
        key: 0x5a,
        ier: 1,
        isr: 1,
        overrun: true,
        owed: true,
        tx_count: 103,
        rx_count: 100,
        tx_fifo: vec![1, 2, 3],
        rx_fifo: vec![9; 7],
        scratch: (0..BAR2_SIZE as usize).map(|i| i as u8).collect(),
        config: config.state(),
    }
}

/// Recompute the trailing CRC after a raw edit.
fn reseal(b: &mut [u8]) {
    let end = b.len() - 4;
    let crc = crc32(&b[..end]);
    b[end..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trips() {
    let s = sample();
    let b = s.to_bytes();
    assert_eq!(SerialState::from_bytes(&b).unwrap(), s);
    assert!(s.rebuild_config().is_ok());
}

#[test]
fn refuses_truncated_input_at_every_length() {
    let b = sample().to_bytes();
    for len in [0, 7, 12, 15, 16, 40, b.len() - 1] {
        let e = SerialState::from_bytes(&b[..len]).unwrap_err();
        assert!(
            matches!(e, StateError::Truncated { .. } | StateError::Length { .. }),
            "{len}: {e}"
        );
    }
}

#[test]
fn refuses_oversized_input() {
    let e = SerialState::from_bytes(&vec![0u8; MAX_LEN + 1]).unwrap_err();
    assert!(matches!(e, StateError::TooLong { len, .. } if len == MAX_LEN + 1));
}

#[test]
fn refuses_bad_magic_version_length_and_checksum() {
    let good = sample().to_bytes();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::BadMagic { .. })
    ));
    let mut b = good.clone();
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::Version { major: 2, minor: 0 })
    ));
    let mut b = good.clone();
    b[12] ^= 1;
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::Length { .. })
    ));
    let mut b = good.clone();
    b[HEADER_LEN + 30] ^= 0x40;
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::Checksum { .. })
    ));
}

#[test]
fn refuses_out_of_range_fifo_levels() {
    let mut s = sample();
    s.rx_fifo = vec![0; RX_DEPTH + 1];
    let e = SerialState::from_bytes(&s.to_bytes()).unwrap_err();
    assert!(matches!(e, StateError::FifoLength { fifo: "RX", len, .. } if len == RX_DEPTH + 1));
    let mut s = sample();
    s.tx_fifo = vec![0; TX_DEPTH + 1];
    s.tx_count = s.rx_count + s.tx_fifo.len() as u64;
    let e = SerialState::from_bytes(&s.to_bytes()).unwrap_err();
    assert!(matches!(e, StateError::FifoLength { fifo: "TX", .. }));
}

#[test]
fn refuses_unknown_bits_and_inconsistent_counters() {
    let mut s = sample();
    s.ier = 0x80;
    assert!(matches!(
        SerialState::from_bytes(&s.to_bytes()),
        Err(StateError::Field {
            field: "IER",
            value: 0x80
        })
    ));
    let mut s = sample();
    s.isr = 2;
    assert!(matches!(
        SerialState::from_bytes(&s.to_bytes()),
        Err(StateError::Field { field: "ISR", .. })
    ));
    let mut b = sample().to_bytes();
    b[HEADER_LEN + 1] = 0x80;
    reseal(&mut b);
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::Field { field: "flags", .. })
    ));
    let mut s = sample();
    s.tx_count += 1;
    assert!(matches!(
        SerialState::from_bytes(&s.to_bytes()),
        Err(StateError::Counters { .. })
    ));
}

#[test]
fn refuses_trailing_bytes() {
    let mut b = sample().to_bytes();
    let end = b.len() - 4;
    b.insert(end, 0);
    let declared = (b.len() - HEADER_LEN - 4) as u32;
    b[12..16].copy_from_slice(&declared.to_le_bytes());
    reseal(&mut b);
    // The config length field now covers one byte less than the payload holds.
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::Trailing { extra: 1 })
    ));
}

#[test]
fn refuses_a_corrupt_or_foreign_config_space() {
    let s = sample();
    let mut b = s.to_bytes();
    // A byte inside the config space's own header (its magic), outer CRC resealed.
    let config_len = s.config.to_bytes().len();
    let config_start = b.len() - 4 - config_len;
    b[config_start] ^= 0xff;
    reseal(&mut b);
    assert!(matches!(
        SerialState::from_bytes(&b),
        Err(StateError::Config { .. })
    ));

    let mut s = sample();
    s.config = ConfigSpace::new(ConfigParams::default()).unwrap().state();
    let parsed = SerialState::from_bytes(&s.to_bytes()).unwrap();
    assert!(matches!(
        parsed.rebuild_config(),
        Err(StateError::ConfigMismatch { .. })
    ));
}
