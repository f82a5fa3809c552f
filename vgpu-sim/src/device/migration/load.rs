//! The resuming side: stage a context stream, validate it whole, commit it at once.

use state_region::format::{ContextParser, ParserLimits, SectionHeader, SectionSink};

use super::sections::{
    self, expected_len, SectionId, ALL_SECTIONS, GMEM_CHUNK_HEADER, PAGE_RECORD_LEN, REQUIRED,
    SECTION_MAJOR, SECTION_MINOR,
};
use crate::device::gmem::{zeroed, GraphicsMemory, PageBitmap};
use crate::device::zeroed::ZeroedBuf;
use crate::device::Vgpu;
use crate::regs::PAGE_SIZE;
use crate::types::VgpuType;

/// Where a stream's sections are staged until the whole stream verified.
#[derive(Debug)]
struct Staging {
    ty: VgpuType,
    gmem: ZeroedBuf,
    written: PageBitmap,
    /// Payloads of the fixed sections, by position in [`ALL_SECTIONS`].
    fixed: [Vec<u8>; ALL_SECTIONS.len()],
    /// Verified sections, by position in [`ALL_SECTIONS`].
    seen: [u32; ALL_SECTIONS.len()],
    /// Sections begun (verified or not), to refuse duplicates before staging them.
    begun: [u32; ALL_SECTIONS.len()],
    /// Index bytes of the `GMEM_PAGES` record being read.
    index: [u8; 4],
    /// Offset bytes of the `GMEM` 2.0 chunk being read.
    chunk_at: [u8; 8],
    /// Graphics memory covered by `GMEM` 2.0 chunks so far: the next chunk's offset.
    chunked: u64,
    /// The `GMEM` sections' major version, once one began.
    gmem_major: Option<u16>,
    /// The oldest section minor version seen (which build wrote the context).
    oldest_minor: u16,
}

fn slot(id: SectionId) -> usize {
    ALL_SECTIONS.iter().position(|s| *s == id).unwrap_or(0)
}

impl Staging {
    /// Staging for a device of type `ty`, in `spare` (zeroed and faulted in ahead) when it
    /// is given and fits.
    fn new(ty: VgpuType, spare: Option<ZeroedBuf>) -> Self {
        let gmem = spare
            .filter(|b| b.len() as u64 == ty.gmem_size)
            .unwrap_or_else(|| zeroed(ty.gmem_size));
        Self {
            ty,
            gmem,
            written: PageBitmap::new(ty.gmem_pages()),
            fixed: Default::default(),
            seen: [0; ALL_SECTIONS.len()],
            begun: [0; ALL_SECTIONS.len()],
            index: [0; 4],
            chunk_at: [0; 8],
            chunked: 0,
            gmem_major: None,
            oldest_minor: u16::MAX,
        }
    }

    fn id(hdr: &SectionHeader) -> Result<SectionId, String> {
        SectionId::from_raw(hdr.id).ok_or_else(|| format!("unknown section id {}", hdr.id))
    }

    /// Stage a piece of a `GMEM` 2.0 chunk of `len` payload bytes at payload offset `at`:
    /// its offset first (which must be where the previous chunk ended), then its data.
    fn chunk_data(&mut self, len: u64, mut at: u64, mut bytes: &[u8]) -> Result<(), String> {
        let head = GMEM_CHUNK_HEADER as usize;
        if at < GMEM_CHUNK_HEADER {
            let from = at as usize;
            let k = bytes.len().min(head - from);
            self.chunk_at[from..from + k].copy_from_slice(&bytes[..k]);
            at += k as u64;
            bytes = &bytes[k..];
            if at == GMEM_CHUNK_HEADER {
                let offset = u64::from_le_bytes(self.chunk_at);
                let data = len - GMEM_CHUNK_HEADER;
                if offset != self.chunked {
                    return Err(format!(
                        "section GMEM: chunk at offset {offset}, expected the next at {} \
                         (a chunk missing, repeated or out of order)",
                        self.chunked
                    ));
                }
                if data > self.ty.gmem_size - offset {
                    return Err(format!(
                        "section GMEM: chunk of {data} bytes at offset {offset} ends beyond \
                         graphics memory ({} bytes)",
                        self.ty.gmem_size
                    ));
                }
                self.chunked = offset + data;
            }
        }
        if !bytes.is_empty() {
            // The offset was checked: this chunk covers `chunked - data .. chunked`.
            let start =
                (self.chunked - (len - GMEM_CHUNK_HEADER) + at - GMEM_CHUNK_HEADER) as usize;
            self.gmem[start..start + bytes.len()].copy_from_slice(bytes);
            self.written.set_range(start as u64, bytes.len() as u64);
        }
        Ok(())
    }

    /// Stage a piece of a `GMEM_PAGES` payload at payload offset `at`.
    fn page_data(&mut self, mut at: u64, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let off = (at % PAGE_RECORD_LEN) as usize;
            let k = if off < 4 {
                let k = bytes.len().min(4 - off);
                self.index[off..off + k].copy_from_slice(&bytes[..k]);
                k
            } else {
                let page = u64::from(u32::from_le_bytes(self.index));
                if page >= self.ty.gmem_pages() {
                    return Err(format!(
                        "section GMEM_PAGES: page index {page} is beyond graphics memory ({} pages)",
                        self.ty.gmem_pages()
                    ));
                }
                let in_page = off - 4;
                let k = bytes.len().min(PAGE_SIZE as usize - in_page);
                let start = (page * PAGE_SIZE) as usize + in_page;
                self.gmem[start..start + k].copy_from_slice(&bytes[..k]);
                self.written.set(page);
                k
            };
            at += k as u64;
            bytes = &bytes[k..];
        }
        Ok(())
    }
}

impl SectionSink for Staging {
    fn begin(&mut self, hdr: &SectionHeader) -> Result<(), String> {
        let id = Self::id(hdr)?;
        if !id.reads_major(hdr.major) {
            let reads = match id {
                SectionId::Gmem => format!("{SECTION_MAJOR}.x and {}.x", id.version().0),
                _ => format!("{}.x", id.version().0),
            };
            return Err(format!(
                "section {id}: version {}.{} is not supported (this device reads {reads})",
                hdr.major, hdr.minor
            ));
        }
        if id.tracks_build() {
            self.oldest_minor = self.oldest_minor.min(hdr.minor);
        }
        let s = slot(id);
        let chunk = id == SectionId::Gmem && hdr.major != SECTION_MAJOR;
        let exact = match id {
            SectionId::Gmem if !chunk => Some(self.ty.gmem_size),
            id => expected_len(id),
        };
        if let Some(len) = exact.filter(|&l| l != hdr.length) {
            return Err(format!(
                "section {id}: length {} is not the {len} bytes it must have",
                hdr.length
            ));
        }
        let gmem_pages = self.begun[slot(SectionId::GmemPages)] > 0;
        match id {
            SectionId::GmemPages if hdr.length % PAGE_RECORD_LEN != 0 => {
                return Err(format!(
                    "section GMEM_PAGES: length {} is not a whole number of {PAGE_RECORD_LEN}-byte records",
                    hdr.length
                ));
            }
            SectionId::GmemPages if self.begun[slot(SectionId::Gmem)] > 0 => {
                return Err("section GMEM_PAGES: the stream already carried a full GMEM".into());
            }
            SectionId::Gmem if gmem_pages => {
                return Err("section GMEM: the stream already carried GMEM_PAGES".into());
            }
            SectionId::Gmem if self.gmem_major.is_some_and(|m| m != hdr.major) => {
                return Err(format!(
                    "section GMEM: version {}.{} after GMEM sections of version {}.x",
                    hdr.major,
                    hdr.minor,
                    self.gmem_major.unwrap_or_default()
                ));
            }
            SectionId::Gmem if chunk && hdr.length <= GMEM_CHUNK_HEADER => {
                return Err(format!(
                    "section GMEM: a chunk of {} bytes has no data after its offset",
                    hdr.length
                ));
            }
            SectionId::Gmem if chunk => {}
            SectionId::Engine if hdr.length < sections::engine_regs_len() => {
                return Err(format!(
                    "section ENGINE: length {} is shorter than its {} bytes of registers",
                    hdr.length,
                    sections::engine_regs_len()
                ));
            }
            SectionId::GmemPages => {}
            _ if self.begun[s] > 0 => return Err(format!("section {id} appears twice")),
            _ => {}
        }
        self.begun[s] += 1;
        if id == SectionId::Gmem {
            self.gmem_major = Some(hdr.major);
        }
        if id != SectionId::Gmem && id != SectionId::GmemPages {
            // Bounded: the parser checked the length against the section's cap.
            self.fixed[s] = vec![0; hdr.length as usize];
        }
        Ok(())
    }

    fn data(&mut self, hdr: &SectionHeader, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let id = Self::id(hdr)?;
        let at = offset as usize;
        match id {
            SectionId::Gmem if hdr.major != SECTION_MAJOR => {
                self.chunk_data(hdr.length, offset, bytes)?
            }
            SectionId::Gmem => {
                self.gmem[at..at + bytes.len()].copy_from_slice(bytes);
                self.written.set_range(offset, bytes.len() as u64);
            }
            SectionId::GmemPages => self.page_data(offset, bytes)?,
            id => self.fixed[slot(id)][at..at + bytes.len()].copy_from_slice(bytes),
        }
        Ok(())
    }

    fn end(&mut self, hdr: &SectionHeader) -> Result<(), String> {
        let id = Self::id(hdr)?;
        self.seen[slot(id)] += 1;
        Ok(())
    }
}

/// One resume: the parser and the staging area.
#[derive(Debug)]
pub(crate) struct ResumeSession {
    parser: ContextParser,
    staging: Staging,
    failed: Option<String>,
}

impl ResumeSession {
    /// A session for a device of type `ty`: zeroed staging, exact caps, expected type.
    pub(crate) fn new(ty: VgpuType, spare: Option<ZeroedBuf>) -> Self {
        let caps: Vec<(u32, u64)> = ALL_SECTIONS
            .iter()
            .map(|id| (*id as u32, id.cap(&ty)))
            .collect();
        Self {
            parser: ContextParser::new(ParserLimits::from_caps(Some(ty.name.to_string()), &caps)),
            staging: Staging::new(ty, spare),
            failed: None,
        }
    }

    /// Feed the next bytes of the stream.
    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // The parser takes the buffer in batches, hashing the sections of each on several
        // cores before the sink copies them.
        if let Err(e) = self.parser.feed(buf, &mut self.staging) {
            let reason = name_sections(&e.to_string());
            self.failed = Some(reason.clone());
            return Err(reason);
        }
        Ok(())
    }
}

/// Name the device's sections in a format error ("section 3" -> "section MMIO (id 3)").
fn name_sections(msg: &str) -> String {
    let mut out = msg.to_string();
    for id in ALL_SECTIONS {
        let raw = id as u32;
        out = out.replace(
            &format!("section {raw} "),
            &format!("section {id} (id {raw}) "),
        );
    }
    out
}

impl Vgpu {
    /// RESUMING -> STOP: validate the staged stream whole, then swap it in. On error the
    /// live device is untouched.
    pub(crate) fn finish_resume(&mut self) -> Result<(), String> {
        let session = self.resume.take().ok_or("no resume session is open")?;
        if let Some(e) = session.failed {
            return Err(e);
        }
        session
            .parser
            .finish()
            .map_err(|e| name_sections(&e.to_string()))?;
        let st = session.staging;
        if st.gmem_major.is_some_and(|m| m != SECTION_MAJOR) && st.chunked != self.ty.gmem_size {
            return Err(format!(
                "section GMEM: the chunks cover {} of the {} bytes of graphics memory",
                st.chunked, self.ty.gmem_size
            ));
        }
        for id in REQUIRED {
            match st.seen[slot(id)] {
                1 => {}
                0 if id == SectionId::Config && st.oldest_minor < SECTION_MINOR => {
                    return Err(format!(
                        "section CONFIG is missing: the context was written with section \
                         version {SECTION_MAJOR}.{}, before the device saved its configuration \
                         space ({SECTION_MAJOR}.{SECTION_MINOR}); without it pending \
                         interrupts would be lost, so it cannot be restored",
                        st.oldest_minor
                    ))
                }
                0 => return Err(format!("section {id} is missing")),
                n => return Err(format!("section {id} appears {n} times")),
            }
        }
        let decoded = sections::decode(&self.ty, |id| &st.fixed[slot(id)])?;
        let state = decoded.state;
        // Commit. The GTT rebuild is the only step that can refuse (an entry count the
        // section length already guaranteed), and it changes nothing when it does.
        let summary = self
            .gtt
            .rebuild(&state.gtt)
            .map_err(|e| format!("section GTT: {e}"))?;
        if summary.scratch > 0 {
            slog::warn!(self.log, "restored GTT entries outside this guest's RAM map the scratch page";
                "entries" => summary.scratch);
        }
        self.gmem = GraphicsMemory::from_parts(st.gmem, st.written);
        self.regs = state.regs;
        self.engine = decoded.engine;
        self.config = decoded.config.with_logger(self.log.clone());
        // A vector pending and deliverable in the saved config was cleared by the rebuild;
        // the device owes it (vector 0 is the device's only vector) and signals it once
        // it runs, as it does an owed interrupt from the IRQ section.
        self.irq.owed = state.irq_owed || decoded.config_fired;
        self.irq.rearm = true;
        Ok(())
    }
}
