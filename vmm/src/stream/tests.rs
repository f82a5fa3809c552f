//! Unit tests of the stream writer and reader: round trips, and every way a stream can be
//! bad (truncated, corrupted, out of order, out of range, oversized, trailing data).

use std::io::{Cursor, ErrorKind, Read, Write};

use sha2::{Digest, Sha256};

use super::*;

pub(super) const RAM: u64 = 16 * 4096;

pub(super) fn header() -> Header {
    Header {
        major: STREAM_MAJOR,
        minor: STREAM_MINOR,
        flags: 0,
        ram_size: RAM,
        page_size: 4096,
        mdev_type: "vgpu-64".into(),
    }
}

fn page(fill: u8) -> Vec<u8> {
    (0..4096u32).map(|i| fill ^ (i as u8)).collect()
}

/// Every record kind once (DEVICE_DATA twice), in an order the reader accepts.
pub(super) fn sample_records() -> Vec<Record> {
    let mut two_pages = page(0x11);
    two_pages.extend(page(0x22));
    vec![
        Record::RamPages {
            gpa: 0x1000,
            data: two_pages,
        },
        Record::RamZero {
            gpa: 0x4000,
            pages: 3,
        },
        Record::Sync { seq: 7 },
        Record::DeviceData((0..100u8).collect()),
        Record::Switchover {
            stopped_ns: 0x0123_4567_89ab_cdef,
        },
        Record::DeviceData(vec![0xa5; 33]),
        Record::DeviceEnd,
        Record::Config((0..64u8).map(|b| b.wrapping_mul(3)).collect()),
        Record::Vcpu(vec![9; 40]),
    ]
}

fn write_record<W: Write>(w: &mut StreamWriter<W>, rec: &Record) {
    match rec {
        Record::RamPages { gpa, data } => w.ram_pages(*gpa, data),
        Record::RamZero { gpa, pages } => w.ram_zero(*gpa, *pages),
        Record::DeviceData(c) => w.device_data(c),
        Record::DeviceEnd => w.device_end(),
        Record::Config(c) => w.config(c),
        Record::Vcpu(v) => w.vcpu(v),
        Record::Sync { seq } => w.sync(*seq),
        Record::Switchover { stopped_ns } => w.switchover(*stopped_ns),
    }
    .expect("write to a Vec");
}

fn encode_with(h: &Header, records: &[Record]) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), h).unwrap();
    for r in records {
        write_record(&mut w, r);
    }
    w.finish().unwrap().0
}

pub(super) fn encode(records: &[Record]) -> Vec<u8> {
    encode_with(&header(), records)
}

/// Read a whole stream; the records, or the first error.
pub(super) fn read_all<R: Read>(input: R) -> Result<Vec<Record>, StreamError> {
    let mut r = StreamReader::new(input, TrailerCheck::Enforce)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

/// `header` then raw record bytes `body`, then a correct END record: SHA-256 over the
/// metadata, XXH3-128 over RAM page bytes, device payloads in neither (a body that does not
/// parse as records is hashed whole as metadata from where it stops parsing).
fn raw_stream(body: &[u8]) -> Vec<u8> {
    let mut v = header().encode();
    let mut sha = Sha256::new();
    let mut ram = super::RamHash::new();
    sha.update(&v);
    let mut off = 0;
    while off + 8 <= body.len() {
        let kind = u32::from_le_bytes(body[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(body[off + 4..off + 8].try_into().unwrap()) as usize;
        let end = off + 8 + len;
        if end > body.len() {
            break;
        }
        sha.update(&body[off..off + 8]);
        let payload = &body[off + 8..end];
        if kind == RecordKind::RamPages as u32 && len >= 8 {
            sha.update(&payload[..8]);
            ram.update(&payload[8..]);
        } else if kind != RecordKind::DeviceData as u32 {
            sha.update(payload);
        }
        off = end;
    }
    sha.update(&body[off..]);
    v.extend_from_slice(body);
    v.extend_from_slice(&(RecordKind::End as u32).to_le_bytes());
    v.extend_from_slice(&END_LEN.to_le_bytes());
    v.extend_from_slice(&sha.finalize());
    v.extend_from_slice(&ram.digest());
    v
}

fn raw_record(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = kind.to_le_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The tail every valid stream needs after its RAM records.
fn valid_tail() -> Vec<u8> {
    let mut v = raw_record(RecordKind::DeviceEnd as u32, &[]);
    v.extend(raw_record(RecordKind::Config as u32, &[1, 2, 3]));
    v.extend(raw_record(RecordKind::Vcpu as u32, &[4, 5]));
    v
}

/// Byte ranges of DEVICE_DATA payloads in an encoded stream (walking the framing).
pub(super) fn device_payloads(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let name_len = u16::from_le_bytes([bytes[28], bytes[29]]) as usize;
    let mut off = 30 + name_len;
    let mut out = Vec::new();
    while off < bytes.len() {
        let kind = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        if kind == RecordKind::DeviceData as u32 {
            out.push(off + 8..off + 8 + len);
        }
        off += 8 + len;
    }
    assert_eq!(off, bytes.len(), "framing walk ends at the end");
    out
}

#[test]
fn round_trip_every_record_kind() {
    let records = sample_records();
    let bytes = encode(&records);
    let mut r = StreamReader::new(&bytes[..], TrailerCheck::Enforce).unwrap();
    assert_eq!(r.header(), &header());
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, records);
    assert_eq!(r.offset(), bytes.len() as u64);
    // Finished is sticky.
    assert_eq!(r.next_record().unwrap(), None);
}

#[test]
fn writer_counts_bytes_by_kind() {
    let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
    let hdr_len = header().encode().len() as u64;
    assert_eq!(w.stats().total, hdr_len);
    for r in sample_records() {
        write_record(&mut w, &r);
    }
    let before_end = w.stats();
    let (bytes, stats) = w.finish().unwrap();
    assert_eq!(before_end.ram, 2 * 4096);
    assert_eq!(before_end.zero_pages, 3);
    assert_eq!(before_end.device, 133);
    assert_eq!(before_end.state, 64 + 40);
    assert_eq!(stats.total, bytes.len() as u64);
    assert_eq!(
        stats.total,
        before_end.total + 8 + u64::from(END_LEN),
        "END is a header and two digests"
    );
    assert_eq!(&bytes[..8], &STREAM_MAGIC);
}

#[test]
fn large_ram_runs_and_device_chunks_are_split_under_the_cap() {
    let step = (MAX_RECORD as usize - 8) / 4096 * 4096;
    let ram: Vec<u8> = (0..step + 2 * 4096).map(|i| (i / 4096) as u8).collect();
    let chunk: Vec<u8> = (0..MAX_RECORD as usize + 5).map(|i| i as u8).collect();
    let h = Header {
        ram_size: 32 << 20,
        ..header()
    };
    let mut w = StreamWriter::new(Vec::new(), &h).unwrap();
    w.ram_pages(0x2000, &ram).unwrap();
    w.device_data(&chunk).unwrap();
    w.device_end().unwrap();
    w.config(&[0]).unwrap();
    w.vcpu(&[0]).unwrap();
    let bytes = w.finish().unwrap().0;
    let got = read_all(&bytes[..]).unwrap();
    assert_eq!(got.len(), 7, "2 RAM + 2 device + end + config + vcpu");
    assert_eq!(
        got[0],
        Record::RamPages {
            gpa: 0x2000,
            data: ram[..step].to_vec()
        }
    );
    assert_eq!(
        got[1],
        Record::RamPages {
            gpa: 0x2000 + step as u64,
            data: ram[step..].to_vec()
        }
    );
    assert_eq!(
        got[2],
        Record::DeviceData(chunk[..MAX_RECORD as usize].to_vec())
    );
    assert_eq!(
        got[3],
        Record::DeviceData(chunk[MAX_RECORD as usize..].to_vec())
    );
}

/// A reader that hands out one byte at a time and is interrupted before each.
pub(super) struct Trickle<'a> {
    pub(super) data: &'a [u8],
    pub(super) interrupt: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(ErrorKind::Interrupted.into());
        }
        match (self.data.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(out)) => {
                *out = *b;
                self.data = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn short_and_interrupted_reads_are_retried() {
    let records = sample_records();
    let bytes = encode(&records);
    let got = read_all(Trickle {
        data: &bytes,
        interrupt: false,
    })
    .unwrap();
    assert_eq!(got, records);
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = encode(&sample_records());
    for n in 0..bytes.len() {
        match read_all(&bytes[..n]) {
            Err(StreamError::Truncated { offset, .. }) => {
                assert_eq!(offset, n as u64, "truncated at {n}: offset in the error")
            }
            other => panic!("truncated at {n} of {}: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn every_byte_flip_outside_device_payloads_is_an_error() {
    let records = sample_records();
    let bytes = encode(&records);
    let device = device_payloads(&bytes);
    assert_eq!(device.len(), 2);
    let mut checked = 0;
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            let res = read_all(&b[..]);
            if device.iter().any(|r| r.contains(&i)) {
                // Not the stream's business: the chunk reaches the device changed, and
                // the device's own section digests reject it.
                let got = res.unwrap_or_else(|e| panic!("flip {mask:#x} at {i}: {e}"));
                assert_ne!(got, records, "flip {mask:#x} at {i} must change a chunk");
            } else {
                assert!(res.is_err(), "flip {mask:#x} at byte {i} was accepted");
                checked += 1;
            }
        }
    }
    assert!(checked > 3 * 8000, "{checked}");
}

#[test]
fn report_mode_records_a_digest_mismatch_instead_of_failing() {
    let bytes = encode(&sample_records());
    let mut b = bytes.clone();
    b[100] ^= 0x40; // inside the first RAM page
    let mut r = StreamReader::new(&b[..], TrailerCheck::Report).unwrap();
    assert_eq!(r.digest_ok(), None);
    while r.next_record().unwrap().is_some() {}
    assert_eq!(r.digest_ok(), Some(false));

    let mut r = StreamReader::new(&bytes[..], TrailerCheck::Report).unwrap();
    while r.next_record().unwrap().is_some() {}
    assert_eq!(r.digest_ok(), Some(true));

    let err = read_all(&b[..]).unwrap_err();
    assert!(matches!(err, StreamError::Digest { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

mod checks;
