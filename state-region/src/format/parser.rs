//! The push parser: decodes a context stream fed in chunks of any size.

//!
//! A `feed` is taken in batches of at most [`BATCH`] bytes. Each batch goes in three
//! steps: the structure is parsed (headers, caps, digests read, the stream chain kept)
//! and the sink calls and digest checks are noted in stream order; the section starts and
//! payload pieces are handed to the sink on this thread while other cores hash the pieces,
//! different sections on different cores ([`parallel::spread_with`]); then the digests are
//! checked in order, each matching section ended in the sink. The first error in stream
//! order wins, exactly as on one thread.

use std::mem;

use sha2::{Digest, Sha256};

use super::error::{FormatError, Result};
use super::header::{decode_fixed, hex, ContextHeader, SectionHeader};
use super::parallel;
use super::scan::SectionInfo;
use super::sink::{ParserLimits, SectionSink};
use super::{
    BATCH, CONTEXT_HEADER_FIXED_SIZE, DIGEST_SIZE, END_SECTION_ID, FORMAT_MAJOR, MAGIC,
    MDEV_TYPE_NAME_MAX, SECTION_HEADER_SIZE,
};

type DigestBytes = [u8; DIGEST_SIZE];

#[derive(Debug)]
enum Phase {
    /// Magic, fixed header fields and type name, accumulated in `buf`.
    Header,
    /// A section header, accumulated in `buf`.
    SectionHeader,
    /// A payload, streamed to the sink and hashed; `hasher` is `None` while it is lent
    /// to the batch being parsed.
    Payload {
        hdr: SectionHeader,
        start: u64,
        done: u64,
        hasher: Option<Sha256>,
    },
    /// A section's digest, accumulated in `buf`; `computed` is what it must be.
    Digest {
        hdr: SectionHeader,
        start: u64,
        computed: Computed,
    },
    /// The end section was read (and is verified once its batch is delivered).
    Complete,
}

/// A digest the stream's must equal.
#[derive(Debug, Clone, Copy)]
enum Computed {
    /// Known.
    Ready(DigestBytes),
    /// The result of job `n` of the batch being parsed.
    Job(usize),
}

/// A sink call or digest check noted while parsing a batch, replayed in order.
#[derive(Debug)]
enum Note<'a> {
    Begin {
        hdr: SectionHeader,
        start: u64,
    },
    Data {
        hdr: SectionHeader,
        offset: u64,
        pos: u64,
        bytes: &'a [u8],
    },
    Check {
        hdr: SectionHeader,
        start: u64,
        offset: u64,
        expected: DigestBytes,
        computed: Computed,
    },
}

/// Payload pieces of one section to hash, in order; `last` when they complete it.
#[derive(Debug)]
struct Job<'a> {
    hasher: Sha256,
    pieces: Vec<&'a [u8]>,
    last: bool,
}

/// One batch: notes in stream order and the hashing they wait for.
#[derive(Debug, Default)]
struct Batch<'a> {
    notes: Vec<Note<'a>>,
    jobs: Vec<Job<'a>>,
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
        for part in bytes.chunks(BATCH) {
            if let Err(e) = self.feed_batch(part, sink) {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
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

    /// One batch: parse its structure; then copy its payloads into the sink on this thread
    /// while other cores hash them; then check the digests in order. The first error in
    /// stream order is the one returned: a structural error counts only after everything
    /// before it was delivered and checked, a sink's refusal only after the digests of the
    /// sections before it.
    fn feed_batch(&mut self, input: &[u8], sink: &mut dyn SectionSink) -> Result<()> {
        let mut batch = Batch::default();
        let structure = self.parse(input, &mut batch);
        let Batch { notes, mut jobs } = batch;
        let refused = parallel::spread_with(
            &mut jobs,
            |j| j.pieces.iter().map(|p| p.len()).sum(),
            |j| j.pieces.iter().for_each(|p| j.hasher.update(p)),
            || replay(&notes, sink),
        );
        let digests = self.digests(&mut jobs);
        let upto = refused.as_ref().map_or(notes.len(), |r| r.0);
        self.check(&notes[..upto], &digests, sink)?;
        if let Some((_, e)) = refused {
            return Err(e);
        }
        structure
    }

    fn parse<'a>(&mut self, mut input: &'a [u8], batch: &mut Batch<'a>) -> Result<()> {
        while !input.is_empty() {
            match self.phase {
                Phase::Header => self.step_header(&mut input)?,
                Phase::SectionHeader => self.step_section_header(&mut input, batch)?,
                Phase::Payload { .. } => self.step_payload(&mut input, batch),
                Phase::Digest { .. } => self.step_digest(&mut input, batch),
                Phase::Complete => return Err(FormatError::TrailingData { offset: self.pos }),
            }
        }
        Ok(())
    }

    /// The digests of the sections the batch's jobs complete. The hasher of a payload
    /// that goes on past the batch returns to the phase.
    fn digests(&mut self, jobs: &mut [Job<'_>]) -> Vec<Option<DigestBytes>> {
        let digests: Vec<Option<DigestBytes>> = jobs
            .iter_mut()
            .map(|j| j.last.then(|| mem::take(&mut j.hasher).finalize().into()))
            .collect();
        match &mut self.phase {
            Phase::Payload { hasher, .. } if hasher.is_none() => {
                *hasher = jobs
                    .iter_mut()
                    .rfind(|j| !j.last)
                    .map(|j| mem::take(&mut j.hasher));
            }
            Phase::Digest { computed, .. } => {
                if let Computed::Job(i) = *computed {
                    if let Some(Some(d)) = digests.get(i) {
                        *computed = Computed::Ready(*d);
                    }
                }
            }
            _ => {}
        }
        digests
    }

    /// Check the digests the notes read, in order; tell the sink each section that
    /// matched.
    fn check(
        &mut self,
        notes: &[Note<'_>],
        digests: &[Option<DigestBytes>],
        sink: &mut dyn SectionSink,
    ) -> Result<()> {
        for note in notes {
            let Note::Check {
                hdr,
                start,
                offset,
                expected,
                computed,
            } = note
            else {
                continue;
            };
            let computed = match computed {
                Computed::Ready(d) => Some(*d),
                Computed::Job(i) => digests.get(*i).copied().flatten(),
            };
            if computed != Some(*expected) {
                return Err(FormatError::DigestMismatch {
                    offset: *offset,
                    id: hdr.id,
                });
            }
            if hdr.id != END_SECTION_ID {
                sink.end(hdr).map_err(|reason| FormatError::Rejected {
                    offset: *offset,
                    id: hdr.id,
                    reason,
                })?;
            }
            if let Some(record) = &mut self.record {
                record.push(SectionInfo {
                    header: *hdr,
                    offset: *start,
                    digest_hex: hex(expected),
                });
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

    fn step_section_header<'a>(
        &mut self,
        input: &mut &'a [u8],
        batch: &mut Batch<'a>,
    ) -> Result<()> {
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
                computed: Computed::Ready(chain.finalize().into()),
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
        batch.notes.push(Note::Begin { hdr, start });
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        self.phase = if hdr.length == 0 {
            Phase::Digest {
                hdr,
                start,
                computed: Computed::Ready(hasher.finalize().into()),
            }
        } else {
            Phase::Payload {
                hdr,
                start,
                done: 0,
                hasher: Some(hasher),
            }
        };
        Ok(())
    }

    fn step_payload<'a>(&mut self, input: &mut &'a [u8], batch: &mut Batch<'a>) {
        let Phase::Payload {
            hdr,
            start,
            done,
            hasher,
        } = &mut self.phase
        else {
            return;
        };
        let n = (hdr.length - *done).min(input.len() as u64) as usize;
        let (piece, rest) = input.split_at(n);
        batch.notes.push(Note::Data {
            hdr: *hdr,
            offset: *done,
            pos: self.pos,
            bytes: piece,
        });
        // The section's job in this batch: a new one with its hasher, or (only if its
        // payload came in two steps of one batch) the last one.
        if hasher.is_some() || batch.jobs.is_empty() {
            batch.jobs.push(Job {
                hasher: hasher.take().unwrap_or_default(),
                pieces: Vec::new(),
                last: false,
            });
        }
        let job = batch.jobs.len() - 1;
        batch.jobs[job].pieces.push(piece);
        *done += n as u64;
        self.pos += n as u64;
        *input = rest;
        if *done == hdr.length {
            batch.jobs[job].last = true;
            self.phase = Phase::Digest {
                hdr: *hdr,
                start: *start,
                computed: Computed::Job(job),
            };
        }
    }

    fn step_digest<'a>(&mut self, input: &mut &'a [u8], batch: &mut Batch<'a>) {
        if !self.take(input, DIGEST_SIZE) {
            return;
        }
        let Phase::Digest {
            hdr,
            start,
            computed,
        } = mem::replace(&mut self.phase, Phase::SectionHeader)
        else {
            return;
        };
        let offset = self.pos - DIGEST_SIZE as u64;
        let mut expected = [0u8; DIGEST_SIZE];
        expected.copy_from_slice(&self.buf);
        self.buf.clear();
        if hdr.id == END_SECTION_ID {
            self.phase = Phase::Complete;
        } else {
            // The chain takes the stream's digest; it is checked equal to the computed one
            // before anything after it counts.
            self.chain.update(expected);
        }
        batch.notes.push(Note::Check {
            hdr,
            start,
            offset,
            expected,
            computed,
        });
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

/// Hand a batch's section starts and payload pieces to the sink, in order; the index of
/// the note the sink refused, and why.
fn replay(notes: &[Note<'_>], sink: &mut dyn SectionSink) -> Option<(usize, FormatError)> {
    for (i, note) in notes.iter().enumerate() {
        let r = match note {
            Note::Begin { hdr, start } => sink.begin(hdr).map_err(|reason| (*start, hdr, reason)),
            Note::Data {
                hdr,
                offset,
                pos,
                bytes,
            } => sink
                .data(hdr, *offset, bytes)
                .map_err(|reason| (*pos, hdr, reason)),
            Note::Check { .. } => Ok(()),
        };
        if let Err((offset, hdr, reason)) = r {
            let e = FormatError::Rejected {
                offset,
                id: hdr.id,
                reason,
            };
            return Some((i, e));
        }
    }
    None
}
