//! Reading a stream, as untrusted input.

use std::io::{ErrorKind, Read};

use sha2::{Digest, Sha256};

use super::record::*;
use super::{STREAM_MAJOR, STREAM_MINOR};

/// Whether the end record's digest is checked (always, except by `inspect`, which reports
/// a mismatch instead of stopping at it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerCheck {
    /// A mismatch is an error.
    Enforce,
    /// A mismatch is recorded in [`StreamReader::digest_ok`].
    Report,
}

/// A record header, read and checked (the payload not yet read).
#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    /// Stream offset of the record.
    pub at: u64,
    /// Its kind.
    pub kind: RecordKind,
    /// Its payload length (checked against the cap and the kind).
    pub length: u32,
}

/// Reads records one at a time, validating as it goes.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    pub(super) input: R,
    pub(super) hash: Sha256,
    pub(super) ram: RamHash,
    pub(super) offset: u64,
    header: Header,
    device_done: bool,
    seen_config: bool,
    seen_vcpu: bool,
    finished: bool,
    check: TrailerCheck,
    digest_ok: Option<bool>,
    expect_eof: bool,
    spare: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// Read and validate the header.
    pub fn new(input: R, check: TrailerCheck) -> Result<Self> {
        let mut r = Self {
            input,
            hash: Sha256::new(),
            ram: RamHash::new(),
            offset: 0,
            header: Header {
                major: 0,
                minor: 0,
                flags: 0,
                ram_size: 0,
                page_size: 0,
                mdev_type: String::new(),
            },
            device_done: false,
            seen_config: false,
            seen_vcpu: false,
            finished: false,
            check,
            digest_ok: None,
            expect_eof: true,
            spare: Vec::new(),
        };
        let mut fixed = [0u8; 30];
        r.fill(&mut fixed, "stream header")?;
        let magic: [u8; 8] = fixed[0..8].try_into().unwrap_or_default();
        if magic != STREAM_MAGIC {
            return Err(StreamError::BadMagic { found: magic });
        }
        let u16at = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]);
        let u32at =
            |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        let major = u16at(8);
        let minor = u16at(10);
        if major != STREAM_MAJOR {
            return Err(StreamError::Version {
                major,
                minor,
                expected: STREAM_MAJOR,
            });
        }
        let _ = STREAM_MINOR; // newer minors only add record kinds we would reject by kind
        let flags = u32at(12);
        let ram_size = u64::from(u32at(16)) | (u64::from(u32at(20)) << 32);
        let page_size = u32at(24);
        let name_len = u16at(28) as usize;
        if flags != 0 {
            return Err(StreamError::BadHeader {
                field: "flags",
                why: format!("unknown flags {flags:#x}"),
            });
        }
        if page_size != 4096 {
            return Err(StreamError::BadHeader {
                field: "page_size",
                why: format!("{page_size} (only 4096 is supported)"),
            });
        }
        if ram_size == 0 || ram_size % 4096 != 0 || ram_size > (1 << 40) {
            return Err(StreamError::BadHeader {
                field: "ram_size",
                why: format!("{ram_size:#x} is not a whole number of pages up to 1 TiB"),
            });
        }
        if name_len == 0 || name_len > MAX_TYPE_NAME {
            return Err(StreamError::BadHeader {
                field: "mdev_type",
                why: format!("name length {name_len} (1..={MAX_TYPE_NAME})"),
            });
        }
        let mut name = vec![0u8; name_len];
        r.fill(&mut name, "mdev type name")?;
        let mdev_type = String::from_utf8(name).map_err(|_| StreamError::BadHeader {
            field: "mdev_type",
            why: "not UTF-8".into(),
        })?;
        r.header = Header {
            major,
            minor,
            flags,
            ram_size,
            page_size,
            mdev_type,
        };
        Ok(r)
    }

    /// Give a record's buffer back for the next record (saves an allocation and its page
    /// faults per record on a bulk stream).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
    }

    /// For a stream inside a connection that goes on after it (control messages follow):
    /// do not wait for end-of-file after the end record.
    pub fn without_eof_check(mut self) -> Self {
        self.expect_eof = false;
        self
    }

    /// The stream header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// With [`TrailerCheck::Report`]: whether the end digest matched (after the end).
    pub fn digest_ok(&self) -> Option<bool> {
        self.digest_ok
    }

    pub(super) fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        self.fill_inner(buf, what, true)
    }

    fn fill_inner(&mut self, buf: &mut [u8], what: &'static str, hash: bool) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(StreamError::Truncated {
                        offset: self.offset + got as u64,
                        what,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(StreamError::Io {
                        offset: self.offset + got as u64,
                        source,
                    })
                }
            }
        }
        if hash {
            self.hash.update(&*buf);
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// The next record; `Ok(None)` once the end record has been read and verified.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        match self.head()? {
            None => Ok(None),
            Some(h) => self.payload(h).map(Some),
        }
    }

    /// Read and check the next record's header: `Ok(None)` once the end record has been
    /// read and verified (the end record is handled here whole).
    pub(super) fn head(&mut self) -> Result<Option<Head>> {
        if self.finished {
            return Ok(None);
        }
        let at = self.offset;
        let before = self.hash.clone();
        let mut fixed = [0u8; 8];
        self.fill(&mut fixed, "a record header or the end record")?;
        let kind_raw = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let length = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let kind = RecordKind::from_u32(kind_raw).ok_or(StreamError::UnknownRecord {
            kind: kind_raw,
            offset: at,
        })?;
        let bad_len = |why: String| StreamError::BadLength {
            kind: kind.name(),
            offset: at,
            length,
            why,
        };
        if length > MAX_RECORD {
            return Err(bad_len(format!("over the {MAX_RECORD}-byte cap")));
        }
        let order = |why| StreamError::Order {
            kind: kind.name(),
            offset: at,
            why,
        };
        match kind {
            RecordKind::End => {
                if length != END_LEN {
                    return Err(bad_len(format!(
                        "the end record holds a {END_LEN}-byte pair of digests"
                    )));
                }
                let mut digest = [0u8; END_LEN as usize];
                // The digests themselves are not part of what they cover.
                let mut got = 0;
                while got < digest.len() {
                    match self.input.read(&mut digest[got..]) {
                        Ok(0) => {
                            return Err(StreamError::Truncated {
                                offset: self.offset + got as u64,
                                what: "the stream digest",
                            })
                        }
                        Ok(n) => got += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(source) => {
                            return Err(StreamError::Io {
                                offset: self.offset,
                                source,
                            })
                        }
                    }
                }
                self.offset += u64::from(END_LEN);
                let expected: [u8; 32] = before.finalize().into();
                let ram = self.ram.digest();
                let ok = expected[..] == digest[..32] && ram[..] == digest[32..];
                self.digest_ok = Some(ok);
                if !ok && self.check == TrailerCheck::Enforce {
                    return Err(StreamError::Digest { offset: at });
                }
                if !self.device_done {
                    return Err(order("the device data never ended"));
                }
                if !self.seen_config || !self.seen_vcpu {
                    return Err(order("config or vCPU state is missing"));
                }
                let mut extra = [0u8; 1];
                while self.expect_eof {
                    match self.input.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => {
                            return Err(StreamError::Trailing {
                                offset: self.offset,
                            })
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(source) => {
                            return Err(StreamError::Io {
                                offset: self.offset,
                                source,
                            })
                        }
                    }
                }
                self.finished = true;
                return Ok(None);
            }
            RecordKind::RamPages => {
                if length < 8 || (length - 8) % 4096 != 0 || length == 8 {
                    return Err(bad_len("expected an address and whole pages".into()));
                }
            }
            RecordKind::RamZero => {
                if length != 16 {
                    return Err(bad_len("expected an address and a page count".into()));
                }
            }
            RecordKind::DeviceData => {
                if self.device_done {
                    return Err(order("device data after the device's end"));
                }
                if length == 0 {
                    return Err(bad_len("an empty chunk".into()));
                }
            }
            RecordKind::DeviceEnd => {
                if length != 0 {
                    return Err(bad_len("the device end has no payload".into()));
                }
                if self.device_done {
                    return Err(order("a second device end"));
                }
            }
            RecordKind::Config => {
                if !self.device_done {
                    return Err(order("config space comes after the device data"));
                }
                if self.seen_config {
                    return Err(order("a second config record"));
                }
            }
            RecordKind::Vcpu => {
                if self.seen_vcpu {
                    return Err(order("a second vCPU record"));
                }
            }
            RecordKind::Switchover | RecordKind::Sync => {
                if length != 8 {
                    return Err(bad_len("expected 8 bytes".into()));
                }
            }
        }
        Ok(Some(Head { at, kind, length }))
    }

    /// Whether `gpa..gpa + len` lies inside guest RAM, page-aligned.
    pub(super) fn check_range(&self, h: &Head, gpa: u64, len: u64) -> Result<()> {
        let ram = self.header.ram_size;
        let ok = gpa % 4096 == 0 && gpa.checked_add(len).is_some_and(|end| end <= ram);
        if ok {
            Ok(())
        } else {
            Err(StreamError::BadAddress {
                kind: h.kind.name(),
                offset: h.at,
                gpa,
                len,
                ram,
            })
        }
    }

    /// Read a RAM_PAGES record's address and check the range its pages cover.
    pub(super) fn ram_address(&mut self, h: &Head) -> Result<u64> {
        let mut a = [0u8; 8];
        self.fill(&mut a, "a record payload")?;
        let gpa = u64::from_le_bytes(a);
        self.check_range(h, gpa, u64::from(h.length) - 8)?;
        Ok(gpa)
    }

    /// Read the payload of the record whose header `h` was just read.
    pub(super) fn payload(&mut self, h: Head) -> Result<Record> {
        let Head { kind, length, .. } = h;
        if kind == RecordKind::RamPages {
            // The address under SHA-256 with the rest of the metadata (checked before the
            // pages are read), the pages under XXH3.
            let gpa = self.ram_address(&h)?;
            let mut data = std::mem::take(&mut self.spare);
            // Only the bytes beyond what the buffer already held get zeroed.
            data.resize(length as usize - 8, 0);
            self.fill_inner(&mut data, "a record payload", false)?;
            self.ram.update(&data);
            return Ok(Record::RamPages { gpa, data });
        }
        let mut payload = std::mem::take(&mut self.spare);
        payload.resize(length as usize, 0);
        let bulk = kind == RecordKind::DeviceData;
        self.fill_inner(&mut payload, "a record payload", !bulk)?;
        let u64at = |b: &[u8], i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(match kind {
            RecordKind::RamPages | RecordKind::End => unreachable!("handled above"),
            RecordKind::RamZero => {
                let gpa = u64at(&payload, 0);
                let pages = u64at(&payload, 8);
                self.check_range(&h, gpa, pages.saturating_mul(4096))?;
                Record::RamZero { gpa, pages }
            }
            RecordKind::DeviceData => Record::DeviceData(payload),
            RecordKind::DeviceEnd => {
                self.device_done = true;
                Record::DeviceEnd
            }
            RecordKind::Config => {
                self.seen_config = true;
                Record::Config(payload)
            }
            RecordKind::Vcpu => {
                self.seen_vcpu = true;
                Record::Vcpu(payload)
            }
            RecordKind::Switchover => Record::Switchover {
                stopped_ns: u64at(&payload, 0),
            },
            RecordKind::Sync => Record::Sync {
                seq: u64at(&payload, 0),
            },
        })
    }
}
