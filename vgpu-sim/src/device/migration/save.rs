//! The saving side: a context stream produced lazily, `read_data` by `read_data`.
//!
//! The stream is a queue of planned sections. Each section is emitted straight from its
//! source into the caller's buffer: graphics memory is copied once (from the device's
//! buffer to the reader's), with no intermediate copy of it. Small sections are encoded
//! when planned (at stop-copy entry, when the device is stopped and its state final).
//!
//! A `read` fills the caller's buffer in two steps. First every byte is copied, a digest
//! not known yet left as a hole; then the payload pieces the buffer holds are hashed from
//! the buffer, pieces of different sections on different cores
//! ([`state_region::format::parallel::spread`]), the sections they complete are finished
//! in stream order (which keeps the stream chain) and their digests fill the holes. So what
//! is hashed is exactly what the reader gets, and graphics memory, sent as 256 KiB `GMEM`
//! chunks, is hashed on every core the process has.

use std::collections::VecDeque;
use std::ops::Range;

use state_region::format::{
    parallel, section_encoded_len, ContextEncoder, ContextHeader, SectionEncoder, DIGEST_SIZE,
    END_SECTION_SIZE, SECTION_HEADER_SIZE,
};

use super::sections::{
    encode, gmem_chunks, gmem_chunks_len, SectionId, VgpuState, GMEM_CHUNK_HEADER, PAGE_RECORD_LEN,
    REQUIRED,
};
use crate::device::gmem::{GraphicsMemory, PageBitmap};

/// Pages per `GMEM_PAGES` section (1 MiB of page data).
pub const PAGES_PER_SECTION: usize = 256;

/// What a planned section's payload comes from.
#[derive(Debug)]
enum Body {
    /// Bytes encoded when planned.
    Bytes(Vec<u8>),
    /// A `GMEM` 2.0 chunk: its offset, then `len` bytes of graphics memory from there,
    /// read when emitted.
    GmemChunk { at: u64, len: u64 },
    /// These pages of graphics memory as records, read when emitted.
    Pages(Vec<u32>),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::GmemChunk { len, .. } => GMEM_CHUNK_HEADER + len,
            Body::Pages(p) => p.len() as u64 * PAGE_RECORD_LEN,
        }
    }

    /// Copy payload bytes from payload offset `at` into `dst`; returns how many (at least
    /// one while `dst` is non-empty and `at` is inside the payload).
    fn fill(&self, at: u64, dst: &mut [u8], gmem: &GraphicsMemory) -> usize {
        let at_us = at as usize;
        match self {
            Body::Bytes(b) => {
                let n = dst.len().min(b.len() - at_us);
                dst[..n].copy_from_slice(&b[at_us..at_us + n]);
                n
            }
            Body::GmemChunk { at: start, len } => {
                let head = GMEM_CHUNK_HEADER as usize;
                if at_us < head {
                    let n = dst.len().min(head - at_us);
                    dst[..n].copy_from_slice(&start.to_le_bytes()[at_us..at_us + n]);
                    return n;
                }
                let from = (start + at - GMEM_CHUNK_HEADER) as usize;
                let to = (start + len) as usize;
                let n = dst.len().min(to - from);
                dst[..n].copy_from_slice(&gmem.bytes()[from..from + n]);
                n
            }
            Body::Pages(pages) => {
                let rec = (at / PAGE_RECORD_LEN) as usize;
                let off = (at % PAGE_RECORD_LEN) as usize;
                let page = pages[rec];
                if off < 4 {
                    let idx = page.to_le_bytes();
                    let n = dst.len().min(4 - off);
                    dst[..n].copy_from_slice(&idx[off..off + n]);
                    n
                } else {
                    let src = &gmem.page(u64::from(page))[off - 4..];
                    let n = dst.len().min(src.len());
                    dst[..n].copy_from_slice(&src[..n]);
                    n
                }
            }
        }
    }
}

/// A section waiting its turn.
#[derive(Debug)]
struct Planned {
    id: SectionId,
    body: Body,
}

/// The section being emitted.
#[derive(Debug)]
struct Emitting {
    /// `Some` until the payload is complete and the digest computed.
    sec: Option<SectionEncoder>,
    header: [u8; SECTION_HEADER_SIZE],
    body: Body,
    len: u64,
    /// Bytes of the encoded section already emitted.
    pos: u64,
    /// Known once the payload was hashed.
    digest: Option<[u8; DIGEST_SIZE]>,
    /// Payload bytes of the current `read`'s buffer still to fill and hash: where in the
    /// buffer, and from which payload offset.
    fresh: Option<(Range<usize>, u64)>,
    /// Digest bytes emitted as a hole in the current buffer: (buffer offset, digest
    /// offset, length).
    holes: Vec<(usize, usize, usize)>,
}

impl Emitting {
    fn total(&self) -> u64 {
        section_encoded_len(self.len)
    }

    fn remaining(&self) -> u64 {
        self.total() - self.pos
    }

    fn payload_done(&self) -> bool {
        self.pos >= SECTION_HEADER_SIZE as u64 + self.len
    }

    /// Lay the section's next bytes out in `buf[at..]`; returns how many. The header and a
    /// known digest are copied; payload bytes are noted in `fresh` (filled and hashed by
    /// [`SaveStream::seal`]); an unknown digest is left as a hole.
    fn emit(&mut self, buf: &mut [u8], at: usize) -> usize {
        let hdr = SECTION_HEADER_SIZE as u64;
        let mut n = at;
        while n < buf.len() && self.pos < self.total() {
            if self.pos < hdr {
                let from = &self.header[self.pos as usize..];
                let k = from.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&from[..k]);
                n += k;
                self.pos += k as u64;
            } else if self.pos - hdr < self.len {
                let k = (buf.len() - n).min((self.len - (self.pos - hdr)) as usize);
                self.fresh = Some(match self.fresh.take() {
                    Some((r, from)) if r.end == n => (r.start..n + k, from),
                    _ => (n..n + k, self.pos - hdr),
                });
                n += k;
                self.pos += k as u64;
            } else {
                let d = (self.pos - hdr - self.len) as usize;
                let k = (DIGEST_SIZE - d).min(buf.len() - n);
                match &self.digest {
                    Some(digest) => buf[n..n + k].copy_from_slice(&digest[d..d + k]),
                    None => self.holes.push((n, d, k)),
                }
                n += k;
                self.pos += k as u64;
            }
        }
        n - at
    }
}

/// Bytes copied then hashed at a time (stays in cache between the two).
const FILL_STEP: usize = 64 << 10;

/// One payload piece of a `read`: where it goes, from which payload offset, from what, and
/// the section hashing it.
struct Fill<'a> {
    dst: &'a mut [u8],
    from: u64,
    body: &'a Body,
    sec: Option<&'a mut SectionEncoder>,
}

impl Fill<'_> {
    fn run(&mut self, gmem: &GraphicsMemory) {
        let mut done = 0;
        while done < self.dst.len() {
            let end = (done + FILL_STEP).min(self.dst.len());
            let start = done;
            while done < end {
                done += self
                    .body
                    .fill(self.from + done as u64, &mut self.dst[done..end], gmem);
            }
            if let Some(sec) = self.sec.as_mut() {
                sec.update(&self.dst[start..end]);
            }
        }
    }
}

/// Encoded length of `count` pages sent in `GMEM_PAGES` sections.
fn pages_len(count: u64) -> u64 {
    count * PAGE_RECORD_LEN + count.div_ceil(PAGES_PER_SECTION as u64) * section_encoded_len(0)
}

/// Length of a stream with no pre-copy: header, full `GMEM`, the fixed sections, end.
pub fn full_stream_len(mdev_type: &str, gmem_size: u64, fixed: u64) -> u64 {
    let header = ContextHeader::new(mdev_type).map_or(0, |h| h.encoded_len() as u64);
    header + gmem_chunks_len(gmem_size) + fixed + END_SECTION_SIZE as u64
}

/// One saving stream, from the first pre-copy read (or stop-copy entry) to its end.
#[derive(Debug)]
pub(crate) struct SaveStream {
    /// `None` once the end section was produced.
    enc: Option<ContextEncoder>,
    /// Bytes ready that no section hashes (context header, end section).
    raw: Vec<u8>,
    raw_pos: usize,
    cur: Option<Emitting>,
    queue: VecDeque<Planned>,
    /// Pages of the first pre-copy pass not yet taken (`None` outside pre-copy).
    first_pass: Option<PageBitmap>,
    /// No first-pass page below this one is left (bits there are only ever cleared).
    first_from: u64,
    /// Stop-copy is planned: the queue holds the rest of the stream, then the end.
    last: bool,
}

impl SaveStream {
    fn open(mdev_type: &str) -> Result<Self, String> {
        let header = ContextHeader::new(mdev_type).map_err(|e| e.to_string())?;
        let (enc, raw) = ContextEncoder::new(&header);
        Ok(Self {
            enc: Some(enc),
            raw,
            raw_pos: 0,
            cur: None,
            queue: VecDeque::new(),
            first_pass: None,
            first_from: 0,
            last: false,
        })
    }

    /// A stream entering pre-copy: the first pass is every non-zero page now; the dirty
    /// bitmap restarts from here.
    pub(crate) fn precopy(mdev_type: &str, gmem: &mut GraphicsMemory) -> Result<Self, String> {
        let mut s = Self::open(mdev_type)?;
        s.first_pass = Some(gmem.nonzero_pages());
        gmem.dirty_mut().clear_all();
        Ok(s)
    }

    /// A stream entering stop-copy without pre-copy: all of graphics memory (in `GMEM`
    /// chunks), then `state`.
    pub(crate) fn stop_copy(
        mdev_type: &str,
        gmem_size: u64,
        state: &VgpuState,
    ) -> Result<Self, String> {
        let mut s = Self::open(mdev_type)?;
        for (at, len) in gmem_chunks(gmem_size) {
            s.queue.push_back(Planned {
                id: SectionId::Gmem,
                body: Body::GmemChunk { at, len },
            });
        }
        s.plan_fixed(state);
        Ok(s)
    }

    /// Pages the first pass had when pre-copy started and still has.
    pub(crate) fn first_pass_pages(&self) -> u64 {
        self.first_pass.as_ref().map_or(0, PageBitmap::count)
    }

    fn plan_fixed(&mut self, state: &VgpuState) {
        for id in REQUIRED {
            self.queue.push_back(Planned {
                id,
                body: Body::Bytes(encode(id, state)),
            });
        }
        self.last = true;
    }

    /// Pre-copy ends: plan every page still to send (first pass and dirty), then `state`.
    pub(crate) fn plan_stop_copy(&mut self, gmem: &mut GraphicsMemory, state: &VgpuState) {
        let mut todo = self
            .first_pass
            .take()
            .unwrap_or_else(|| PageBitmap::new(gmem.pages()));
        todo.union_with(gmem.dirty());
        gmem.dirty_mut().clear_all();
        let mut pages = Vec::with_capacity(PAGES_PER_SECTION);
        let mut p = 0;
        while let Some(q) = todo.next_set(p) {
            pages.push(q as u32);
            if pages.len() == PAGES_PER_SECTION {
                self.queue.push_back(Planned {
                    id: SectionId::GmemPages,
                    body: Body::Pages(std::mem::take(&mut pages)),
                });
            }
            p = q + 1;
        }
        if !pages.is_empty() {
            self.queue.push_back(Planned {
                id: SectionId::GmemPages,
                body: Body::Pages(pages),
            });
        }
        self.plan_fixed(state);
    }

    /// The next pre-copy section: up to [`PAGES_PER_SECTION`] pages, first-pass pages
    /// first, then dirty ones; their bits are cleared now.
    fn next_precopy(&mut self, gmem: &mut GraphicsMemory) -> Option<Planned> {
        let mut pages = Vec::new();
        if let Some(fp) = self.first_pass.as_mut() {
            while pages.len() < PAGES_PER_SECTION {
                let Some(p) = fp.next_set(self.first_from) else {
                    break;
                };
                self.first_from = p + 1;
                fp.clear(p);
                gmem.dirty_mut().clear(p);
                pages.push(p as u32);
            }
        }
        let mut from = 0;
        while pages.len() < PAGES_PER_SECTION {
            let Some(p) = gmem.dirty().next_set(from) else {
                break;
            };
            gmem.dirty_mut().clear(p);
            pages.push(p as u32);
            from = p + 1;
        }
        (!pages.is_empty()).then_some(Planned {
            id: SectionId::GmemPages,
            body: Body::Pages(pages),
        })
    }

    fn begin(&mut self, p: Planned) -> Result<Emitting, String> {
        let enc = self.enc.as_mut().ok_or("the stream has ended")?;
        let len = p.body.len();
        let (major, minor) = p.id.version();
        let (sec, header) = enc
            .begin_section(p.id as u32, major, minor, len)
            .map_err(|e| e.to_string())?;
        Ok(Emitting {
            sec: Some(sec),
            header,
            body: p.body,
            len,
            pos: 0,
            digest: None,
            fresh: None,
            holes: Vec::new(),
        })
    }

    /// Copy the next stream bytes into `buf`; `Ok(0)` when there is nothing (more).
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        gmem: &mut GraphicsMemory,
    ) -> Result<usize, String> {
        let mut n = 0;
        // Sections whose bytes ended in this buffer, waiting for their digests.
        let mut emitted: Vec<Emitting> = Vec::new();
        while n < buf.len() {
            if self.raw_pos < self.raw.len() {
                let k = (self.raw.len() - self.raw_pos).min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&self.raw[self.raw_pos..self.raw_pos + k]);
                self.raw_pos += k;
                n += k;
            } else if let Some(cur) = self.cur.as_mut() {
                n += cur.emit(buf, n);
                if cur.remaining() == 0 {
                    emitted.extend(self.cur.take());
                }
            } else if let Some(p) = self.queue.pop_front() {
                self.cur = Some(self.begin(p)?);
            } else if self.last {
                // The end section chains every digest: seal what is pending first.
                self.seal(buf, &mut emitted, gmem)?;
                match self.enc.take() {
                    Some(enc) => {
                        self.raw = enc.end();
                        self.raw_pos = 0;
                    }
                    None => break,
                }
            } else {
                match self.next_precopy(gmem) {
                    Some(p) => self.queue.push_back(p),
                    None => break,
                }
            }
        }
        self.seal(buf, &mut emitted, gmem)?;
        Ok(n)
    }

    /// Fill and hash the payload pieces laid out in `buf`, each piece on whichever core
    /// claims it (copy and hash in cache-sized steps, so the hash reads what the copy just
    /// wrote); then finish the sections they complete in stream order and fill their
    /// digests' holes.
    fn seal(
        &mut self,
        buf: &mut [u8],
        emitted: &mut Vec<Emitting>,
        gmem: &GraphicsMemory,
    ) -> Result<(), String> {
        {
            let mut jobs: Vec<Fill<'_>> = Vec::new();
            let mut rest: &mut [u8] = buf;
            let mut base = 0;
            for e in emitted.iter_mut().chain(self.cur.iter_mut()) {
                let Some((range, from)) = e.fresh.take() else {
                    continue;
                };
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - base);
                let (dst, tail) = tail.split_at_mut(range.len());
                rest = tail;
                base = range.end;
                jobs.push(Fill {
                    dst,
                    from,
                    body: &e.body,
                    sec: e.sec.as_mut(),
                });
            }
            parallel::spread(&mut jobs, |j| j.dst.len(), |j| j.run(gmem));
        }
        for e in emitted.iter_mut().chain(self.cur.iter_mut()) {
            if !e.payload_done() || e.digest.is_some() {
                continue;
            }
            let sec = e.sec.take().ok_or("a section was finished twice")?;
            let enc = self.enc.as_mut().ok_or("the stream has ended")?;
            let digest = enc.finish_section(sec).map_err(|e| e.to_string())?;
            for (at, from, k) in e.holes.drain(..) {
                buf[at..at + k].copy_from_slice(&digest[from..from + k]);
            }
            e.digest = Some(digest);
        }
        emitted.clear();
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        (self.raw.len() - self.raw_pos) as u64 + self.cur.as_ref().map_or(0, Emitting::remaining)
    }

    /// `initial_bytes` and `dirty_bytes` for pre-copy info.
    pub(crate) fn precopy_info(&self, gmem: &GraphicsMemory) -> (u64, u64) {
        let initial = self.in_flight() + pages_len(self.first_pass_pages());
        (initial, pages_len(gmem.dirty().count()))
    }

    /// Bytes still to come: exact once stop-copy is planned; otherwise an estimate with
    /// `fixed` bytes of fixed sections.
    pub(crate) fn remaining(&self, gmem: &GraphicsMemory, fixed: u64) -> u64 {
        let planned: u64 = self
            .queue
            .iter()
            .map(|p| section_encoded_len(p.body.len()))
            .sum();
        let end = if self.enc.is_some() {
            END_SECTION_SIZE as u64
        } else {
            0
        };
        if self.last {
            return self.in_flight() + planned + end;
        }
        let mut todo = self
            .first_pass
            .clone()
            .unwrap_or_else(|| PageBitmap::new(gmem.pages()));
        todo.union_with(gmem.dirty());
        self.in_flight() + planned + pages_len(todo.count()) + fixed + end
    }
}
