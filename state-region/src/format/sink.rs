//! What the parser hands sections to, and what it accepts.

use std::fmt;

use super::header::SectionHeader;

/// Where the parser delivers sections.
///
/// # Contract
///
/// The parser verifies as it goes, but a stream is only known good once
/// [`ContextParser::finish`](super::ContextParser::finish) returns `Ok`: a later section, or the end section's stream
/// digest, can still fail. So a sink **stages** what it is given and applies nothing to a
/// device until the whole stream verified; on any error the staged data is dropped.
///
/// * [`begin`](Self::begin) is called once per section, in stream order, after its length
///   passed the reader's cap for its id, so a sink may size a staging buffer from
///   `hdr.length`.
/// * [`data`](Self::data) streams the payload in order, in pieces of arbitrary sizes;
///   `offset` is the piece's offset inside the payload. Pieces are never empty, and all of
///   a section's pieces come after its `begin` and before the next section's `begin`.
/// * [`end`](Self::end) is called once per section, in stream order, only after the
///   section's digest matched; it may come after later sections' `begin` and `data`.
///
/// That last freedom is what lets the parser copy payloads into the sink on one core while
/// other cores hash them: it takes a `feed` in batches of up to [`BATCH`](super::BATCH)
/// bytes, hands the batch's `begin`s and pieces over while their digests are computed,
/// then checks the digests and calls `end` in order. Errors still come in stream order:
/// a sink's refusal is reported only if no section before it failed its digest.
///
/// The end section is not delivered to the sink. An `Err` from any method aborts the
/// parse with [`FormatError::Rejected`](super::FormatError::Rejected) carrying the reason.
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
