//! The vfio-user wire format (QEMU's `docs/interop/vfio-user.rst`): the 16-byte header,
//! the command numbers, the negotiated capabilities, and bounded little readers and
//! writers for the payloads.
//!
//! Where a payload *is* a VFIO uAPI struct (`vfio_device_info`, `vfio_region_info`,
//! `vfio_irq_info`, `vfio_irq_set`, the `vfio_device_feature_*` payloads) the codec fills
//! and reads the `vfio-bindings` struct field by field, in the order and at the widths the
//! spec's tables give; nothing of the uAPI is redefined here. vfio-user's own numbers (the
//! command ids and the header flag bits) are not part of the kernel uAPI and are defined
//! once, in this module.
//!
//! All integers are little-endian (the spec says host order; every host this runs on is
//! little-endian, and the codec pins it so a test can check bytes).

use serde::{Deserialize, Serialize};
use snafu::{ensure, Snafu};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// Protocol version this implementation speaks (libvfio-user's and QEMU's 0.1).
pub const VERSION_MAJOR: u16 = 0;
/// Minor protocol version.
pub const VERSION_MINOR: u16 = 1;

/// Header flag bits 0-3: the message type.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Message type: a command.
pub const FLAGS_TYPE_COMMAND: u32 = 0x0;
/// Message type: a reply.
pub const FLAGS_TYPE_REPLY: u32 = 0x1;
/// Header flag bit 4: the command wants no reply.
pub const FLAGS_NO_REPLY: u32 = 1 << 4;
/// Header flag bit 5: the reply reports an error (errno in the header's error field).
pub const FLAGS_ERROR: u32 = 1 << 5;

/// DMA_MAP flag bit 0: the region is readable.
pub const DMA_FLAG_READ: u32 = 1 << 0;
/// DMA_MAP flag bit 1: the region is writeable.
pub const DMA_FLAG_WRITE: u32 = 1 << 1;

/// The vfio-user commands (the spec's command table). `Invalid = 0` is no command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// Not a command.
    Invalid = 0,
    /// `VFIO_USER_VERSION`.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ` (server to client).
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE` (server to client).
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
    /// `VFIO_USER_REGION_WRITE_MULTI`.
    RegionWriteMulti = 15,
    /// `VFIO_USER_DEVICE_FEATURE`.
    DeviceFeature = 16,
    /// `VFIO_USER_MIG_DATA_READ`.
    MigDataRead = 17,
    /// `VFIO_USER_MIG_DATA_WRITE`.
    MigDataWrite = 18,
}

impl Command {
    /// The command with this number, or `Invalid`.
    pub fn from_u16(v: u16) -> Self {
        use Command::*;
        match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => Invalid,
        }
    }
}

/// Errors of decoding a message.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub))]
pub enum ProtoError {
    /// The payload ends before a field.
    #[snafu(display("payload of {len} bytes is too short for {what}"))]
    Short {
        /// What was being read.
        what: &'static str,
        /// Payload length.
        len: usize,
    },
    /// A header's message size is below the header size or above the cap.
    #[snafu(display("message size {size} is outside {HEADER_SIZE}..={cap}"))]
    BadSize {
        /// The size in the header.
        size: u32,
        /// The largest size accepted.
        cap: usize,
    },
    /// The VERSION payload is malformed.
    #[snafu(display("bad VERSION payload: {what}"))]
    BadVersion {
        /// What is wrong.
        what: String,
    },
}

/// `Result` with a [`ProtoError`].
pub type Result<T, E = ProtoError> = std::result::Result<T, E>;

/// The 16-byte message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message id (echoed in the reply).
    pub msg_id: u16,
    /// Command number.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type, no-reply and error bits.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

impl Header {
    /// Encode.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.msg_id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    /// Decode, checking the size against `cap` (the largest whole message accepted).
    pub fn parse(b: &[u8; HEADER_SIZE], cap: usize) -> Result<Self> {
        let h = Header {
            msg_id: u16::from_le_bytes([b[0], b[1]]),
            command: u16::from_le_bytes([b[2], b[3]]),
            size: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            error: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        };
        ensure!(
            (h.size as usize) >= HEADER_SIZE && (h.size as usize) <= cap,
            BadSizeSnafu { size: h.size, cap }
        );
        Ok(h)
    }

    /// Payload length (message size minus the header).
    pub fn payload_len(&self) -> usize {
        (self.size as usize).saturating_sub(HEADER_SIZE)
    }

    /// Whether this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAGS_TYPE_MASK == FLAGS_TYPE_REPLY
    }
}

/// The capabilities carried as JSON in `VERSION` (`{"capabilities": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Most file descriptors the sender accepts in one message (default 1).
    #[serde(default = "default_max_msg_fds")]
    pub max_msg_fds: u32,
    /// Largest `count` of a data transfer message (default 1 MiB).
    #[serde(default = "default_max_data_xfer_size")]
    pub max_data_xfer_size: u32,
    /// Page sizes supported for DMA maps, or'ed together (default 4 KiB).
    #[serde(default = "default_pgsizes")]
    pub pgsizes: u64,
    /// Most DMA maps valid at once (default 65535).
    #[serde(default = "default_max_dma_maps")]
    pub max_dma_maps: u32,
    /// Dirty-page logging geometry (the v1 protocol's `migration` capability object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationCaps>,
}

/// The `migration` capability object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCaps {
    /// Dirty bitmap page size.
    pub pgsize: u64,
    /// Largest dirty bitmap in one message, in bytes.
    pub max_bitmap_size: u64,
}

fn default_max_msg_fds() -> u32 {
    1
}
fn default_max_data_xfer_size() -> u32 {
    1 << 20
}
fn default_pgsizes() -> u64 {
    4096
}
fn default_max_dma_maps() -> u32 {
    65535
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_msg_fds: default_max_msg_fds(),
            max_data_xfer_size: default_max_data_xfer_size(),
            pgsizes: default_pgsizes(),
            max_dma_maps: default_max_dma_maps(),
            migration: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct VersionJson {
    #[serde(default)]
    capabilities: Option<Caps>,
}

/// A `VERSION` payload: major, minor, capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Capabilities (defaults where the JSON leaves them out or is absent).
    pub caps: Caps,
}

impl Version {
    /// Encode: major, minor, JSON with a terminating NUL.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&VersionJson {
            capabilities: Some(self.caps.clone()),
        })
        .unwrap_or_default();
        let mut w = Writer::default();
        w.u16(self.major).u16(self.minor).bytes(&json).u8(0);
        w.0
    }

    /// Decode; the JSON part is optional and may end with a NUL.
    pub fn decode(p: &[u8]) -> Result<Self> {
        let mut r = Reader::new(p, "VERSION");
        let major = r.u16()?;
        let minor = r.u16()?;
        let rest = r.rest();
        let json = match rest.iter().position(|&b| b == 0) {
            Some(n) => &rest[..n],
            None => rest,
        };
        let caps = if json.iter().all(|b| b.is_ascii_whitespace()) {
            Caps::default()
        } else {
            let v: VersionJson =
                serde_json::from_slice(json).map_err(|e| ProtoError::BadVersion {
                    what: e.to_string(),
                })?;
            v.capabilities.unwrap_or_default()
        };
        ensure!(
            caps.max_msg_fds <= 1024,
            BadVersionSnafu {
                what: format!("max_msg_fds {} is absurd", caps.max_msg_fds)
            }
        );
        Ok(Self { major, minor, caps })
    }
}

/// A bounded little-endian reader over a payload.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, naming `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(ProtoError::Short {
            what: self.what,
            len: self.buf.len(),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A u8.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// A u16.
    pub fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        s
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// A little-endian payload writer.
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }
    /// Append a u8.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Append a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Append a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Append a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Append bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_size_checks() {
        let h = Header {
            msg_id: 7,
            command: Command::RegionRead as u16,
            size: 32,
            flags: FLAGS_TYPE_REPLY | FLAGS_ERROR,
            error: 22,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[7, 0, 9, 0]);
        assert_eq!(Header::parse(&b, 64).unwrap(), h);
        assert!(h.is_reply());
        assert_eq!(h.payload_len(), 16);
        assert_eq!(
            Header::parse(&b, 31),
            Err(ProtoError::BadSize { size: 32, cap: 31 })
        );
        let small = Header { size: 15, ..h }.to_bytes();
        assert!(Header::parse(&small, 64).is_err());
    }

    #[test]
    fn version_roundtrip_defaults_and_garbage() {
        let v = Version {
            major: 0,
            minor: 1,
            caps: Caps {
                max_msg_fds: 8,
                ..Caps::default()
            },
        };
        assert_eq!(Version::decode(&v.encode()).unwrap(), v);
        let bare = Version::decode(&[0, 0, 1, 0]).unwrap();
        assert_eq!(bare.caps, Caps::default());
        let partial =
            Version::decode(b"\0\0\x01\0{\"capabilities\":{\"max_msg_fds\":3}}\0").unwrap();
        assert_eq!(partial.caps.max_msg_fds, 3);
        assert_eq!(partial.caps.max_data_xfer_size, 1 << 20);
        assert!(Version::decode(b"\0\0\x01\0{not json").is_err());
        assert!(Version::decode(&[0]).is_err());
        assert!(Version::decode(b"\0\0\x01\0{\"capabilities\":{\"max_msg_fds\":99999}}").is_err());
    }

    #[test]
    fn reader_is_bounded() {
        let mut r = Reader::new(&[1, 0, 0, 0, 2], "x");
        assert_eq!(r.u32().unwrap(), 1);
        assert!(r.u32().is_err());
        assert_eq!(r.u8().unwrap(), 2);
        assert!(r.take(usize::MAX).is_err());
        assert_eq!(Command::from_u16(14), Command::Invalid);
        assert_eq!(Command::from_u16(18), Command::MigDataWrite);
    }
}
