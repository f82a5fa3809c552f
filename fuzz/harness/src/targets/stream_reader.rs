//! The migration stream reader (`vmm::stream::StreamReader`), fed the whole input as a
//! stream (a snapshot file or what arrives on the migration socket), and the parsers the
//! restore path applies to its records: the saved config space
//! (`ConfigSpaceState::from_bytes`) and the vCPU record (`SavedVcpu::from_bytes`).
//!
//! Invariants: no panic; the reader never reads past the input; every record it yields is
//! within the caps (`MAX_RECORD`) and every RAM record within the header's guest RAM, page
//! aligned; it yields no more records than the input has bytes; a stream that ends well
//! (`Ok(None)`) verified its digest; a config state that parses re-encodes to one that
//! parses back equal.

use pci_config_replay::ConfigSpaceState;
use vmm::stream::{Record, StreamReader, TrailerCheck, MAX_RECORD};
use vmm::vcpu::SavedVcpu;

/// Page size of RAM records.
const PAGE: u64 = 4096;

/// The fuzz target's body: the input as it is, and resealed (its end digests recomputed,
/// so that a mutation reaches past the digest check).
pub fn run(data: &[u8]) {
    read(data);
    let sealed = crate::stream_fix::reseal(data);
    if sealed != data {
        read(&sealed);
    }
}

fn read(data: &[u8]) {
    let Ok(mut r) = StreamReader::new(data, TrailerCheck::Enforce) else {
        return;
    };
    let ram = r.header().ram_size;
    let mut records = 0usize;
    loop {
        let rec = match r.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                assert_eq!(
                    r.digest_ok(),
                    Some(true),
                    "a stream ended without its digest"
                );
                break;
            }
            Err(_) => break,
        };
        records += 1;
        assert!(records <= data.len(), "more records than input bytes");
        assert!(r.offset() <= data.len() as u64, "read past the input");
        check_record(rec, ram);
    }
    assert!(r.offset() <= data.len() as u64, "read past the input");
}

fn check_record(rec: Record, ram: u64) {
    match rec {
        Record::RamPages { gpa, data } => {
            let len = data.len() as u64;
            assert!(len > 0 && len.is_multiple_of(PAGE) && len <= u64::from(MAX_RECORD));
            assert!(gpa.is_multiple_of(PAGE) && gpa.checked_add(len).is_some_and(|e| e <= ram));
        }
        Record::RamZero { gpa, pages } => {
            let end = pages.checked_mul(PAGE).and_then(|l| gpa.checked_add(l));
            assert!(
                gpa.is_multiple_of(PAGE) && end.is_some_and(|e| e <= ram),
                "zero run outside RAM"
            );
        }
        Record::DeviceData(c) => assert!(c.len() as u64 <= u64::from(MAX_RECORD)),
        Record::Config(b) => {
            if let Ok(state) = ConfigSpaceState::from_bytes(&b) {
                let again = ConfigSpaceState::from_bytes(&state.to_bytes())
                    .expect("a config state's own encoding parses");
                assert_eq!(again, state, "config state changed through its encoding");
            }
        }
        Record::Vcpu(b) => {
            if let Ok(v) = SavedVcpu::from_bytes(&b) {
                let again = SavedVcpu::from_bytes(&v.to_bytes())
                    .expect("a vCPU record's own encoding parses");
                assert_eq!(again.to_bytes(), v.to_bytes(), "vCPU record changed");
            }
        }
        Record::DeviceEnd | Record::Sync { .. } | Record::Switchover { .. } => {}
    }
}
