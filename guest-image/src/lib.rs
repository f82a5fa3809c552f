//! The freestanding x86-64 guest image and its ELF loader.
//!
//! [`GUEST_ELF`] is `guest-x86` (the workload driver on a bare vCPU), built by this crate's
//! build script with a nested cargo. [`load`] places it into guest memory through the
//! VMM's writer, refusing anything outside the image range of the memory contract
//! ([`vgpu_guest::x86`]); the VMM then enters it at [`LoadedImage::entry`] in long mode.

#![deny(missing_docs)]

use snafu::{ensure, ResultExt, Snafu};
use vgpu_guest::x86::{IMAGE_BASE, IMAGE_END};

#[cfg(test)]
mod tests;

/// The guest image: an ELF64 x86-64 executable linked at [`IMAGE_BASE`].
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-x86.elf"));

/// What the VMM's writer returns: any error it likes, boxed.
pub type WriteResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Where [`load`] put the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedImage {
    /// The entry point (guest-physical = virtual: the VMM identity-maps the low 4 GiB).
    pub entry: u64,
    /// Lowest guest-physical address of a loadable segment.
    pub start: u64,
    /// End (exclusive) of the highest loadable segment, `.bss` included.
    pub end: u64,
}

/// Why an ELF was refused.
#[derive(Debug, Snafu)]
pub enum LoadError {
    /// The file ends before a structure it declares.
    #[snafu(display(
        "ELF truncated: {what} at {offset:#x}+{len:#x} beyond the file's {size:#x} bytes"
    ))]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Its offset in the file.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's size.
        size: u64,
    },
    /// Not an ELF file.
    #[snafu(display("not an ELF file (magic {magic:02x?})"))]
    BadMagic {
        /// The first four bytes.
        magic: [u8; 4],
    },
    /// Not ELF64.
    #[snafu(display("ELF class {class} is not ELFCLASS64 (2)"))]
    BadClass {
        /// `e_ident[EI_CLASS]`.
        class: u8,
    },
    /// Not little-endian.
    #[snafu(display("ELF data encoding {data} is not ELFDATA2LSB (1)"))]
    BadEncoding {
        /// `e_ident[EI_DATA]`.
        data: u8,
    },
    /// Not for x86-64.
    #[snafu(display("ELF machine {machine} is not EM_X86_64 (62)"))]
    BadMachine {
        /// `e_machine`.
        machine: u16,
    },
    /// Not an executable, or a program header size other than ELF64's.
    #[snafu(display("ELF type {e_type} / program header size {phentsize}: not an ELF64 ET_EXEC"))]
    BadType {
        /// `e_type`.
        e_type: u16,
        /// `e_phentsize`.
        phentsize: u16,
    },
    /// A segment has more file bytes than memory bytes.
    #[snafu(display("segment {index}: p_filesz {filesz:#x} > p_memsz {memsz:#x}"))]
    FileSizeExceedsMemSize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment lies (partly) outside the contract's image range, or is not identity-mapped.
    #[snafu(display(
        "segment {index}: {paddr:#x}+{memsz:#x} (vaddr {vaddr:#x}) is outside the image range \
         {IMAGE_BASE:#x}..{IMAGE_END:#x} or not identity-mapped"
    ))]
    SegmentOutsideImage {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// No `PT_LOAD` segment.
    #[snafu(display("the ELF has no loadable segment"))]
    NoSegments,
    /// The entry point is not inside an executable loadable segment.
    #[snafu(display("entry point {entry:#x} is not inside an executable loadable segment"))]
    BadEntry {
        /// `e_entry`.
        entry: u64,
    },
    /// The VMM's writer failed.
    #[snafu(display("writing {len:#x} bytes at guest-physical {gpa:#x}"))]
    Write {
        /// Where.
        gpa: u64,
        /// How many bytes.
        len: u64,
        /// The writer's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u16 = 56;

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy)]
struct Segment {
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn bytes<'a>(
    elf: &'a [u8],
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<&'a [u8], LoadError> {
    let size = elf.len() as u64;
    let end = offset.checked_add(len).filter(|e| *e <= size);
    ensure!(
        end.is_some(),
        TruncatedSnafu {
            what,
            offset,
            len,
            size
        }
    );
    Ok(&elf[offset as usize..(offset + len) as usize])
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes([
        b[o],
        b[o + 1],
        b[o + 2],
        b[o + 3],
        b[o + 4],
        b[o + 5],
        b[o + 6],
        b[o + 7],
    ])
}

/// Check the ELF header and return the entry point and the `PT_LOAD` segments.
fn parse(elf: &[u8]) -> Result<(u64, Vec<Segment>), LoadError> {
    let ident = bytes(elf, "ELF identification", 0, 16)?;
    let magic = [ident[0], ident[1], ident[2], ident[3]];
    ensure!(magic == *b"\x7fELF", BadMagicSnafu { magic });
    ensure!(ident[4] == 2, BadClassSnafu { class: ident[4] });
    ensure!(ident[5] == 1, BadEncodingSnafu { data: ident[5] });
    let eh = bytes(elf, "ELF header", 0, EHDR_SIZE)?;
    let machine = u16_at(eh, 18);
    ensure!(machine == 62, BadMachineSnafu { machine });
    let (e_type, phentsize) = (u16_at(eh, 16), u16_at(eh, 54));
    ensure!(
        e_type == 2 && phentsize == PHDR_SIZE,
        BadTypeSnafu { e_type, phentsize }
    );
    let entry = u64_at(eh, 24);
    let phoff = u64_at(eh, 32);
    let phnum = u64::from(u16_at(eh, 56));
    let table = bytes(elf, "program headers", phoff, phnum * u64::from(PHDR_SIZE))?;

    let mut segments = Vec::new();
    for (index, ph) in table.chunks_exact(usize::from(PHDR_SIZE)).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let seg = Segment {
            flags: u32_at(ph, 4),
            offset: u64_at(ph, 8),
            paddr: u64_at(ph, 24),
            filesz: u64_at(ph, 32),
            memsz: u64_at(ph, 40),
        };
        let vaddr = u64_at(ph, 16);
        let (filesz, memsz) = (seg.filesz, seg.memsz);
        ensure!(
            filesz <= memsz,
            FileSizeExceedsMemSizeSnafu {
                index,
                filesz,
                memsz
            }
        );
        let inside = seg.paddr >= IMAGE_BASE
            && seg
                .paddr
                .checked_add(memsz)
                .is_some_and(|end| end <= IMAGE_END)
            && vaddr == seg.paddr;
        ensure!(
            inside,
            SegmentOutsideImageSnafu {
                index,
                paddr: seg.paddr,
                vaddr,
                memsz
            }
        );
        bytes(elf, "segment data", seg.offset, filesz)?;
        segments.push(seg);
    }
    ensure!(!segments.is_empty(), NoSegmentsSnafu);
    let executes =
        |s: &Segment| s.flags & PF_X != 0 && (s.paddr..s.paddr + s.memsz).contains(&entry);
    ensure!(segments.iter().any(executes), BadEntrySnafu { entry });
    Ok((entry, segments))
}

/// Load `elf` into guest memory through `write(gpa, bytes)`: each `PT_LOAD` segment's file
/// bytes at its physical address, then zeros up to its memory size (`.bss`).
///
/// Everything is checked before the first write: the ELF64 little-endian x86-64 `ET_EXEC`
/// header, every segment inside `IMAGE_BASE..IMAGE_END` of the memory contract with
/// `p_vaddr == p_paddr` and `p_filesz <= p_memsz`, its data inside the file, and the entry
/// point inside an executable segment.
pub fn load(
    elf: &[u8],
    write: &mut dyn FnMut(u64, &[u8]) -> WriteResult,
) -> Result<LoadedImage, LoadError> {
    let (entry, segments) = parse(elf)?;
    let zeros = [0u8; 4096];
    let mut put = |gpa: u64, data: &[u8]| {
        write(gpa, data).context(WriteSnafu {
            gpa,
            len: data.len() as u64,
        })
    };
    for s in &segments {
        put(
            s.paddr,
            &elf[s.offset as usize..(s.offset + s.filesz) as usize],
        )?;
        let mut gpa = s.paddr + s.filesz;
        let end = s.paddr + s.memsz;
        while gpa < end {
            let n = (end - gpa).min(zeros.len() as u64);
            put(gpa, &zeros[..n as usize])?;
            gpa += n;
        }
    }
    Ok(LoadedImage {
        entry,
        start: segments.iter().map(|s| s.paddr).min().unwrap_or(IMAGE_BASE),
        end: segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(IMAGE_BASE),
    })
}
