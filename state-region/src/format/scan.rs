//! Non-streaming helpers for tools: verify a whole stream held in memory and list its
//! sections.

use super::error::{FormatError, Result};
use super::header::{ContextHeader, SectionHeader};
use super::parser::ContextParser;
use super::sink::{DiscardSink, ParserLimits};

/// One verified section of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// The section header.
    pub header: SectionHeader,
    /// Stream offset of the section header.
    pub offset: u64,
    /// The verified digest, lower-case hex (for the end section: the stream digest).
    pub digest_hex: String,
}

/// What [`inspect`] finds in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSummary {
    /// The context header.
    pub header: ContextHeader,
    /// Every section in stream order, the end section last.
    pub sections: Vec<SectionInfo>,
    /// Stream length in bytes.
    pub length: u64,
}

/// Verify the whole stream `bytes` and list its sections, the end section last.
pub fn scan(bytes: &[u8], limits: ParserLimits) -> Result<Vec<SectionInfo>> {
    inspect(bytes, limits).map(|s| s.sections)
}

/// Verify the whole stream `bytes` and summarise it: header, sections, length.
pub fn inspect(bytes: &[u8], limits: ParserLimits) -> Result<ContextSummary> {
    let mut parser = ContextParser::recording(limits);
    parser.feed(bytes, &mut DiscardSink)?;
    parser.finish()?;
    let sections = parser.take_record();
    // A complete stream always has a header; answer as for a stream cut short otherwise.
    let header = parser.header().cloned().ok_or(FormatError::Truncated {
        offset: parser.position(),
        what: "inside the context header".into(),
    })?;
    Ok(ContextSummary {
        header,
        sections,
        length: parser.position(),
    })
}
