//! The push parser: decodes a context stream fed in chunks of any size.

use std::fmt;
use std::mem;

use sha2::{Digest, Sha256};

use super::error::{FormatError, Result};
use super::header::{decode_fixed, hex, ContextHeader, SectionHeader};
use super::scan::SectionInfo;
use super::{
    CONTEXT_HEADER_FIXED_SIZE, DIGEST_SIZE, END_SECTION_ID, FORMAT_MAJOR, MAGIC,
    MDEV_TYPE_NAME_MAX, SECTION_HEADER_SIZE,
};

/// Where the parser delivers sections.
///
/// # Contract
///
/// The parser verifies as it goes, but a stream is only known good once
/// [`ContextParser::finish`] returns `Ok`: a later section, or the end section's stream
/// digest, can still fail. So a sink **stages** what it is given and applies nothing to a
/// device until the whole stream verified; on any error the staged data is dropped.
///
/// * [`begin`](Self::begin) is called once per section, after its length passed the
///   reader's cap for its id, so a sink may size a staging buffer from `hdr.length`.
/// * [`data`](Self::data) streams the payload in order, in pieces of arbitrary sizes;
///   `offset` is the piece's offset inside the payload. Pieces are never empty.
/// * [`end`](Self::end) is called only after the section's digest matched.
///
/// The end section is not delivered to the sink. An `Err` from any method aborts the
/// parse with [`FormatError::Rejected`] carrying the reason.
pub trait SectionSink {
    /// A section starts; its length is within the cap for its id.
    fn begin(&mut self, hdr: &SectionHeader) -> Result<(), String>;
    /// The next piece of the section's payload, at `offset` inside the payload.
    fn data(&mut self, hdr: &SectionHeader, offset: u64, bytes: &[u8]) -> Result<(), String>;
    /// The section is complete and its digest matched.
    fn end(&mut self, hdr: &SectionHeader) -> Result<(), String>;
}

/// A sink that accepts every section and keeps nothing (for verifying a stream).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl SectionSink for DiscardSink {
    fn begin(&mut self, _hdr: &SectionHeader) -> Result<(), String> {
        Ok(())
    }
    fn data(&mut self, _hdr: &SectionHeader, _offset: u64, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn end(&mut self, _hdr: &SectionHeader) -> Result<(), String> {
        Ok(())
    }
}

/// What a reader accepts.
pub struct ParserLimits {
    /// The mdev type the context must belong to (`None`: any).
    pub expected_mdev_type: Option<String>,
    /// The cap on a section's payload length, by section id; `None` means the id is
    /// unknown and the section is rejected.
    pub max_section_len: Box<dyn Fn(u32) -> Option<u64> + Send>,
}

impl ParserLimits {
    /// Limits from a per-id cap function.
    pub fn new(
        expected_mdev_type: Option<String>,
        max_section_len: impl Fn(u32) -> Option<u64> + Send + 'static,
    ) -> Self {
        Self {
            expected_mdev_type,
            max_section_len: Box::new(max_section_len),
        }
    }

    /// Limits from a table of `(id, cap)`; ids not in the table are unknown.
    pub fn from_caps(expected_mdev_type: Option<String>, caps: &[(u32, u64)]) -> Self {
        let caps = caps.to_vec();
        Self::new(expected_mdev_type, move |id| {
            caps.iter().find(|(i, _)| *i == id).map(|(_, cap)| *cap)
        })
    }

    /// Limits for tools that inspect streams of any device: every id is known, every
    /// section may be up to `cap` bytes, any mdev type is accepted.
    pub fn any_section(cap: u64) -> Self {
        Self::new(None, move |_| Some(cap))
    }
}

impl fmt::Debug for ParserLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParserLimits")
            .field("expected_mdev_type", &self.expected_mdev_type)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Phase {
    /// Magic, fixed header fields and type name, accumulated in `buf`.
    Header,
    /// A section header, accumulated in `buf`.
    SectionHeader,
    /// A payload, streamed to the sink and hashed.
    Payload {
        hdr: SectionHeader,
        start: u64,
        done: u64,
        hasher: Sha256,
    },
    /// A section's digest, accumulated in `buf`; `computed` is what it must be.
    Digest {
        hdr: SectionHeader,
        start: u64,
        computed: [u8; DIGEST_SIZE],
    },
    /// The end section verified.
    Complete,
}

/// A push parser for a context stream.
///
/// Feed it the stream in chunks of any size with [`feed`](Self::feed); it hands sections
/// to a [`SectionSink`] and buffers nothing but headers and digests (at most
/// [`CONTEXT_HEADER_FIXED_SIZE`] + [`MDEV_TYPE_NAME_MAX`] bytes). Once a call fails, the
/// parser stays failed and returns the same error.
#[derive(Debug)]
pub struct ContextParser {
    limits: ParserLimits,
    phase: Phase,
    /// Bytes consumed.
    pos: u64,
    /// Staging for the header, section headers and digests.
    buf: Vec<u8>,
    header: Option<ContextHeader>,
    /// Digest chain over the header and the section digests, checked by the end section.
    chain: Sha256,
    failed: Option<FormatError>,
    /// Verified sections, kept only for [`scan`](super::scan).
    record: Option<Vec<SectionInfo>>,
}

impl ContextParser {
    /// A parser at the start of a stream.
    pub fn new(limits: ParserLimits) -> Self {
        Self {
            limits,
            phase: Phase::Header,
            pos: 0,
            buf: Vec::with_capacity(CONTEXT_HEADER_FIXED_SIZE + MDEV_TYPE_NAME_MAX),
            header: None,
            chain: Sha256::new(),
            failed: None,
            record: None,
        }
    }

    /// A parser that also records every verified section.
    pub(crate) fn recording(limits: ParserLimits) -> Self {
        Self {
            record: Some(Vec::new()),
            ..Self::new(limits)
        }
    }

    /// The recorded sections (see [`recording`](Self::recording)).
    pub(crate) fn take_record(&mut self) -> Vec<SectionInfo> {
        self.record.take().unwrap_or_default()
    }

    /// Feed the next `bytes` of the stream.
    pub fn feed(&mut self, bytes: &[u8], sink: &mut dyn SectionSink) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(bytes, sink);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// Check that the stream is complete: `Ok` only once the end section was seen and
    /// verified; [`FormatError::Truncated`] if the stream stopped before that.
    pub fn finish(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.is_complete() {
            return Ok(());
        }
        Err(FormatError::Truncated {
            offset: self.pos,
            what: self.describe_position(),
        })
    }

    /// The context header, once it has been read and checked.
    pub fn header(&self) -> Option<&ContextHeader> {
        self.header.as_ref()
    }

    /// Whether the end section was seen and verified.
    pub fn is_complete(&self) -> bool {
        matches!(self.phase, Phase::Complete) && self.failed.is_none()
    }

    /// Number of stream bytes consumed.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn feed_inner(&mut self, mut input: &[u8], sink: &mut dyn SectionSink) -> Result<()> {
        while !input.is_empty() {
            match self.phase {
                Phase::Header => self.step_header(&mut input)?,
                Phase::SectionHeader => self.step_section_header(&mut input, sink)?,
                Phase::Payload { .. } => self.step_payload(&mut input, sink)?,
                Phase::Digest { .. } => self.step_digest(&mut input, sink)?,
                Phase::Complete => return Err(FormatError::TrailingData { offset: self.pos }),
            }
        }
        Ok(())
    }

    /// Move bytes from `input` to `buf` until `buf` holds `upto`; whether it does.
    fn take(&mut self, input: &mut &[u8], upto: usize) -> bool {
        let n = upto.saturating_sub(self.buf.len()).min(input.len());
        let (head, rest) = input.split_at(n);
        self.buf.extend_from_slice(head);
        self.pos += n as u64;
        *input = rest;
        self.buf.len() == upto
    }

    fn step_header(&mut self, input: &mut &[u8]) -> Result<()> {
        if self.buf.len() < MAGIC.len() {
            let from = self.buf.len();
            self.take(input, MAGIC.len());
            if let Some(i) = (from..self.buf.len()).find(|&i| self.buf[i] != MAGIC[i]) {
                return Err(FormatError::BadMagic { offset: i as u64 });
            }
            return Ok(());
        }
        if self.buf.len() < CONTEXT_HEADER_FIXED_SIZE {
            if self.take(input, CONTEXT_HEADER_FIXED_SIZE) {
                let (major, minor, len) = self.fixed();
                if major != FORMAT_MAJOR {
                    return Err(FormatError::UnsupportedVersion {
                        offset: MAGIC.len() as u64,
                        major,
                        minor,
                    });
                }
                if len == 0 || len > MDEV_TYPE_NAME_MAX {
                    return Err(FormatError::BadMdevTypeName {
                        offset: (CONTEXT_HEADER_FIXED_SIZE - 2) as u64,
                        reason: format!("length {len} is not 1 to {MDEV_TYPE_NAME_MAX} bytes"),
                    });
                }
            }
            return Ok(());
        }
        let (major, minor, len) = self.fixed();
        if !self.take(input, CONTEXT_HEADER_FIXED_SIZE + len) {
            return Ok(());
        }
        let offset = CONTEXT_HEADER_FIXED_SIZE as u64;
        let mdev_type = std::str::from_utf8(&self.buf[CONTEXT_HEADER_FIXED_SIZE..])
            .map_err(|e| FormatError::BadMdevTypeName {
                offset,
                reason: format!("not UTF-8 ({e})"),
            })?
            .to_string();
        if let Some(expected) = &self.limits.expected_mdev_type {
            if *expected != mdev_type {
                return Err(FormatError::WrongMdevType {
                    offset,
                    expected: expected.clone(),
                    found: mdev_type,
                });
            }
        }
        self.chain.update(&self.buf);
        self.buf.clear();
        self.header = Some(ContextHeader {
            major,
            minor,
            mdev_type,
        });
        self.phase = Phase::SectionHeader;
        Ok(())
    }

    fn fixed(&self) -> (u16, u16, usize) {
        let mut fixed = [0u8; CONTEXT_HEADER_FIXED_SIZE];
        fixed.copy_from_slice(&self.buf[..CONTEXT_HEADER_FIXED_SIZE]);
        decode_fixed(&fixed)
    }

    fn step_section_header(&mut self, input: &mut &[u8], sink: &mut dyn SectionSink) -> Result<()> {
        if !self.take(input, SECTION_HEADER_SIZE) {
            return Ok(());
        }
        let mut bytes = [0u8; SECTION_HEADER_SIZE];
        bytes.copy_from_slice(&self.buf);
        self.buf.clear();
        let hdr = SectionHeader::decode(&bytes);
        let start = self.pos - SECTION_HEADER_SIZE as u64;
        if hdr.id == END_SECTION_ID {
            if hdr.length != 0 {
                return Err(FormatError::SectionTooLong {
                    offset: start,
                    id: hdr.id,
                    length: hdr.length,
                    cap: 0,
                });
            }
            let mut chain = mem::replace(&mut self.chain, Sha256::new());
            chain.update(bytes);
            self.phase = Phase::Digest {
                hdr,
                start,
                computed: chain.finalize().into(),
            };
            return Ok(());
        }
        let cap = (self.limits.max_section_len)(hdr.id).ok_or(FormatError::UnknownSection {
            offset: start,
            id: hdr.id,
        })?;
        if hdr.length > cap {
            return Err(FormatError::SectionTooLong {
                offset: start,
                id: hdr.id,
                length: hdr.length,
                cap,
            });
        }
        sink.begin(&hdr).map_err(|reason| FormatError::Rejected {
            offset: start,
            id: hdr.id,
            reason,
        })?;
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        self.phase = if hdr.length == 0 {
            Phase::Digest {
                hdr,
                start,
                computed: hasher.finalize().into(),
            }
        } else {
            Phase::Payload {
                hdr,
                start,
                done: 0,
                hasher,
            }
        };
        Ok(())
    }

    fn step_payload(&mut self, input: &mut &[u8], sink: &mut dyn SectionSink) -> Result<()> {
        let Phase::Payload {
            hdr,
            start,
            done,
            hasher,
        } = &mut self.phase
        else {
            return Ok(());
        };
        let n = (hdr.length - *done).min(input.len() as u64) as usize;
        let (piece, rest) = input.split_at(n);
        hasher.update(piece);
        sink.data(hdr, *done, piece)
            .map_err(|reason| FormatError::Rejected {
                offset: self.pos,
                id: hdr.id,
                reason,
            })?;
        *done += n as u64;
        self.pos += n as u64;
        *input = rest;
        if *done == hdr.length {
            let (hdr, start) = (*hdr, *start);
            let hasher = mem::take(hasher);
            self.phase = Phase::Digest {
                hdr,
                start,
                computed: hasher.finalize().into(),
            };
        }
        Ok(())
    }

    fn step_digest(&mut self, input: &mut &[u8], sink: &mut dyn SectionSink) -> Result<()> {
        if !self.take(input, DIGEST_SIZE) {
            return Ok(());
        }
        let Phase::Digest {
            hdr,
            start,
            computed,
        } = mem::replace(&mut self.phase, Phase::SectionHeader)
        else {
            return Ok(());
        };
        let offset = self.pos - DIGEST_SIZE as u64;
        if self.buf[..] != computed[..] {
            return Err(FormatError::DigestMismatch { offset, id: hdr.id });
        }
        self.buf.clear();
        if hdr.id == END_SECTION_ID {
            self.phase = Phase::Complete;
        } else {
            sink.end(&hdr).map_err(|reason| FormatError::Rejected {
                offset,
                id: hdr.id,
                reason,
            })?;
            self.chain.update(computed);
        }
        if let Some(record) = &mut self.record {
            record.push(SectionInfo {
                header: hdr,
                offset: start,
                digest_hex: hex(&computed),
            });
        }
        Ok(())
    }

    /// Where the stream stands, for a [`FormatError::Truncated`] message.
    fn describe_position(&self) -> String {
        let buffered_from = self.pos - self.buf.len() as u64;
        match &self.phase {
            Phase::Header if self.buf.len() < MAGIC.len() => "inside the magic".into(),
            Phase::Header if self.buf.len() < CONTEXT_HEADER_FIXED_SIZE => {
                "inside the context header".into()
            }
            Phase::Header => "inside the mdev type name".into(),
            Phase::SectionHeader if self.buf.is_empty() => "before the end section".into(),
            Phase::SectionHeader => format!("inside the section header at byte {buffered_from}"),
            Phase::Payload {
                hdr, start, done, ..
            } => format!(
                "inside the payload of section {} at byte {start} ({done} of {} bytes)",
                hdr.id, hdr.length
            ),
            Phase::Digest { hdr, .. } if hdr.id == END_SECTION_ID => {
                "inside the end section's digest".into()
            }
            Phase::Digest { hdr, start, .. } => {
                format!("inside the digest of section {} at byte {start}", hdr.id)
            }
            Phase::Complete => "after the end section".into(),
        }
    }
}
