//! What the reader refuses: header fields, record kinds and lengths, order, trailing
//! data, and I/O errors, each named with its offset.

use super::*;

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
