//! The parser on streams large enough that a batch is hashed on several cores: the same
//! sections, the same errors at the same offsets as when it is fed in pieces too small to
//! spread (which hash on one thread), and errors in stream order across a batch.

use super::tests::Collect;
use super::*;

const TYPE: &str = "vgpu-sim-test";
/// Sections of 100 KiB and a bit: several per batch, some straddling batch boundaries.
const SECTION: usize = 100 * 1024 + 13;
const SECTIONS: u32 = 30;

fn limits() -> ParserLimits {
    ParserLimits::any_section(1 << 20)
}

fn sections() -> Vec<(u32, Vec<u8>)> {
    (1..=SECTIONS)
        .map(|id| {
            let payload = (0..SECTION)
                .map(|i| (i as u32 * 7 + id * 13) as u8)
                .collect();
            (id, payload)
        })
        .collect()
}

fn encode(sections: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let (mut enc, mut out) = ContextEncoder::new(&ContextHeader::new(TYPE).unwrap());
    for (id, payload) in sections {
        out.extend(enc.section(*id, 1, 0, payload).unwrap());
    }
    out.extend(enc.end());
    out
}

fn header_len() -> usize {
    ContextHeader::new(TYPE).unwrap().encoded_len()
}

/// Offset of section `i` (0-based) of [`sections`] in its stream.
fn section_at(i: usize) -> usize {
    header_len() + i * section_encoded_len(SECTION as u64) as usize
}

/// Parse `stream` fed in pieces of `piece` bytes into `sink`.
fn parse_in(stream: &[u8], piece: usize, sink: &mut Collect) -> Result<()> {
    let mut p = ContextParser::new(limits());
    for c in stream.chunks(piece) {
        p.feed(c, sink)?;
    }
    p.finish()
}

/// Feeds that make batches of several sections (hashed on several cores where there are
/// several) and the 4 KiB feeds that hash on one thread.
const PARALLEL_FEEDS: [usize; 3] = [usize::MAX, BATCH, 700_001];
const SERIAL_FEED: usize = 4096;

#[test]
fn large_streams_round_trip_in_any_batching() {
    let secs = sections();
    let s = encode(&secs);
    for piece in PARALLEL_FEEDS.into_iter().chain([SERIAL_FEED]) {
        let mut sink = Collect::default();
        parse_in(&s, piece, &mut sink).unwrap();
        assert_eq!(sink.sections.len(), secs.len(), "feed {piece}");
        for ((id, payload), got) in secs.iter().zip(&sink.sections) {
            assert_eq!((got.0, &got.3), (*id, payload), "feed {piece}");
        }
    }
    let summary = inspect(&s, limits()).unwrap();
    assert_eq!(summary.sections.len(), secs.len() + 1);
    assert_eq!(summary.sections[3].offset, section_at(3) as u64);
}

/// The error `stream` gets fed in batches, the same as fed in small pieces.
fn same_error_in_any_batching(stream: &[u8], what: &str) -> FormatError {
    let serial = parse_in(stream, SERIAL_FEED, &mut Collect::default())
        .expect_err(&format!("{what}: refused on one thread"));
    for piece in PARALLEL_FEEDS {
        let e = parse_in(stream, piece, &mut Collect::default())
            .expect_err(&format!("{what}: refused fed {piece} at a time"));
        assert_eq!(e, serial, "{what}: fed {piece} at a time");
    }
    serial
}

#[test]
fn a_corrupted_byte_anywhere_in_a_large_stream_is_the_same_error() {
    let s = encode(&sections());
    let mut cases = Vec::new();
    for i in [0usize, 4, 9, 17, 29] {
        let at = section_at(i);
        cases.push((at + 4 + 2, format!("section {i} version")));
        cases.push((
            at + SECTION_HEADER_SIZE + SECTION / 2,
            format!("section {i} payload"),
        ));
        cases.push((
            at + SECTION_HEADER_SIZE + SECTION + 5,
            format!("section {i} digest"),
        ));
    }
    cases.push((s.len() - 3, "stream digest".to_string()));
    for (pos, what) in cases {
        let mut c = s.clone();
        c[pos] ^= 0x40;
        let e = same_error_in_any_batching(&c, &what);
        assert!(
            matches!(e, FormatError::DigestMismatch { .. }),
            "{what}: {e}"
        );
        if let FormatError::DigestMismatch { offset, .. } = e {
            // Reported at the digest of the section the corruption is in.
            let pos = pos as u64;
            assert!(
                offset + DIGEST_SIZE as u64 > pos && offset <= pos + SECTION as u64 + 64,
                "{what}: {e} is not the digest of the section with the corruption at {pos}"
            );
        }
    }
}

#[test]
fn reordered_dropped_and_repeated_sections_fail_the_stream_digest() {
    let secs = sections();
    let len = section_encoded_len(SECTION as u64) as usize;
    let s = encode(&secs);
    let section = |i: usize| &s[section_at(i)..section_at(i) + len];
    let head = &s[..header_len()];
    let end = &s[section_at(secs.len())..];
    let mut swapped = head.to_vec();
    let mut dropped = head.to_vec();
    let mut repeated = head.to_vec();
    for i in 0..secs.len() {
        let j = match i {
            5 => 6,
            6 => 5,
            i => i,
        };
        swapped.extend_from_slice(section(j));
        if i != 12 {
            dropped.extend_from_slice(section(i));
        }
        repeated.extend_from_slice(section(i));
        if i == 20 {
            repeated.extend_from_slice(section(i));
        }
    }
    for (mut c, what) in [
        (swapped, "swapped"),
        (dropped, "dropped"),
        (repeated, "repeated"),
    ] {
        c.extend_from_slice(end);
        let e = same_error_in_any_batching(&c, what);
        assert_eq!(
            e,
            FormatError::DigestMismatch {
                offset: (c.len() - DIGEST_SIZE) as u64,
                id: END_SECTION_ID
            },
            "{what}"
        );
    }
}

#[test]
fn a_truncated_large_stream_is_refused() {
    let s = encode(&sections());
    for cut in [
        section_at(7),
        section_at(7) + 20,
        section_at(19) + SECTION,
        s.len() - 1,
    ] {
        let e = same_error_in_any_batching(&s[..cut], &format!("cut at {cut}"));
        assert!(
            matches!(e, FormatError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn errors_in_one_batch_come_in_stream_order() {
    let s = encode(&sections());
    let mut corrupt = s.clone();
    corrupt[section_at(2) + SECTION_HEADER_SIZE + 10] ^= 1;
    let digest_of_2 = FormatError::DigestMismatch {
        offset: (section_at(3) - DIGEST_SIZE) as u64,
        id: 3,
    };
    // Section 3 (id 3, index 2) is corrupted; the sink refuses section 5's start or a
    // piece of it, or section 5's end: all in the same batch, after the bad digest.
    for reject in 0..3 {
        let mut sink = Collect::default();
        match reject {
            0 => sink.reject_begin = Some(5),
            1 => sink.reject_data = Some(5),
            _ => sink.reject_end = Some(5),
        }
        assert_eq!(
            parse_in(&corrupt, BATCH, &mut sink),
            Err(digest_of_2.clone())
        );
    }
    // The other way round: the sink refuses section 3 (index 2), section 5 is corrupted.
    let mut corrupt = s.clone();
    corrupt[section_at(4) + SECTION_HEADER_SIZE + 10] ^= 1;
    let mut sink = Collect::default();
    sink.reject_begin = Some(3);
    let e = parse_in(&corrupt, BATCH, &mut sink).unwrap_err();
    assert_eq!(
        e,
        FormatError::Rejected {
            offset: section_at(2) as u64,
            id: 3,
            reason: "no thanks".into()
        }
    );
    // A refused end after a good digest.
    let mut sink = Collect::default();
    sink.reject_end = Some(4);
    let e = parse_in(&s, BATCH, &mut sink).unwrap_err();
    assert!(
        matches!(e, FormatError::Rejected { id: 4, offset, .. } if offset == (section_at(4) - DIGEST_SIZE) as u64),
        "{e}"
    );
}
