//! Stream-level tests of the format: round trips in every chunking, every error variant,
//! truncation and corruption at every byte, random input.

use proptest::prelude::*;

use super::*;

const TYPE: &str = "vgpu-sim-test";

/// Sections of the sample stream: (id, major, minor, payload).
fn sample_sections() -> Vec<(u32, u16, u16, Vec<u8>)> {
    vec![
        (1, 1, 0, (0..100u32).map(|i| i as u8).collect()),
        (2, 2, 3, Vec::new()),
        (3, 1, 0, (0..5000u32).map(|i| (i * 7 + 3) as u8).collect()),
        (1, 1, 1, b"again".to_vec()),
    ]
}

fn encode_stream(header: &ContextHeader, sections: &[(u32, u16, u16, Vec<u8>)]) -> Vec<u8> {
    let (mut enc, mut out) = ContextEncoder::new(header);
    for (id, major, minor, payload) in sections {
        out.extend(enc.section(*id, *major, *minor, payload).unwrap());
    }
    out.extend(enc.end());
    out
}

fn sample() -> Vec<u8> {
    encode_stream(&ContextHeader::new(TYPE).unwrap(), &sample_sections())
}

fn limits() -> ParserLimits {
    ParserLimits::from_caps(Some(TYPE.into()), &[(1, 100), (2, 0), (3, 1 << 20)])
}

/// A sink that reassembles sections and checks the call order: `begin`s, pieces and `end`s
/// in stream order, pieces inside their section, `end` after the section's last piece.
#[derive(Debug, Default)]
pub(super) struct Collect {
    pub(super) sections: Vec<(u32, u16, u16, Vec<u8>)>,
    /// The section receiving pieces.
    open: Option<SectionHeader>,
    /// Sections begun and not ended yet, oldest first.
    unended: std::collections::VecDeque<SectionHeader>,
    ended: usize,
    begins: usize,
    pub(super) reject_begin: Option<u32>,
    pub(super) reject_data: Option<u32>,
    pub(super) reject_end: Option<u32>,
}

impl SectionSink for Collect {
    fn begin(&mut self, hdr: &SectionHeader) -> Result<(), String> {
        if let Some(open) = self.open {
            let last = &self.sections.last().unwrap().3;
            assert_eq!(last.len() as u64, open.length, "begin inside a section");
        }
        self.begins += 1;
        if self.reject_begin == Some(hdr.id) {
            return Err("no thanks".into());
        }
        self.open = Some(*hdr);
        self.unended.push_back(*hdr);
        self.sections.push((
            hdr.id,
            hdr.major,
            hdr.minor,
            Vec::with_capacity(hdr.length as usize),
        ));
        Ok(())
    }

    fn data(&mut self, hdr: &SectionHeader, offset: u64, bytes: &[u8]) -> Result<(), String> {
        assert_eq!(self.open, Some(*hdr));
        assert!(!bytes.is_empty());
        if self.reject_data == Some(hdr.id) {
            return Err("bad register value".into());
        }
        let buf = &mut self.sections.last_mut().unwrap().3;
        assert_eq!(buf.len() as u64, offset, "pieces out of order");
        buf.extend_from_slice(bytes);
        assert!(buf.len() as u64 <= hdr.length);
        Ok(())
    }

    fn end(&mut self, hdr: &SectionHeader) -> Result<(), String> {
        assert_eq!(self.unended.pop_front(), Some(*hdr), "end out of order");
        assert_eq!(self.sections[self.ended].3.len() as u64, hdr.length);
        self.ended += 1;
        if self.reject_end == Some(hdr.id) {
            return Err("inconsistent".into());
        }
        Ok(())
    }
}

/// Feed `stream` in chunks of the given sizes (cycled), then finish.
fn parse_chunked(stream: &[u8], sizes: &[usize], sink: &mut Collect) -> Result<ContextParser> {
    let mut p = ContextParser::new(limits());
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let (head, tail) = rest.split_at(n);
        p.feed(head, sink)?;
        rest = tail;
        i += 1;
    }
    p.finish()?;
    Ok(p)
}

fn parse(stream: &[u8]) -> Result<Collect> {
    let mut sink = Collect::default();
    parse_chunked(stream, &[stream.len().max(1)], &mut sink)?;
    Ok(sink)
}

#[test]
fn round_trip_whole() {
    let stream = sample();
    let mut sink = Collect::default();
    let p = parse_chunked(&stream, &[stream.len()], &mut sink).unwrap();
    assert_eq!(sink.sections, sample_sections());
    assert!(p.is_complete());
    assert_eq!(p.position(), stream.len() as u64);
    assert_eq!(p.header().unwrap(), &ContextHeader::new(TYPE).unwrap());
}

#[test]
fn round_trip_one_byte_at_a_time() {
    let stream = sample();
    let mut sink = Collect::default();
    let p = parse_chunked(&stream, &[1], &mut sink).unwrap();
    assert_eq!(sink.sections, sample_sections());
    assert!(p.is_complete());
}

#[test]
fn round_trip_every_fixed_chunk_size() {
    let stream = sample();
    for size in 1..=64 {
        let mut sink = Collect::default();
        parse_chunked(&stream, &[size], &mut sink).unwrap();
        assert_eq!(sink.sections, sample_sections(), "chunk size {size}");
    }
}

#[test]
fn empty_feeds_are_harmless() {
    let stream = sample();
    let mut p = ContextParser::new(limits());
    let mut sink = Collect::default();
    for b in &stream {
        p.feed(&[], &mut sink).unwrap();
        p.feed(std::slice::from_ref(b), &mut sink).unwrap();
    }
    p.feed(&[], &mut sink).unwrap();
    p.finish().unwrap();
}

#[test]
fn a_newer_minor_is_accepted() {
    let header = ContextHeader {
        minor: FORMAT_MINOR + 3,
        ..ContextHeader::new(TYPE).unwrap()
    };
    let stream = encode_stream(&header, &sample_sections());
    let mut p = ContextParser::new(limits());
    p.feed(&stream, &mut Collect::default()).unwrap();
    p.finish().unwrap();
    assert_eq!(p.header().unwrap().minor, FORMAT_MINOR + 3);
}

#[test]
fn bad_magic() {
    let mut s = sample();
    s[3] ^= 1;
    assert_eq!(parse(&s).unwrap_err(), FormatError::BadMagic { offset: 3 });
    // Detected as soon as the first wrong byte arrives.
    let mut p = ContextParser::new(limits());
    assert_eq!(
        p.feed(b"X", &mut Collect::default()),
        Err(FormatError::BadMagic { offset: 0 })
    );
}

#[test]
fn unsupported_major() {
    let header = ContextHeader {
        major: FORMAT_MAJOR + 1,
        ..ContextHeader::new(TYPE).unwrap()
    };
    let s = encode_stream(&header, &[]);
    assert_eq!(
        parse(&s).unwrap_err(),
        FormatError::UnsupportedVersion {
            offset: 8,
            major: FORMAT_MAJOR + 1,
            minor: FORMAT_MINOR
        }
    );
}

#[test]
fn bad_mdev_type_name() {
    let long = ContextHeader {
        mdev_type: "x".repeat(MDEV_TYPE_NAME_MAX + 1),
        ..ContextHeader::new(TYPE).unwrap()
    };
    let e = parse(&encode_stream(&long, &[])).unwrap_err();
    assert!(
        matches!(e, FormatError::BadMdevTypeName { offset: 12, .. }),
        "{e}"
    );

    let mut s = ContextHeader::new("ab").unwrap().encode();
    s[CONTEXT_HEADER_FIXED_SIZE] = 0xff;
    let e = parse(&s).unwrap_err();
    assert!(
        matches!(e, FormatError::BadMdevTypeName { offset: 14, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("UTF-8"), "{e}");

    let mut s = ContextHeader::new("ab").unwrap().encode();
    s[12] = 0;
    s[13] = 0;
    assert!(matches!(
        parse(&s).unwrap_err(),
        FormatError::BadMdevTypeName { offset: 12, .. }
    ));
}

#[test]
fn wrong_mdev_type() {
    let s = encode_stream(&ContextHeader::new("other-type").unwrap(), &[]);
    assert_eq!(
        parse(&s).unwrap_err(),
        FormatError::WrongMdevType {
            offset: 14,
            expected: TYPE.into(),
            found: "other-type".into()
        }
    );
}

#[test]
fn section_too_long_is_refused_before_the_sink_sees_it() {
    let header = ContextHeader::new(TYPE).unwrap();
    let s = encode_stream(&header, &[(1, 1, 0, vec![0; 101])]);
    let mut sink = Collect::default();
    let e = parse_chunked(&s, &[s.len()], &mut sink).unwrap_err();
    assert_eq!(
        e,
        FormatError::SectionTooLong {
            offset: header.encoded_len() as u64,
            id: 1,
            length: 101,
            cap: 100
        }
    );
    assert_eq!(sink.begins, 0);
}

#[test]
fn a_huge_declared_length_allocates_nothing() {
    let header = ContextHeader::new(TYPE).unwrap();
    let (mut enc, mut s) = ContextEncoder::new(&header);
    let (_, hdr) = enc.begin_section(3, 1, 0, u64::MAX).unwrap();
    s.extend_from_slice(&hdr);
    assert!(matches!(
        parse(&s).unwrap_err(),
        FormatError::SectionTooLong {
            length: u64::MAX,
            ..
        }
    ));
}

#[test]
fn unknown_section() {
    let header = ContextHeader::new(TYPE).unwrap();
    let s = encode_stream(&header, &[(9, 1, 0, vec![1, 2, 3])]);
    assert_eq!(
        parse(&s).unwrap_err(),
        FormatError::UnknownSection {
            offset: header.encoded_len() as u64,
            id: 9
        }
    );
}

#[test]
fn digest_mismatch_in_a_payload() {
    let header = ContextHeader::new(TYPE).unwrap();
    let mut s = encode_stream(&header, &[(1, 1, 0, vec![5; 10])]);
    let payload_at = header.encoded_len() + SECTION_HEADER_SIZE;
    s[payload_at + 4] ^= 0x10;
    let mut sink = Collect::default();
    let e = parse_chunked(&s, &[3], &mut sink).unwrap_err();
    assert_eq!(
        e,
        FormatError::DigestMismatch {
            offset: (payload_at + 10) as u64,
            id: 1
        }
    );
    assert!(e.to_string().contains("section 1"), "{e}");
}

#[test]
fn digest_mismatch_in_the_stream_chain() {
    // Dropping a whole section leaves every section digest valid: the chain catches it.
    let header = ContextHeader::new(TYPE).unwrap();
    let full = encode_stream(&header, &sample_sections());
    let first = section_encoded_len(100) as usize;
    let mut dropped = full[..header.encoded_len()].to_vec();
    dropped.extend_from_slice(&full[header.encoded_len() + first..]);
    let e = parse(&dropped).unwrap_err();
    assert_eq!(
        e,
        FormatError::DigestMismatch {
            offset: (dropped.len() - DIGEST_SIZE) as u64,
            id: END_SECTION_ID
        }
    );
    assert!(e.to_string().contains("stream digest"), "{e}");
}

#[test]
fn rejected_by_the_sink() {
    let s = sample();
    let header_len = ContextHeader::new(TYPE).unwrap().encoded_len() as u64;
    for (which, expected_offset) in [
        (0, header_len),
        (1, header_len + SECTION_HEADER_SIZE as u64),
        (
            2,
            header_len + section_encoded_len(100) - DIGEST_SIZE as u64,
        ),
    ] {
        let mut sink = Collect::default();
        match which {
            0 => sink.reject_begin = Some(1),
            1 => sink.reject_data = Some(1),
            _ => sink.reject_end = Some(1),
        }
        let e = parse_chunked(&s, &[s.len()], &mut sink).unwrap_err();
        assert!(
            matches!(&e, FormatError::Rejected { offset, id: 1, .. } if *offset == expected_offset),
            "{which}: {e}"
        );
    }
}

#[test]
fn truncated() {
    let s = sample();
    let e = parse(&s[..s.len() - END_SECTION_SIZE]).unwrap_err();
    assert_eq!(
        e,
        FormatError::Truncated {
            offset: (s.len() - END_SECTION_SIZE) as u64,
            what: "before the end section".into()
        }
    );
    let e = parse(&s[..60]).unwrap_err();
    assert!(
        e.to_string().contains("inside the payload of section 1"),
        "{e}"
    );
}

#[test]
fn trailing_data() {
    let mut s = sample();
    let len = s.len() as u64;
    s.push(0);
    assert_eq!(
        parse(&s).unwrap_err(),
        FormatError::TrailingData { offset: len }
    );
}

#[test]
fn end_section_with_a_length() {
    let header = ContextHeader::new(TYPE).unwrap();
    let mut s = encode_stream(&header, &[]);
    let end_at = header.encoded_len();
    s[end_at + 8] = 1;
    assert_eq!(
        parse(&s).unwrap_err(),
        FormatError::SectionTooLong {
            offset: end_at as u64,
            id: END_SECTION_ID,
            length: 1,
            cap: 0
        }
    );
}

#[test]
fn a_failed_parser_stays_failed() {
    let mut s = sample();
    s[0] = b'x';
    let mut p = ContextParser::new(limits());
    let mut sink = Collect::default();
    let e = p.feed(&s[..1], &mut sink).unwrap_err();
    assert_eq!(p.feed(&sample()[1..], &mut sink), Err(e.clone()));
    assert_eq!(p.finish(), Err(e));
    assert!(!p.is_complete());
}

#[test]
fn every_truncation_is_an_error() {
    let s = encode_stream(
        &ContextHeader::new(TYPE).unwrap(),
        &[(1, 1, 0, vec![1, 2, 3]), (2, 1, 0, vec![])],
    );
    for cut in 0..s.len() {
        for size in [1, 5, cut.max(1)] {
            let mut sink = Collect::default();
            let e = parse_chunked(&s[..cut], &[size], &mut sink).unwrap_err();
            assert!(
                matches!(e, FormatError::Truncated { offset, .. } if offset == cut as u64),
                "cut at {cut}: {e}"
            );
        }
    }
}

#[test]
fn every_corrupted_byte_is_an_error() {
    let s = encode_stream(
        &ContextHeader::new(TYPE).unwrap(),
        &[
            (1, 1, 0, vec![1, 2, 3]),
            (2, 1, 0, vec![]),
            (3, 2, 1, vec![9; 40]),
        ],
    );
    // The permissive limits leave every id known and the type unchecked: the digests alone
    // must catch the corruption.
    for i in 0..s.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut c = s.clone();
            c[i] ^= mask;
            for size in [1, 7, c.len()] {
                let mut p = ContextParser::new(ParserLimits::any_section(1 << 20));
                let r = feed_in(&mut p, &c, size).and_then(|()| p.finish());
                assert!(r.is_err(), "byte {i} ^ {mask:#x} went unnoticed");
            }
        }
    }
}

fn feed_in(p: &mut ContextParser, bytes: &[u8], size: usize) -> Result<()> {
    bytes
        .chunks(size)
        .try_for_each(|c| p.feed(c, &mut DiscardSink))
}

#[test]
fn scan_lists_verified_sections() {
    let s = sample();
    let summary = inspect(&s, limits()).unwrap();
    assert_eq!(summary.header.mdev_type, TYPE);
    assert_eq!(summary.length, s.len() as u64);
    let ids: Vec<u32> = summary.sections.iter().map(|i| i.header.id).collect();
    assert_eq!(ids, [1, 2, 3, 1, END_SECTION_ID]);
    for info in &summary.sections {
        let at = info.offset as usize;
        let mut h = [0u8; SECTION_HEADER_SIZE];
        h.copy_from_slice(&s[at..at + SECTION_HEADER_SIZE]);
        assert_eq!(SectionHeader::decode(&h), info.header);
        let d = at + SECTION_HEADER_SIZE + info.header.length as usize;
        assert_eq!(info.digest_hex, hex(&s[d..d + DIGEST_SIZE]));
        assert_eq!(info.digest_hex.len(), 2 * DIGEST_SIZE);
    }
    assert_eq!(scan(&s, limits()).unwrap(), summary.sections);
    assert!(scan(&s[..s.len() - 1], limits()).is_err());
}

proptest! {
    #[test]
    fn round_trip_in_random_chunks(sizes in proptest::collection::vec(1usize..600, 1..40)) {
        let stream = sample();
        let mut sink = Collect::default();
        parse_chunked(&stream, &sizes, &mut sink).unwrap();
        prop_assert_eq!(sink.sections, sample_sections());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                size in 1usize..64) {
        let mut p = ContextParser::new(ParserLimits::any_section(1 << 16));
        let r = feed_in(&mut p, &bytes, size).and_then(|()| p.finish());
        prop_assert!(r.is_err());
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        size in 1usize..64,
    ) {
        let mut s = ContextHeader::new(TYPE).unwrap().encode();
        s.extend_from_slice(&bytes);
        let mut p = ContextParser::new(ParserLimits::any_section(1 << 16));
        let r = feed_in(&mut p, &s, size).and_then(|()| p.finish());
        prop_assert!(r.is_err());
    }

    #[test]
    fn random_sections_round_trip(
        sections in proptest::collection::vec(
            (1u32..4, any::<u16>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..6,
        ),
        size in 1usize..128,
    ) {
        let sections: Vec<_> = sections
            .into_iter()
            .map(|(id, ma, mi, p)| (id, ma, mi, if id == 2 { Vec::new() } else { p.into_iter().take(100).collect() }))
            .collect();
        let stream = encode_stream(&ContextHeader::new(TYPE).unwrap(), &sections);
        let mut sink = Collect::default();
        parse_chunked(&stream, &[size], &mut sink).unwrap();
        prop_assert_eq!(sink.sections, sections);
    }
}
