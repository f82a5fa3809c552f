//! Unit tests of the zero-copy paths: [`StreamReader::next_record_into`] must accept exactly
//! what [`StreamReader::next_record`] accepts and refuse every corrupted byte the same way,
//! and [`StreamWriter::ram_pages_bulk`] must write what [`StreamWriter::ram_pages`] writes.

use std::io::{BufReader, Read};

use super::tests::{encode, read_all, sample_records, Trickle, RAM};
use super::*;

/// A sink that applies to a RAM image and collects the device bytes.
struct Image {
    ram: Vec<u8>,
    device: Vec<u8>,
    /// Fail the device piece that would take the device data past this many bytes.
    device_limit: usize,
}

impl Image {
    fn new() -> Self {
        Self {
            ram: vec![0; RAM as usize],
            device: Vec::new(),
            device_limit: usize::MAX,
        }
    }
}

impl RecordSink for Image {
    fn ram(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), SinkError> {
        let at = gpa as usize;
        self.ram[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn device(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if self.device.len() + bytes.len() > self.device_limit {
            return Err("the device refused the data".into());
        }
        self.device.extend_from_slice(bytes);
        Ok(())
    }
}

/// Read a whole stream through the sink: the image and the other records, or the error.
fn read_into<R: Read>(input: R, cap: usize) -> Result<(Image, Vec<Record>), StreamError> {
    let mut r = StreamReader::new(BufReader::with_capacity(cap, input), TrailerCheck::Enforce)?;
    let mut img = Image::new();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record_into(&mut img)? {
        out.push(rec);
    }
    Ok((img, out))
}

/// What the copying reader's records amount to: the image and the other records.
fn expected() -> (Image, Vec<Record>) {
    let mut img = Image::new();
    let mut rest = Vec::new();
    for rec in read_all(&encode(&sample_records())[..]).unwrap() {
        match rec {
            Record::RamPages { gpa, data } => img.ram(gpa, &data).unwrap(),
            Record::DeviceData(d) => img.device(&d).unwrap(),
            other => rest.push(other),
        }
    }
    (img, rest)
}

#[test]
fn the_sink_gets_what_the_records_hold_whatever_the_buffer_size() {
    let bytes = encode(&sample_records());
    let (want, want_rest) = expected();
    assert!(want.ram.iter().any(|&b| b != 0) && !want.device.is_empty());
    for cap in [1, 7, 4096, 5000, 1 << 20] {
        let (img, rest) = read_into(&bytes[..], cap).unwrap();
        assert_eq!(img.ram, want.ram, "buffer of {cap}");
        assert_eq!(img.device, want.device, "buffer of {cap}");
        assert_eq!(rest, want_rest, "buffer of {cap}");
    }
    let trickle = Trickle {
        data: &bytes,
        interrupt: false,
    };
    let (img, rest) = read_into(trickle, 64).unwrap();
    assert_eq!((img.ram, rest), (want.ram, want_rest));
}

#[test]
fn every_byte_flip_outside_device_payloads_is_refused_through_the_sink() {
    let bytes = encode(&sample_records());
    let device = super::tests::device_payloads(&bytes);
    let mut checked = 0;
    for i in 0..bytes.len() {
        if device.iter().any(|r| r.contains(&i)) {
            continue;
        }
        for mask in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            assert!(
                read_into(&b[..], 4096).is_err(),
                "flip {mask:#x} at byte {i} was accepted"
            );
            checked += 1;
        }
    }
    assert!(checked > 2 * 8000, "{checked}");
}

#[test]
fn truncation_at_every_offset_is_an_error_through_the_sink() {
    let bytes = encode(&sample_records());
    for n in 0..bytes.len() {
        match read_into(&bytes[..n], 1000) {
            Err(StreamError::Truncated { offset, .. }) => {
                assert_eq!(offset, n as u64, "truncated at {n}: offset in the error")
            }
            Err(e) => panic!("truncated at {n}: {e}"),
            Ok(_) => panic!("truncated at {n} of {} was accepted", bytes.len()),
        }
    }
}

#[test]
fn a_sink_refusal_stops_the_stream_and_names_the_offset() {
    let bytes = encode(&sample_records());
    let first = super::tests::device_payloads(&bytes)[0].clone();
    let mut r = StreamReader::new(&bytes[..], TrailerCheck::Enforce).unwrap();
    let mut img = Image::new();
    img.device_limit = 10;
    let err = loop {
        match r.next_record_into(&mut img) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a refused chunk must stop the stream"),
            Err(e) => break e,
        }
    };
    match err {
        StreamError::Sink { offset, source } => {
            assert_eq!(offset, first.start as u64);
            assert!(source.to_string().contains("refused"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    assert!(img.device.is_empty());
}

#[test]
fn pages_outside_guest_ram_never_reach_the_sink() {
    let mut w = StreamWriter::new(Vec::new(), &super::tests::header()).unwrap();
    // Two pages, the second past the end of guest RAM.
    w.ram_pages(RAM - 4096, &[0x5a; 8192]).unwrap();
    let bytes = w.finish().unwrap().0;
    let mut r = StreamReader::new(&bytes[..], TrailerCheck::Enforce).unwrap();
    let mut img = Image::new();
    assert!(matches!(
        r.next_record_into(&mut img),
        Err(StreamError::BadAddress { .. })
    ));
    assert!(img.ram.iter().all(|&b| b == 0), "nothing may be applied");
}

#[test]
fn bulk_page_writes_are_the_same_bytes_as_copied_ones() {
    let h = super::tests::header();
    let pages: Vec<u8> = (0..3 * 4096u32).map(|i| ((i * 31) >> 3) as u8).collect();
    let mut a = StreamWriter::new(Vec::new(), &h).unwrap();
    a.ram_pages(0x2000, &pages).unwrap();
    a.device_end().unwrap();
    let mut b = StreamWriter::new(Vec::new(), &h).unwrap();
    let mut buf = pages.clone();
    buf.extend_from_slice(&[0xee; 4096]); // room past the run is not sent
    let mut back = b.ram_pages_bulk(0x2000, buf, pages.len()).unwrap();
    assert!(back.len() >= pages.len());
    back[..pages.len()].copy_from_slice(&pages);
    // The same again with the first two pages hashed ahead, as the source does.
    let mut c = StreamWriter::new(Vec::new(), &h).unwrap();
    c.ram_ahead(&pages[..4096]);
    c.ram_ahead(&pages[4096..8192]);
    c.ram_pages_bulk(0x2000, back, pages.len()).unwrap();
    b.device_end().unwrap();
    c.device_end().unwrap();
    assert_eq!(a.stats(), b.stats());
    let (a, b, c) = (
        a.finish().unwrap().0,
        b.finish().unwrap().0,
        c.finish().unwrap().0,
    );
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert!(
        read_all(&a[..]).is_err(),
        "no config: refused, but only after the digest"
    );
    assert!(matches!(read_all(&a[..]), Err(StreamError::Order { .. })));
}
