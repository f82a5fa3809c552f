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

#[test]
fn header_fields_are_checked() {
    let ok = header();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = ok.encode();
                b[0] = b'X';
                b
            },
            "bad magic",
        ),
        (
            Header {
                major: STREAM_MAJOR + 1,
                ..ok.clone()
            }
            .encode(),
            "version 2.0 is not supported",
        ),
        (
            Header {
                flags: 1,
                ..ok.clone()
            }
            .encode(),
            "flags",
        ),
        (
            Header {
                page_size: 8192,
                ..ok.clone()
            }
            .encode(),
            "page_size",
        ),
        (
            Header {
                ram_size: 0,
                ..ok.clone()
            }
            .encode(),
            "ram_size",
        ),
        (
            Header {
                ram_size: RAM + 1,
                ..ok.clone()
            }
            .encode(),
            "ram_size",
        ),
        (
            Header {
                ram_size: 2 << 40,
                ..ok.clone()
            }
            .encode(),
            "ram_size",
        ),
        (
            Header {
                mdev_type: String::new(),
                ..ok.clone()
            }
            .encode(),
            "mdev_type",
        ),
        (
            Header {
                mdev_type: "x".repeat(65),
                ..ok.clone()
            }
            .encode(),
            "mdev_type",
        ),
        (
            {
                let mut b = ok.encode();
                let n = b.len();
                b[n - 1] = 0xff;
                b
            },
            "not UTF-8",
        ),
    ];
    for (bytes, want) in cases {
        let err = StreamReader::new(&bytes[..], TrailerCheck::Enforce).unwrap_err();
        assert!(err.to_string().contains(want), "{err} (want {want:?})");
    }
    // A newer minor of the same major is read.
    let newer = Header {
        minor: STREAM_MINOR + 3,
        ..ok
    };
    let bytes = newer.encode();
    let r = StreamReader::new(&bytes[..], TrailerCheck::Enforce).unwrap();
    assert_eq!(r.header().minor, STREAM_MINOR + 3);
}

#[test]
fn unknown_record_kind_is_named_with_its_offset() {
    let hdr_len = header().encode().len() as u64;
    let bytes = raw_stream(&raw_record(0x42, &[0; 8]));
    match read_all(&bytes[..]) {
        Err(StreamError::UnknownRecord { kind, offset }) => {
            assert_eq!((kind, offset), (0x42, hdr_len))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_length_is_rejected_before_allocation() {
    // Length 0xFFFF_FFFF with no payload behind it: an allocation of the declared length
    // would be 4 GiB; the cap check must come first.
    let mut body = (RecordKind::RamPages as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let bytes = raw_stream(&body);
    let err = read_all(&bytes[..]).unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::BadLength {
                length: u32::MAX,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{MAX_RECORD}-byte cap")),
        "{err}"
    );
    // One over the cap too, for every kind.
    for kind in [1u32, 2, 3, 4, 5, 6, 7, 8, 0xff] {
        let mut body = kind.to_le_bytes().to_vec();
        body.extend_from_slice(&(MAX_RECORD + 1).to_le_bytes());
        let err = read_all(&raw_stream(&body)[..]).unwrap_err();
        assert!(err.to_string().contains("cap"), "kind {kind}: {err}");
    }
}

#[test]
fn record_lengths_are_checked_per_kind() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (raw_record(1, &0x1000u64.to_le_bytes()), "RAM_PAGES"),
        (
            raw_record(1, &[&0x1000u64.to_le_bytes()[..], &[0; 100]].concat()),
            "RAM_PAGES",
        ),
        (raw_record(2, &[0; 8]), "RAM_ZERO"),
        (raw_record(3, &[]), "empty chunk"),
        (raw_record(4, &[0]), "DEVICE_END"),
        (raw_record(7, &[0; 4]), "SWITCHOVER"),
        (raw_record(8, &[0; 9]), "SYNC"),
        (raw_record(0xff, &[0; 31]), "48-byte pair of digests"),
    ];
    for (body, want) in cases {
        let err = read_all(&raw_stream(&body)[..]).unwrap_err();
        assert!(
            matches!(err, StreamError::BadLength { .. }),
            "{want}: {err:?}"
        );
        assert!(err.to_string().contains(want), "{err} (want {want:?})");
    }
}

#[test]
fn ram_records_outside_guest_ram_are_rejected() {
    let cases: Vec<Vec<u8>> = vec![
        // Two pages, the second past the end.
        raw_record(1, &[&(RAM - 4096).to_le_bytes()[..], &[0; 8192]].concat()),
        // Entirely past the end.
        raw_record(1, &[&RAM.to_le_bytes()[..], &[0; 4096]].concat()),
        // Not page aligned.
        raw_record(1, &[&0x800u64.to_le_bytes()[..], &[0; 4096]].concat()),
        // The end address overflows.
        raw_record(
            1,
            &[&(u64::MAX - 4095).to_le_bytes()[..], &[0; 4096]].concat(),
        ),
        // Zero runs: one page too many, and a count whose byte length overflows.
        raw_record(
            2,
            &[&0u64.to_le_bytes()[..], &(RAM / 4096 + 1).to_le_bytes()].concat(),
        ),
        raw_record(
            2,
            &[&0x1000u64.to_le_bytes()[..], &u64::MAX.to_le_bytes()].concat(),
        ),
    ];
    for body in cases {
        let err = read_all(&raw_stream(&body)[..]).unwrap_err();
        assert!(
            matches!(err, StreamError::BadAddress { ram: RAM, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("outside guest RAM"), "{err}");
    }
    // The last page exactly is fine.
    let mut body = raw_record(1, &[&(RAM - 4096).to_le_bytes()[..], &[7; 4096]].concat());
    body.extend(raw_record(
        2,
        &[&0u64.to_le_bytes()[..], &(RAM / 4096).to_le_bytes()].concat(),
    ));
    body.extend(valid_tail());
    let got = read_all(&raw_stream(&body)[..]).unwrap();
    assert_eq!(
        got[0],
        Record::RamPages {
            gpa: RAM - 4096,
            data: vec![7; 4096]
        }
    );
}

#[test]
fn order_rules() {
    use Record::*;
    let cfg = || Config(vec![1]);
    let vcpu = || Vcpu(vec![2]);
    let chunk = || DeviceData(vec![3; 10]);
    let cases: Vec<(Vec<Record>, &str, &str)> = vec![
        (
            vec![chunk(), DeviceEnd, chunk(), cfg(), vcpu()],
            "DEVICE_DATA",
            "device data after the device's end",
        ),
        (
            vec![chunk(), cfg(), DeviceEnd, vcpu()],
            "CONFIG",
            "config space comes after the device data",
        ),
        (
            vec![DeviceEnd, cfg(), cfg(), vcpu()],
            "CONFIG",
            "a second config record",
        ),
        (
            vec![DeviceEnd, DeviceEnd, cfg(), vcpu()],
            "DEVICE_END",
            "a second device end",
        ),
        (
            vec![vcpu(), DeviceEnd, cfg(), vcpu()],
            "VCPU",
            "a second vCPU record",
        ),
        (
            vec![DeviceEnd, vcpu()],
            "END",
            "config or vCPU state is missing",
        ),
        (
            vec![DeviceEnd, cfg()],
            "END",
            "config or vCPU state is missing",
        ),
        (vec![chunk(), vcpu()], "END", "the device data never ended"),
    ];
    for (records, kind, why) in cases {
        let bytes = encode(&records);
        match read_all(&bytes[..]) {
            Err(StreamError::Order {
                kind: k, why: w, ..
            }) => assert_eq!((k, w), (kind, why), "{records:?}"),
            other => panic!("{records:?}: {other:?}"),
        }
    }
    // The minimal valid stream, and the vCPU before the device end is fine.
    for records in [
        vec![DeviceEnd, cfg(), vcpu()],
        vec![vcpu(), chunk(), DeviceEnd, cfg()],
    ] {
        assert_eq!(read_all(&encode(&records)[..]).unwrap(), records);
    }
}

#[test]
fn trailing_data_after_end_is_an_error_for_files() {
    let mut bytes = encode(&sample_records());
    let len = bytes.len() as u64;
    bytes.push(0);
    match read_all(&bytes[..]) {
        Err(StreamError::Trailing { offset }) => assert_eq!(offset, len),
        other => panic!("{other:?}"),
    }
}

/// A connection: the stream, then bytes that belong to the next protocol step, then
/// nothing yet (a read would block).
struct Connection {
    data: Cursor<Vec<u8>>,
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

#[test]
fn without_eof_check_stops_at_the_end_record() {
    let records = sample_records();
    let stream = encode(&records);
    let mut conn = Connection {
        data: Cursor::new([&stream[..], b"CTRL"].concat()),
    };
    let mut r = StreamReader::new(&mut conn, TrailerCheck::Enforce)
        .unwrap()
        .without_eof_check();
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, records);
    drop(r);
    // Nothing after the end record was consumed: the control message is intact.
    assert_eq!(conn.data.position(), stream.len() as u64);
    let mut rest = Vec::new();
    conn.data.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"CTRL");

    // With only the stream on the connection, the default reader waits for EOF (here: the
    // read would block, an I/O error) where `without_eof_check` does not read at all.
    let mut conn = Connection {
        data: Cursor::new(stream.clone()),
    };
    let mut r = StreamReader::new(&mut conn, TrailerCheck::Enforce).unwrap();
    let err = loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the default reader must look for EOF"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StreamError::Io { .. }), "{err:?}");
    let mut conn = Connection {
        data: Cursor::new(stream),
    };
    let mut r = StreamReader::new(&mut conn, TrailerCheck::Enforce)
        .unwrap()
        .without_eof_check();
    while r.next_record().unwrap().is_some() {}
}

/// A sink that fails after `room` bytes.
struct Full {
    room: usize,
}

impl Write for Full {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_carry_the_offset() {
    let hdr_len = header().encode().len();
    assert!(matches!(
        StreamWriter::new(Full { room: 3 }, &header()),
        Err(StreamError::Io { offset: 0, .. })
    ));
    let mut w = StreamWriter::new(Full { room: hdr_len + 8 }, &header()).unwrap();
    w.ram_zero(0, 1).unwrap_err();
    let mut w = StreamWriter::new(Full { room: hdr_len }, &header()).unwrap();
    match w.ram_pages(0, &page(1)) {
        Err(e @ StreamError::Io { .. }) => {
            assert!(e.to_string().contains(&format!("byte {hdr_len}")), "{e}");
            assert!(e.to_string().contains("disk full"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// A transport that fails (not EOF) after `ok` bytes.
struct Broken<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for Broken<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(ErrorKind::ConnectionReset.into());
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn read_errors_are_io_errors_not_truncation() {
    let bytes = encode(&sample_records());
    for ok in [0, 10, 40, 5000, bytes.len() - 40, bytes.len() - 5] {
        let err = read_all(Broken { data: &bytes, ok }).unwrap_err();
        assert!(matches!(err, StreamError::Io { .. }), "after {ok}: {err:?}");
        assert!(err.to_string().contains("I/O failed"), "{err}");
    }
}
