use proptest::prelude::*;

use super::*;
use crate::params::ConfigParams;

fn dev() -> ConfigSpace {
    ConfigSpace::new(ConfigParams::default()).expect("default params are valid")
}

fn busy_dev() -> ConfigSpace {
    let mut d = dev();
    d.write_u32(0x10, 0xde00_0000);
    d.write_u32(0x18, 0xc000_0000);
    d.write_u16(0x04, 0x0007);
    d.write_u32(0x54, 0xfee0_0000);
    d.write_u16(0x5c, 0x41);
    d.write_u16(0x52, 1);
    d.msix_table_write(0x20, &0xfee0_1000u32.to_le_bytes());
    d.trigger(0);
    d
}

/// Recomputes the checksum after a test edits the body.
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = crc32(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn crc32_check_value() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn state_round_trips_through_bytes() {
    let d = busy_dev();
    let state = d.state();
    let bytes = state.to_bytes();
    assert_eq!(bytes.len(), STATE_HEADER_LEN + 4096 + 128 + 8 + 4);
    assert_eq!(&bytes[..8], b"VGPUPCFG");
    let parsed = ConfigSpaceState::from_bytes(&bytes).expect("valid state");
    assert_eq!(parsed, state);
    assert_eq!(parsed.to_bytes(), bytes);
}

#[test]
fn modify_changes_the_state() {
    let mut d = dev();
    let before = d.state();
    d.write_u8(0x3c, 0x0a);
    assert_ne!(d.state(), before);
    let before = d.state();
    d.msix_table_write(0x8, &7u32.to_le_bytes());
    assert_ne!(d.state(), before);
    let before = d.state();
    d.write_u16(0x72, 0x8000);
    d.trigger(1);
    assert_ne!(d.state().msix_pba, before.msix_pba);
}

#[test]
fn state_holds_bar_sizes_and_table() {
    let s = dev().state();
    assert_eq!(s.bar_sizes, [16 << 20, 0, 256 << 20, 0, 0, 0]);
    assert_eq!(s.msix_table.len(), 8 * 16);
    assert_eq!(s.msix_pba, vec![0]);
    assert_eq!(s.config[0], 0x86);
}

fn good() -> Vec<u8> {
    busy_dev().state().to_bytes()
}

#[test]
fn rejects_oversized_input_before_reading() {
    let big = vec![0u8; STATE_MAX_LEN + 1];
    assert_eq!(
        ConfigSpaceState::from_bytes(&big),
        Err(StateError::TooLarge {
            len: STATE_MAX_LEN + 1,
            max: STATE_MAX_LEN
        })
    );
}

#[test]
fn rejects_truncation() {
    let g = good();
    assert_eq!(
        ConfigSpaceState::from_bytes(&g[..5]),
        Err(StateError::Truncated {
            section: "header",
            needed: 8,
            available: 5
        })
    );
    assert_eq!(
        ConfigSpaceState::from_bytes(&g[..30]),
        Err(StateError::Truncated {
            section: "header",
            needed: 8,
            available: 6
        })
    );
    assert_eq!(
        ConfigSpaceState::from_bytes(&g[..g.len() - 200]),
        Err(StateError::Truncated {
            section: "config section",
            needed: 4096,
            available: 4036
        })
    );
    assert_eq!(
        ConfigSpaceState::from_bytes(&g[..g.len() - 1]),
        Err(StateError::Truncated {
            section: "checksum",
            needed: 4,
            available: 3
        })
    );
    assert!(matches!(
        ConfigSpaceState::from_bytes(&[]),
        Err(StateError::Truncated { .. })
    ));
}

#[test]
fn rejects_bad_magic() {
    let mut g = good();
    g[0] = b'X';
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::BadMagic {
            found: *b"XGPUPCFG"
        })
    );
}

#[test]
fn rejects_bad_version() {
    let mut g = good();
    g[8] = 2;
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::UnsupportedVersion { major: 2, minor: 0 })
    );
    let mut g = good();
    g[10] = 1;
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::UnsupportedVersion { major: 1, minor: 1 })
    );
}

#[test]
fn rejects_bad_lengths() {
    let mut g = good();
    put_u32(&mut g, 12, 4095);
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::ConfigLength { len: 4095 })
    );
    for len in [u32::MAX, 0, 17, 2049 * 16] {
        let mut g = good();
        put_u32(&mut g, 16, len);
        assert_eq!(
            ConfigSpaceState::from_bytes(&g),
            Err(StateError::TableLength { len }),
            "table length {len}"
        );
    }
    let mut g = good();
    put_u32(&mut g, 20, u32::MAX);
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::PbaLength {
            len: u32::MAX,
            vectors: 8,
            expected: 1
        })
    );
}

#[test]
fn rejects_trailing_bytes() {
    let mut g = good();
    g.extend_from_slice(&[0, 0]);
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::TrailingBytes { count: 2 })
    );
}

#[test]
fn rejects_bad_checksum() {
    let mut g = good();
    g[STATE_HEADER_LEN + 0x3c] ^= 0xff;
    assert!(matches!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::Checksum { .. })
    ));
}

#[test]
fn rejects_bad_bar_size() {
    let mut g = good();
    g[24 + 8..24 + 16].copy_from_slice(&3u64.to_le_bytes());
    reseal(&mut g);
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::BarSize { bar: 1, size: 3 })
    );
}

#[test]
fn rejects_pba_bit_beyond_table() {
    let mut g = good();
    let pba_at = g.len() - 4 - 8;
    g[pba_at + 1] = 0x02; // bit 9, table has 8 vectors
    reseal(&mut g);
    assert_eq!(
        ConfigSpaceState::from_bytes(&g),
        Err(StateError::PbaBitOutOfRange {
            vector: 9,
            vectors: 8
        })
    );
}

#[test]
fn oversized_section_lengths_serialize_as_refusable() {
    assert_eq!(len_u32(usize::MAX), u32::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ConfigSpaceState::from_bytes(&bytes);
    }

    #[test]
    fn parse_never_panics_on_mutated_state(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in 0usize..5000,
        fix_crc in any::<bool>(),
    ) {
        let mut g = good();
        for (at, value) in edits {
            let i = at.index(g.len());
            g[i] = value;
        }
        if fix_crc {
            reseal(&mut g);
        }
        g.truncate(g.len().saturating_sub(cut % 64));
        if let Ok(state) = ConfigSpaceState::from_bytes(&g) {
            prop_assert_eq!(state.to_bytes(), g);
        }
    }
}
