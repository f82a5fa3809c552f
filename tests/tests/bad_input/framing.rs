//! Well-framed streams with wrong contents: versions, types, lengths, kinds, and a
//! device-only context damaged or cut short.

use super::*;

#[test]
fn wrong_stream_version_is_refused() {
    let s = &fixture().stream;
    for major in [0u16, 2, 0x100, u16::MAX] {
        let mut head = s[..64].to_vec();
        head[8..10].copy_from_slice(&major.to_le_bytes());
        let input = head.as_slice().chain(&s[64..]);
        let msg = restore_err(input, "major version");
        assert!(
            msg.contains(&format!("stream format version {major}.0 is not supported")),
            "{msg}"
        );
    }
}

#[test]
fn wrong_mdev_type_is_refused_naming_both_types() {
    // The stream's header says vgpu-512; the device context inside says vgpu-64.
    let (h, recs) = decode(&fixture().stream);
    assert_eq!(h.mdev_type, "vgpu-64");
    let h512 = Header {
        mdev_type: "vgpu-512".into(),
        ..h
    };
    let bytes = encode(&h512, &recs);
    let msg = restore_err(&bytes[..], "vgpu-512 header over a vgpu-64 context");
    assert!(
        msg.contains("vgpu-512") && msg.contains("vgpu-64"),
        "names both types: {msg}"
    );
    // A type nobody offers.
    let hx = Header {
        mdev_type: "vgpu-9999".into(),
        ..h512
    };
    let msg = restore_err(&encode(&hx, &recs)[..], "unknown type");
    assert!(msg.contains("vgpu-9999"), "{msg}");
    // And the format layer itself, asked for a vgpu-512 context.
    let err = format::inspect(
        &fixture().context,
        vgpu_sim::inspect::context_limits(Some("vgpu-512")),
    )
    .unwrap_err();
    assert!(
        matches!(err, format::FormatError::WrongMdevType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("vgpu-512"), "{err}");
}

#[test]
fn oversized_record_length_is_refused_naming_the_cap() {
    let s = &fixture().stream;
    for span in [
        spans(RecordKind::RamPages)[0],
        spans(RecordKind::DeviceData)[1],
        spans(RecordKind::Config)[0],
    ] {
        let mut framing = s[span.offset..span.offset + 8].to_vec();
        framing[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let input = s[..span.offset]
            .chain(framing.as_slice())
            .chain(&s[span.offset + 8..]);
        let msg = restore_err(input, "length 0xFFFF_FFFF");
        assert!(
            msg.contains("length 4294967295")
                && msg.contains(&format!("over the {}-byte cap", vmm::stream::MAX_RECORD)),
            "{msg}"
        );
    }
}

#[test]
fn unknown_record_kind_is_refused() {
    let s = &fixture().stream;
    let span = spans(RecordKind::DeviceEnd)[0];
    for kind in [0u32, 9, 0x42, 0xfe, 0x100] {
        let mut framing = s[span.offset..span.offset + 8].to_vec();
        framing[0..4].copy_from_slice(&kind.to_le_bytes());
        let input = s[..span.offset]
            .chain(framing.as_slice())
            .chain(&s[span.offset + 8..]);
        let msg = restore_err(input, "unknown kind");
        assert!(
            msg.contains(&format!(
                "unknown record kind {kind:#x} at byte {}",
                span.offset
            )),
            "{msg}"
        );
    }
}

#[test]
fn well_framed_but_wrong_content_is_refused() {
    // Records re-encoded with a correct stream digest: only the content checks remain.
    let (h, recs) = decode(&fixture().stream);
    let chunk_at: Vec<usize> = recs
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::DeviceData(_)))
        .map(|(i, _)| i)
        .collect();
    let edit = |f: &dyn Fn(&mut Vec<Record>)| {
        let mut r = recs.clone();
        f(&mut r);
        encode(&h, &r)
    };
    let cases: Vec<(Vec<u8>, &str, &[&str])> = vec![
        (
            edit(&|r| {
                r.remove(*chunk_at.last().unwrap());
            }),
            "the last device chunk missing",
            &["rejected"],
        ),
        (
            edit(&|r| r.swap(chunk_at[0], chunk_at[1])),
            "two device chunks swapped",
            &["rejected"],
        ),
        (
            edit(&|r| {
                if let Record::DeviceData(c) = &mut r[chunk_at[2]] {
                    c[100] ^= 0x20;
                }
            }),
            "a changed graphics memory byte",
            &["rejected", "digest"],
        ),
        (
            edit(&|r| {
                for rec in r.iter_mut() {
                    if let Record::Config(c) = rec {
                        c.truncate(c.len() / 2);
                    }
                }
            }),
            "half a config record",
            &["config space"],
        ),
        (
            edit(&|r| {
                for rec in r.iter_mut() {
                    if let Record::Config(c) = rec {
                        // Vendor ID: a read-only register that must equal the target's
                        // (re-encoded, so the state's own checksum is right).
                        let mut st = ConfigSpaceState::from_bytes(c).unwrap();
                        st.config[0] ^= 0xff;
                        *c = st.to_bytes();
                    }
                }
            }),
            "another vendor ID in config space",
            &["config space"],
        ),
        (
            edit(&|r| {
                for rec in r.iter_mut() {
                    if let Record::Vcpu(v) = rec {
                        v.pop();
                    }
                }
            }),
            "a short vCPU record",
            &["vCPU"],
        ),
        (
            edit(&|r| {
                r.push(Record::RamPages {
                    gpa: h.ram_size,
                    data: vec![0; 4096],
                })
            }),
            "a RAM page past guest RAM",
            &["outside guest RAM"],
        ),
    ];
    for (bytes, what, words) in cases {
        let msg = restore_err(&bytes[..], what);
        for w in words {
            assert!(msg.contains(w), "{what}: {msg} (want {w:?})");
        }
    }
}

#[test]
fn device_only_context_with_a_flipped_byte_is_refused() {
    let ctx = &fixture().context;
    let limits = || vgpu_sim::inspect::context_limits(None);
    let summary = format::inspect(ctx, limits()).unwrap();
    assert_eq!(summary.length, ctx.len() as u64);
    assert!(vgpu_sim::inspect::summarize(ctx).is_ok());
    let mut positions = vec![0usize, 8, 10, 12, 14, ctx.len() - 1, ctx.len() - 40];
    for s in &summary.sections {
        let o = s.offset as usize;
        positions.extend([o, o + 9, o + 16, o + 16 + s.header.length as usize]);
    }
    let mut c = ctx.clone();
    for pos in positions {
        c[pos] ^= 0x04;
        let err = format::inspect(&c, limits()).expect_err(&format!("flip at {pos}"));
        assert!(err.to_string().starts_with("byte "), "{err}");
        if pos % 2 == 0 {
            let err =
                vgpu_sim::inspect::summarize(&c).expect_err(&format!("summarize, flip at {pos}"));
            assert!(!err.is_empty());
        }
        c[pos] ^= 0x04;
    }
    assert!(c == *ctx);
}

#[test]
fn device_only_context_cut_short_is_refused() {
    let ctx = &fixture().context;
    let limits = || vgpu_sim::inspect::context_limits(None);
    let end = format::END_SECTION_SIZE;
    for n in [
        0,
        7,
        20,
        4096,
        ctx.len() / 2,
        ctx.len() - end,
        ctx.len() - end + 3,
        ctx.len() - 1,
    ] {
        let err = format::inspect(&ctx[..n], limits()).expect_err(&format!("cut at {n}"));
        assert!(
            matches!(err, format::FormatError::Truncated { .. }),
            "cut at {n}: {err}"
        );
        assert!(err.to_string().contains("stream ends"), "{err}");
        assert!(
            vgpu_sim::inspect::summarize(&ctx[..n]).is_err(),
            "cut at {n}"
        );
    }
    // Fed to the push parser in odd-sized pieces, the cut is still found at finish.
    let mut p = format::ContextParser::new(limits());
    for piece in ctx[..ctx.len() - 1].chunks(65_537) {
        p.feed(piece, &mut format::DiscardSink).unwrap();
    }
    assert!(!p.is_complete());
    assert!(matches!(
        p.finish(),
        Err(format::FormatError::Truncated { .. })
    ));
    // One byte too many.
    let mut longer = ctx.clone();
    longer.push(0);
    assert!(matches!(
        format::inspect(&longer, limits()),
        Err(format::FormatError::TrailingData { .. })
    ));
}
