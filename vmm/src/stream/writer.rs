//! Writing a stream.

use std::io::Write;

use sha2::{Digest, Sha256};
use snafu::ResultExt;

use super::record::{Header, IoSnafu, RamHash, RecordKind, Result, END_LEN, MAX_RECORD};

/// Bytes written, by kind of content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Guest RAM page bytes (payload only).
    pub ram: u64,
    /// Pages sent as zero runs.
    pub zero_pages: u64,
    /// Device data bytes (payload only).
    pub device: u64,
    /// Config and vCPU state bytes.
    pub state: u64,
    /// Every byte, framing included.
    pub total: u64,
}

/// A writer that can take a whole buffer of bytes instead of copying them (a sender thread
/// that writes buffers to a socket). The default copies.
pub trait BulkWrite: Write {
    /// Write `buf[..len]`, taking `buf`; returns a buffer of at least `buf`'s length for
    /// the caller to fill next (a spent one, whose contents are stale).
    fn write_bulk(&mut self, buf: Vec<u8>, len: usize) -> std::io::Result<Vec<u8>> {
        self.write_all(&buf[..len])?;
        Ok(buf)
    }
}

impl BulkWrite for Vec<u8> {}
impl BulkWrite for std::fs::File {}
impl<W: BulkWrite + ?Sized> BulkWrite for &mut W {
    fn write_bulk(&mut self, buf: Vec<u8>, len: usize) -> std::io::Result<Vec<u8>> {
        (**self).write_bulk(buf, len)
    }
}

/// Writes records, hashing everything for the end record.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    hash: Sha256,
    ram: RamHash,
    /// Bytes the next bulk RAM record starts with that [`StreamWriter::ram_ahead`] hashed.
    ahead: usize,
    stats: WriteStats,
}

impl<W: Write> StreamWriter<W> {
    /// Start a stream with `header`.
    pub fn new(out: W, header: &Header) -> Result<Self> {
        let mut w = Self {
            out,
            hash: Sha256::new(),
            ram: RamHash::new(),
            ahead: 0,
            stats: WriteStats::default(),
        };
        w.raw(&header.encode())?;
        Ok(w)
    }

    /// Bytes and kinds written so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn raw(&mut self, b: &[u8]) -> Result<()> {
        let offset = self.stats.total;
        self.out.write_all(b).context(IoSnafu { offset })?;
        self.hash.update(b);
        self.stats.total += b.len() as u64;
        Ok(())
    }

    fn raw_unhashed(&mut self, b: &[u8]) -> Result<()> {
        let offset = self.stats.total;
        self.out.write_all(b).context(IoSnafu { offset })?;
        self.stats.total += b.len() as u64;
        Ok(())
    }

    fn record(&mut self, kind: RecordKind, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(len <= MAX_RECORD as usize);
        self.raw(&(kind as u32).to_le_bytes())?;
        self.raw(&(len as u32).to_le_bytes())?;
        for p in parts {
            self.raw(p)?;
        }
        Ok(())
    }

    /// Consecutive whole pages from `gpa` (split into records under the size cap). The
    /// header and address go into the stream's SHA-256, the page bytes into its XXH3-128.
    pub fn ram_pages(&mut self, gpa: u64, data: &[u8]) -> Result<()> {
        let step = (MAX_RECORD as usize - 8) / 4096 * 4096;
        for (i, chunk) in data.chunks(step).enumerate() {
            let a = gpa + (i * step) as u64;
            self.raw(&(RecordKind::RamPages as u32).to_le_bytes())?;
            self.raw(&((chunk.len() + 8) as u32).to_le_bytes())?;
            self.raw(&a.to_le_bytes())?;
            self.ram.update(chunk);
            self.raw_unhashed(chunk)?;
            self.stats.ram += chunk.len() as u64;
        }
        Ok(())
    }

    /// Hash `bytes` now, while they are hot in the cache: they are the next bytes of the
    /// buffer the next [`Self::ram_pages_bulk`] call carries (which then does not hash them
    /// again). The caller keeps that promise; a broken one makes the target refuse the
    /// stream, never accept a wrong one.
    pub fn ram_ahead(&mut self, bytes: &[u8]) {
        self.ram.update(bytes);
        self.ahead += bytes.len();
    }

    /// [`Self::ram_pages`] for the whole pages in `buf[..len]` (at most one record's worth),
    /// handing the buffer itself to the writer; returns a buffer to fill next. The bytes
    /// [`Self::ram_ahead`] hashed are not hashed again.
    pub fn ram_pages_bulk(&mut self, gpa: u64, buf: Vec<u8>, len: usize) -> Result<Vec<u8>>
    where
        W: BulkWrite,
    {
        debug_assert!(len % 4096 == 0 && len + 8 <= MAX_RECORD as usize);
        if len == 0 {
            return Ok(buf);
        }
        self.raw(&(RecordKind::RamPages as u32).to_le_bytes())?;
        self.raw(&((len + 8) as u32).to_le_bytes())?;
        self.raw(&gpa.to_le_bytes())?;
        let ahead = std::mem::take(&mut self.ahead).min(len);
        self.ram.update(&buf[ahead..len]);
        let offset = self.stats.total;
        let next = self.out.write_bulk(buf, len).context(IoSnafu { offset })?;
        self.stats.total += len as u64;
        self.stats.ram += len as u64;
        Ok(next)
    }

    /// `pages` pages from `gpa` that the target must zero.
    pub fn ram_zero(&mut self, gpa: u64, pages: u64) -> Result<()> {
        self.record(
            RecordKind::RamZero,
            &[&gpa.to_le_bytes(), &pages.to_le_bytes()],
        )?;
        self.stats.zero_pages += pages;
        Ok(())
    }

    /// One device data chunk (at most [`MAX_RECORD`] bytes).
    pub fn device_data(&mut self, chunk: &[u8]) -> Result<()> {
        for c in chunk.chunks(MAX_RECORD as usize) {
            // Header hashed, payload not (the device's own digests cover it).
            self.raw(&(RecordKind::DeviceData as u32).to_le_bytes())?;
            self.raw(&(c.len() as u32).to_le_bytes())?;
            self.raw_unhashed(c)?;
            self.stats.device += c.len() as u64;
        }
        Ok(())
    }

    /// The device's data is complete.
    pub fn device_end(&mut self) -> Result<()> {
        self.record(RecordKind::DeviceEnd, &[])
    }

    /// PCI config space state.
    pub fn config(&mut self, bytes: &[u8]) -> Result<()> {
        self.record(RecordKind::Config, &[bytes])?;
        self.stats.state += bytes.len() as u64;
        Ok(())
    }

    /// vCPU state.
    pub fn vcpu(&mut self, bytes: &[u8]) -> Result<()> {
        self.record(RecordKind::Vcpu, &[bytes])?;
        self.stats.state += bytes.len() as u64;
        Ok(())
    }

    /// Ask the target to confirm it consumed everything so far.
    pub fn sync(&mut self, seq: u64) -> Result<()> {
        self.record(RecordKind::Sync, &[&seq.to_le_bytes()])
    }

    /// The source stopped its vCPU at `stopped_ns` (CLOCK_MONOTONIC).
    pub fn switchover(&mut self, stopped_ns: u64) -> Result<()> {
        self.record(RecordKind::Switchover, &[&stopped_ns.to_le_bytes()])
    }

    /// Write the end record and flush; returns the writer and the totals.
    pub fn finish(mut self) -> Result<(W, WriteStats)> {
        let digest: [u8; 32] = self.hash.clone().finalize().into();
        let ram = self.ram.digest();
        let offset = self.stats.total;
        let mut rec = Vec::with_capacity(8 + END_LEN as usize);
        rec.extend_from_slice(&(RecordKind::End as u32).to_le_bytes());
        rec.extend_from_slice(&END_LEN.to_le_bytes());
        rec.extend_from_slice(&digest);
        rec.extend_from_slice(&ram);
        self.out.write_all(&rec).context(IoSnafu { offset })?;
        self.out.flush().context(IoSnafu { offset })?;
        self.stats.total += rec.len() as u64;
        Ok((self.out, self.stats))
    }
}
