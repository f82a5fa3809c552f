//! Reading a stream without copying its bulk bytes: guest pages and device data go from the
//! input's own buffer straight to where they belong ([`RecordSink`]), checked on the way.

use std::io::{BufRead, ErrorKind};

use super::reader::StreamReader;
use super::record::{Record, RecordKind, Result, StreamError};

/// What a [`RecordSink`] may fail with (kept whole as the source of [`StreamError::Sink`]).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where [`StreamReader::next_record_into`] puts the bulk bytes of the stream, piece by
/// piece, as they come out of the input's buffer.
///
/// Every piece has passed the reader's checks that can be made before the end record (the
/// record's kind, length, order and, for guest pages, address range); the digests that
/// cover the bytes are checked at the end record, as with [`StreamReader::next_record`]. A
/// stream refused there has been partly applied: the caller discards what it applied (a
/// migration target discards its whole VM).
pub trait RecordSink {
    /// `bytes` belong in guest RAM at `gpa` (a piece of a RAM_PAGES record, inside guest
    /// RAM; not necessarily whole pages).
    fn ram(&mut self, gpa: u64, bytes: &[u8]) -> std::result::Result<(), SinkError>;

    /// `bytes` are the next piece of the device's data (a piece of a DEVICE_DATA record).
    fn device(&mut self, bytes: &[u8]) -> std::result::Result<(), SinkError>;
}

/// Bytes of guest pages hashed and then applied at a time (fits the L1 data cache).
const HOT: usize = 32 << 10;

/// Which sink method a bulk payload goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bulk {
    Ram(u64),
    Device,
}

impl<R: BufRead> StreamReader<R> {
    /// The next record that is neither guest pages nor device data; those before it go to
    /// `sink` straight from the input's buffer (no copy, no allocation). `Ok(None)` once
    /// the end record has been read and verified.
    pub fn next_record_into(&mut self, sink: &mut dyn RecordSink) -> Result<Option<Record>> {
        loop {
            let Some(h) = self.head()? else {
                return Ok(None);
            };
            match h.kind {
                RecordKind::RamPages => {
                    let gpa = self.ram_address(&h)?;
                    self.pump(u64::from(h.length) - 8, Bulk::Ram(gpa), sink)?;
                }
                RecordKind::DeviceData => {
                    self.pump(u64::from(h.length), Bulk::Device, sink)?;
                }
                _ => return self.payload(h).map(Some),
            }
        }
    }

    /// Hand `len` payload bytes to `sink` as the input's buffer holds them; page bytes go
    /// into the RAM digest on the way.
    fn pump(&mut self, len: u64, to: Bulk, sink: &mut dyn RecordSink) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let at = self.offset;
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(StreamError::Io { offset: at, source }),
            };
            if buf.is_empty() {
                return Err(StreamError::Truncated {
                    offset: at,
                    what: "a record payload",
                });
            }
            let n = buf.len().min((len - done) as usize);
            let piece = &buf[..n];
            match to {
                Bulk::Ram(gpa) => {
                    // Hash, then apply, a cache-sized piece at a time: the second pass reads
                    // from the cache.
                    let mut off = 0;
                    for sub in piece.chunks(HOT) {
                        self.ram.update(sub);
                        sink.ram(gpa + done + off, sub)
                            .map_err(|source| StreamError::Sink {
                                offset: at + off,
                                source,
                            })?;
                        off += sub.len() as u64;
                    }
                }
                Bulk::Device => sink
                    .device(piece)
                    .map_err(|source| StreamError::Sink { offset: at, source })?,
            }
            self.input.consume(n);
            self.offset += n as u64;
            done += n as u64;
        }
        Ok(())
    }
}
