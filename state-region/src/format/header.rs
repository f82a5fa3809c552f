//! The context header and the section header.

use byteorder::{ByteOrder, LittleEndian};

use super::error::{FormatError, Result};
use super::{
    CONTEXT_HEADER_FIXED_SIZE, DIGEST_SIZE, FORMAT_MAJOR, FORMAT_MINOR, MAGIC, MDEV_TYPE_NAME_MAX,
    SECTION_HEADER_SIZE,
};

/// The context header: format version and the mdev type the context belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextHeader {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Name of the mdev type (for example `vgpu-sim-2G`), 1 to [`MDEV_TYPE_NAME_MAX`] bytes.
    pub mdev_type: String,
}

impl ContextHeader {
    /// A header of the current format version for `mdev_type`.
    ///
    /// Fails with [`FormatError::BadHeader`] if the name is empty or longer than
    /// [`MDEV_TYPE_NAME_MAX`] bytes.
    pub fn new(mdev_type: impl Into<String>) -> Result<Self> {
        let mdev_type = mdev_type.into();
        if mdev_type.is_empty() || mdev_type.len() > MDEV_TYPE_NAME_MAX {
            return Err(FormatError::BadHeader { name: mdev_type });
        }
        Ok(Self {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            mdev_type,
        })
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        CONTEXT_HEADER_FIXED_SIZE + self.name_len()
    }

    /// Encode the header.
    ///
    /// The name's length is written as it is, never silently truncated: a header whose name
    /// is over [`MDEV_TYPE_NAME_MAX`] bytes (possible only by filling the struct directly
    /// instead of calling [`ContextHeader::new`]) encodes to a stream every reader rejects
    /// with [`FormatError::BadMdevTypeName`].
    pub fn encode(&self) -> Vec<u8> {
        let len = self.name_len();
        let mut out = Vec::with_capacity(CONTEXT_HEADER_FIXED_SIZE + len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        // `name_len` is at most u16::MAX.
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&self.mdev_type.as_bytes()[..len]);
        out
    }

    fn name_len(&self) -> usize {
        self.mdev_type.len().min(usize::from(u16::MAX))
    }
}

/// The fixed part of a context header, decoded: major, minor, name length.
pub(crate) fn decode_fixed(buf: &[u8; CONTEXT_HEADER_FIXED_SIZE]) -> (u16, u16, usize) {
    (
        LittleEndian::read_u16(&buf[8..10]),
        LittleEndian::read_u16(&buf[10..12]),
        usize::from(LittleEndian::read_u16(&buf[12..14])),
    )
}

/// A section header: id, per-section version, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SectionHeader {
    /// Section id (the device's business; [`END_SECTION_ID`](super::END_SECTION_ID) is the
    /// end marker).
    pub id: u32,
    /// Section major version.
    pub major: u16,
    /// Section minor version.
    pub minor: u16,
    /// Payload length in bytes.
    pub length: u64,
}

impl SectionHeader {
    /// Encode into [`SECTION_HEADER_SIZE`] bytes.
    pub fn encode(&self) -> [u8; SECTION_HEADER_SIZE] {
        let mut b = [0u8; SECTION_HEADER_SIZE];
        LittleEndian::write_u32(&mut b[0..4], self.id);
        LittleEndian::write_u16(&mut b[4..6], self.major);
        LittleEndian::write_u16(&mut b[6..8], self.minor);
        LittleEndian::write_u64(&mut b[8..16], self.length);
        b
    }

    /// Decode from [`SECTION_HEADER_SIZE`] bytes.
    pub fn decode(b: &[u8; SECTION_HEADER_SIZE]) -> Self {
        Self {
            id: LittleEndian::read_u32(&b[0..4]),
            major: LittleEndian::read_u16(&b[4..6]),
            minor: LittleEndian::read_u16(&b[6..8]),
            length: LittleEndian::read_u64(&b[8..16]),
        }
    }
}

/// Encoded size of a section with a payload of `length` bytes (header + payload + digest).
pub fn section_encoded_len(length: u64) -> u64 {
    (SECTION_HEADER_SIZE + DIGEST_SIZE) as u64 + length
}

/// Lower-case hex of `bytes` (sha2 0.11 digests no longer format with `{:x}`).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_header_round_trip() {
        let h = SectionHeader {
            id: 0xdead_beef,
            major: 2,
            minor: 7,
            length: 0x0102_0304_0506_0708,
        };
        let b = h.encode();
        assert_eq!(&b[..4], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(SectionHeader::decode(&b), h);
    }

    #[test]
    fn context_header_encoding() {
        let h = ContextHeader::new("vgpu").unwrap();
        let b = h.encode();
        assert_eq!(b.len(), h.encoded_len());
        assert_eq!(&b[..8], &MAGIC);
        let fixed: [u8; CONTEXT_HEADER_FIXED_SIZE] = b[..14].try_into().unwrap();
        assert_eq!(decode_fixed(&fixed), (FORMAT_MAJOR, FORMAT_MINOR, 4));
        assert_eq!(&b[14..], b"vgpu");
    }

    #[test]
    fn context_header_rejects_bad_names() {
        assert!(matches!(
            ContextHeader::new(""),
            Err(FormatError::BadHeader { .. })
        ));
        let long = "x".repeat(MDEV_TYPE_NAME_MAX + 1);
        assert!(matches!(
            ContextHeader::new(long),
            Err(FormatError::BadHeader { .. })
        ));
        assert!(ContextHeader::new("x".repeat(MDEV_TYPE_NAME_MAX)).is_ok());
    }

    #[test]
    fn hex_encodes_lower_case() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }
}
