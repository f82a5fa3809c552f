//! The saving side: a context stream produced lazily, `read_data` by `read_data`.
//!
//! The stream is a queue of planned sections. Each section is emitted straight from its
//! source into the caller's buffer and hashed on the way: graphics memory is copied once
//! (from the device's buffer to the reader's) and hashed from there, in cache-sized pieces,
//! with no intermediate copy of it. Small sections are encoded when planned (at stop-copy
//! entry, when the device is stopped and its state final).

use std::collections::VecDeque;

use state_region::format::{
    section_encoded_len, ContextEncoder, ContextHeader, SectionEncoder, DIGEST_SIZE,
    END_SECTION_SIZE, SECTION_HEADER_SIZE,
};

use super::sections::{encode, SectionId, VgpuState, PAGE_RECORD_LEN, REQUIRED};
use crate::device::gmem::{GraphicsMemory, PageBitmap};

/// Pages per `GMEM_PAGES` section (1 MiB of page data).
pub const PAGES_PER_SECTION: usize = 256;
/// Bytes hashed per piece while streaming a large payload (stays in cache between the
/// copy and the hash).
const HASH_PIECE: usize = 64 << 10;

/// What a planned section's payload comes from.
#[derive(Debug)]
enum Body {
    /// Bytes encoded when planned.
    Bytes(Vec<u8>),
    /// All of graphics memory, read when emitted.
    GmemAll,
    /// These pages of graphics memory as records, read when emitted.
    Pages(Vec<u32>),
}

impl Body {
    fn len(&self, gmem_size: u64) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::GmemAll => gmem_size,
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
            Body::GmemAll => {
                let src = gmem.bytes();
                let n = dst.len().min(src.len() - at_us);
                dst[..n].copy_from_slice(&src[at_us..at_us + n]);
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
    digest: [u8; DIGEST_SIZE],
}

impl Emitting {
    fn total(&self) -> u64 {
        section_encoded_len(self.len)
    }

    fn remaining(&self) -> u64 {
        self.total() - self.pos
    }

    fn emit(
        &mut self,
        out: &mut [u8],
        gmem: &GraphicsMemory,
        enc: &mut ContextEncoder,
    ) -> Result<usize, String> {
        let hdr = SECTION_HEADER_SIZE as u64;
        let mut n = 0;
        while n < out.len() && self.pos < self.total() {
            if self.pos < hdr {
                let from = &self.header[self.pos as usize..];
                let k = from.len().min(out.len() - n);
                out[n..n + k].copy_from_slice(&from[..k]);
                n += k;
                self.pos += k as u64;
            } else if self.pos - hdr < self.len {
                let at = self.pos - hdr;
                let want = (out.len() - n)
                    .min(HASH_PIECE)
                    .min((self.len - at) as usize);
                let dst = &mut out[n..n + want];
                let k = self.body.fill(at, dst, gmem);
                if let Some(sec) = self.sec.as_mut() {
                    sec.update(&dst[..k]);
                }
                n += k;
                self.pos += k as u64;
            } else {
                if let Some(sec) = self.sec.take() {
                    self.digest = enc.finish_section(sec).map_err(|e| e.to_string())?;
                }
                let d = (self.pos - hdr - self.len) as usize;
                let k = (DIGEST_SIZE - d).min(out.len() - n);
                out[n..n + k].copy_from_slice(&self.digest[d..d + k]);
                n += k;
                self.pos += k as u64;
            }
        }
        Ok(n)
    }
}

/// Encoded length of `count` pages sent in `GMEM_PAGES` sections.
fn pages_len(count: u64) -> u64 {
    count * PAGE_RECORD_LEN + count.div_ceil(PAGES_PER_SECTION as u64) * section_encoded_len(0)
}

/// Length of a stream with no pre-copy: header, full `GMEM`, the fixed sections, end.
pub fn full_stream_len(mdev_type: &str, gmem_size: u64, fixed: u64) -> u64 {
    let header = ContextHeader::new(mdev_type).map_or(0, |h| h.encoded_len() as u64);
    header + section_encoded_len(gmem_size) + fixed + END_SECTION_SIZE as u64
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

    /// A stream entering stop-copy without pre-copy: all of graphics memory, then `state`.
    pub(crate) fn stop_copy(mdev_type: &str, state: &VgpuState) -> Result<Self, String> {
        let mut s = Self::open(mdev_type)?;
        s.queue.push_back(Planned {
            id: SectionId::Gmem,
            body: Body::GmemAll,
        });
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

    fn begin(&mut self, p: Planned, gmem_size: u64) -> Result<Emitting, String> {
        let enc = self.enc.as_mut().ok_or("the stream has ended")?;
        let len = p.body.len(gmem_size);
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
            digest: [0; DIGEST_SIZE],
        })
    }

    /// Copy the next stream bytes into `buf`; `Ok(0)` when there is nothing (more).
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        gmem: &mut GraphicsMemory,
    ) -> Result<usize, String> {
        let mut n = 0;
        while n < buf.len() {
            if self.raw_pos < self.raw.len() {
                let k = (self.raw.len() - self.raw_pos).min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&self.raw[self.raw_pos..self.raw_pos + k]);
                self.raw_pos += k;
                n += k;
            } else if let Some(cur) = self.cur.as_mut() {
                let enc = self.enc.as_mut().ok_or("the stream has ended")?;
                n += cur.emit(&mut buf[n..], gmem, enc)?;
                if cur.remaining() == 0 {
                    self.cur = None;
                }
            } else if let Some(p) = self.queue.pop_front() {
                self.cur = Some(self.begin(p, gmem.size())?);
            } else if self.last {
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
        Ok(n)
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
            .map(|p| section_encoded_len(p.body.len(gmem.size())))
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
