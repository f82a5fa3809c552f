//! Encoding a context stream.

use sha2::{Digest, Sha256};

use super::error::{FormatError, Result};
use super::header::{ContextHeader, SectionHeader};
use super::{DIGEST_SIZE, END_SECTION_ID, END_SECTION_SIZE, SECTION_HEADER_SIZE};

/// Writes a context stream: the header, then sections, then the end section, keeping the
/// stream digest chain the end section carries.
///
/// The encoder returns bytes rather than writing them, so a device can produce its stream
/// lazily from `read_data` calls. Sections must be produced one at a time, in the order
/// their bytes go on the stream.
///
/// ```
/// use state_region::format::{ContextEncoder, ContextHeader};
///
/// let (mut enc, mut stream) = ContextEncoder::new(&ContextHeader::new("vgpu").unwrap());
/// stream.extend(enc.section(1, 1, 0, b"registers").unwrap());
/// // A big payload is streamed and hashed on the way.
/// let (mut s, hdr) = enc.begin_section(2, 1, 0, 6).unwrap();
/// stream.extend_from_slice(&hdr);
/// for piece in [&b"abc"[..], b"def"] {
///     s.update(piece);
///     stream.extend_from_slice(piece);
/// }
/// stream.extend_from_slice(&enc.finish_section(s).unwrap());
/// stream.extend(enc.end());
/// ```
#[derive(Debug, Clone)]
pub struct ContextEncoder {
    chain: Sha256,
}

impl ContextEncoder {
    /// Start a stream with `header`; returns the encoder and the encoded header.
    pub fn new(header: &ContextHeader) -> (Self, Vec<u8>) {
        let bytes = header.encode();
        let mut chain = Sha256::new();
        chain.update(&bytes);
        (Self { chain }, bytes)
    }

    /// Begin a section whose payload will be `length` bytes; returns the section encoder
    /// (feed it the payload with [`SectionEncoder::update`]) and the encoded section header
    /// (the first [`SECTION_HEADER_SIZE`] bytes of the section).
    pub fn begin_section(
        &mut self,
        id: u32,
        major: u16,
        minor: u16,
        length: u64,
    ) -> Result<(SectionEncoder, [u8; SECTION_HEADER_SIZE])> {
        if id == END_SECTION_ID {
            return Err(FormatError::ReservedId { id });
        }
        let header = SectionHeader {
            id,
            major,
            minor,
            length,
        };
        let bytes = header.encode();
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        Ok((
            SectionEncoder {
                header,
                hasher,
                given: 0,
            },
            bytes,
        ))
    }

    /// Finish a section: returns its digest, the last [`DIGEST_SIZE`] bytes of the section.
    ///
    /// Fails with [`FormatError::LengthMismatch`] if the payload given to the section
    /// encoder was not exactly the declared length.
    pub fn finish_section(&mut self, section: SectionEncoder) -> Result<[u8; DIGEST_SIZE]> {
        let SectionEncoder {
            header,
            hasher,
            given,
        } = section;
        if given != header.length {
            return Err(FormatError::LengthMismatch {
                id: header.id,
                declared: header.length,
                given,
            });
        }
        let digest: [u8; DIGEST_SIZE] = hasher.finalize().into();
        self.chain.update(digest);
        Ok(digest)
    }

    /// Encode a whole section with `payload` in one go.
    pub fn section(&mut self, id: u32, major: u16, minor: u16, payload: &[u8]) -> Result<Vec<u8>> {
        let (mut s, header) = self.begin_section(id, major, minor, payload.len() as u64)?;
        s.update(payload);
        let digest = self.finish_section(s)?;
        let mut out = Vec::with_capacity(SECTION_HEADER_SIZE + payload.len() + DIGEST_SIZE);
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Encode the end section ([`END_SECTION_SIZE`] bytes), which closes the stream.
    pub fn end(self) -> Vec<u8> {
        let header = SectionHeader {
            id: END_SECTION_ID,
            major: 0,
            minor: 0,
            length: 0,
        }
        .encode();
        let mut chain = self.chain;
        chain.update(header);
        let digest: [u8; DIGEST_SIZE] = chain.finalize().into();
        let mut out = Vec::with_capacity(END_SECTION_SIZE);
        out.extend_from_slice(&header);
        out.extend_from_slice(&digest);
        out
    }
}

/// One section being encoded: hashes the payload as the producer streams it.
///
/// Obtained from [`ContextEncoder::begin_section`] and finished by
/// [`ContextEncoder::finish_section`], so every section's digest enters the stream chain.
#[derive(Debug, Clone)]
pub struct SectionEncoder {
    header: SectionHeader,
    hasher: Sha256,
    given: u64,
}

impl SectionEncoder {
    /// The section's header.
    pub fn header(&self) -> &SectionHeader {
        &self.header
    }

    /// Hash the next piece of the payload (the producer writes the same bytes to the stream).
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.given = self.given.saturating_add(bytes.len() as u64);
    }

    /// Payload bytes still expected (0 once the declared length was given, or exceeded).
    pub fn remaining(&self) -> u64 {
        self.header.length.saturating_sub(self.given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> ContextEncoder {
        ContextEncoder::new(&ContextHeader::new("t").unwrap()).0
    }

    #[test]
    fn streamed_and_whole_sections_are_identical() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let whole = encoder().section(5, 1, 2, &payload).unwrap();

        let mut enc = encoder();
        let (mut s, header) = enc.begin_section(5, 1, 2, 1000).unwrap();
        let mut streamed = header.to_vec();
        for piece in payload.chunks(7) {
            s.update(piece);
            streamed.extend_from_slice(piece);
        }
        assert_eq!(s.remaining(), 0);
        streamed.extend_from_slice(&enc.finish_section(s).unwrap());
        assert_eq!(whole, streamed);
    }

    #[test]
    fn wrong_payload_length_is_an_error() {
        let mut enc = encoder();
        let (mut s, _) = enc.begin_section(3, 1, 0, 4).unwrap();
        s.update(b"abc");
        assert_eq!(
            enc.finish_section(s),
            Err(FormatError::LengthMismatch {
                id: 3,
                declared: 4,
                given: 3
            })
        );
        let (mut s, _) = enc.begin_section(3, 1, 0, 2).unwrap();
        s.update(b"abc");
        assert_eq!(s.remaining(), 0);
        assert!(matches!(
            enc.finish_section(s),
            Err(FormatError::LengthMismatch { given: 3, .. })
        ));
    }

    #[test]
    fn end_id_is_reserved() {
        assert_eq!(
            encoder().section(END_SECTION_ID, 1, 0, b"").unwrap_err(),
            FormatError::ReservedId { id: END_SECTION_ID }
        );
    }

    #[test]
    fn end_digest_depends_on_everything_before_it() {
        let mut a = encoder();
        a.section(1, 1, 0, b"x").unwrap();
        let mut b = encoder();
        b.section(1, 1, 0, b"y").unwrap();
        let c = ContextEncoder::new(&ContextHeader::new("u").unwrap()).0;
        let ends = [a.end(), b.end(), encoder().end(), c.end()];
        for (i, x) in ends.iter().enumerate() {
            assert_eq!(x.len(), END_SECTION_SIZE);
            for y in &ends[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }
}
