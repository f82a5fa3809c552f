//! The device's sections: ids, the plain state they carry, encoding and checked decoding.

use std::error::Error;
use std::fmt;

use pci_config_replay::{ConfigParams, ConfigSpace, ConfigSpaceState, HostRegion, HostResources};
use state_region::format::section_encoded_len;

use crate::device::regfile::{self, section_regs, Registers, Section};
use crate::device::Vgpu;
use crate::engine::pipeline3d::{self, Pipeline3dState};
use crate::engine::{Engine, EngineState};
use crate::regs::*;
use crate::types::VgpuType;

/// Major version of every section this build writes and reads.
pub const SECTION_MAJOR: u16 = 1;
/// Minor version of every section this build writes. 1.1 added the `CONFIG` section and
/// made it required; see [`REQUIRED`] for why a 1.0 context is refused.
pub const SECTION_MINOR: u16 = 1;
/// Version (major, minor) of the `PIPELINE3D` section, its own: the 3D pipeline's state
/// format evolves apart from the other sections.
pub const PIPELINE3D_VERSION: (u16, u16) = pipeline3d::STATE_VERSION;
/// Version (major, minor) of the `GMEM` section this build writes: 2.0, graphics memory in
/// chunks (see [`GMEM_CHUNK`]). A 1.x `GMEM` (all of graphics memory in one section) is
/// still read; a reader of 1.x refuses 2.0 by its major.
pub const GMEM_VERSION: (u16, u16) = (2, 0);
/// Graphics memory bytes in one `GMEM` 2.0 section (128 KiB). Chunks are independent sections with
/// their own digests, so a `read_data`/`write_data` call of 1 MiB holds several of them
/// and they are hashed on several cores at once.
pub const GMEM_CHUNK: u64 = 128 << 10;
/// Bytes in front of a `GMEM` 2.0 chunk's data: its offset in graphics memory (u64).
pub const GMEM_CHUNK_HEADER: u64 = 8;
/// Bytes of one `GMEM_PAGES` record: page index u32 and the page.
pub const PAGE_RECORD_LEN: u64 = 4 + PAGE_SIZE;
/// Cap on the engine section's `EngineState` bytes.
pub const ENGINE_STATE_MAX: u64 = 256;

/// The device's section ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionId {
    /// All of graphics memory.
    Gmem = 1,
    /// Some graphics memory pages.
    GmemPages = 2,
    /// Guest-programmed registers.
    Mmio = 3,
    /// GTT entry values.
    Gtt = 4,
    /// Ring position, engine registers and engine state.
    Engine = 5,
    /// Interrupt registers and the owed flag.
    Irq = 6,
    /// Display plane.
    Display = 7,
    /// The PCI configuration space (pci-config-replay's state bytes).
    Config = 8,
    /// The 3D pipeline's state (viewport, matrices, depth, cull, light, index buffer).
    Pipeline3d = 9,
}

/// Every section id.
pub const ALL_SECTIONS: [SectionId; 9] = [
    SectionId::Gmem,
    SectionId::GmemPages,
    SectionId::Mmio,
    SectionId::Gtt,
    SectionId::Engine,
    SectionId::Irq,
    SectionId::Display,
    SectionId::Config,
    SectionId::Pipeline3d,
];

/// Sections every context carries exactly once, in stream order.
///
/// `CONFIG` is required, so a context written before it existed (section version 1.0) is
/// refused, by name, rather than accepted. Without it the device-owned configuration bits
/// (an MSI-X PBA bit, the MSI pending bit) would be lost: the VMM replays configuration
/// only through the config region, where those bits are read-only, so nothing else could
/// bring them back, and a pending interrupt lost hangs the guest driver.
///
/// `PIPELINE3D` is required too: a context without it would resume the 3D pipeline with
/// other matrices and depth state than the guest set, and draw different frames.
pub const REQUIRED: [SectionId; 7] = [
    SectionId::Mmio,
    SectionId::Gtt,
    SectionId::Engine,
    SectionId::Pipeline3d,
    SectionId::Irq,
    SectionId::Display,
    SectionId::Config,
];

impl SectionId {
    /// The id of a raw value.
    pub fn from_raw(id: u32) -> Option<Self> {
        ALL_SECTIONS.into_iter().find(|s| *s as u32 == id)
    }

    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            SectionId::Gmem => "GMEM",
            SectionId::GmemPages => "GMEM_PAGES",
            SectionId::Mmio => "MMIO",
            SectionId::Gtt => "GTT",
            SectionId::Engine => "ENGINE",
            SectionId::Irq => "IRQ",
            SectionId::Display => "DISPLAY",
            SectionId::Config => "CONFIG",
            SectionId::Pipeline3d => "PIPELINE3D",
        }
    }

    /// The version (major, minor) this build writes for the section, and whose major it
    /// reads.
    pub fn version(self) -> (u16, u16) {
        match self {
            SectionId::Pipeline3d => PIPELINE3D_VERSION,
            SectionId::Gmem => GMEM_VERSION,
            _ => (SECTION_MAJOR, SECTION_MINOR),
        }
    }

    /// Whether this build reads the section at major version `major`: the one it writes,
    /// and for `GMEM` also 1 (one section with all of graphics memory).
    pub fn reads_major(self, major: u16) -> bool {
        major == self.version().0 || (self == SectionId::Gmem && major == SECTION_MAJOR)
    }

    /// Whether the section's minor version says which build wrote the context (the
    /// sections at [`SECTION_MAJOR`].[`SECTION_MINOR`]; `PIPELINE3D` and `GMEM` have
    /// versions of their own).
    pub fn tracks_build(self) -> bool {
        !matches!(self, SectionId::Pipeline3d | SectionId::Gmem)
    }

    /// The register group a register section carries.
    fn regs(self) -> Option<Section> {
        match self {
            SectionId::Mmio => Some(Section::Mmio),
            SectionId::Engine => Some(Section::Engine),
            SectionId::Irq => Some(Section::Irq),
            SectionId::Display => Some(Section::Display),
            _ => None,
        }
    }

    /// The largest payload a reader accepts for this section on a device of type `ty`.
    pub fn cap(self, ty: &VgpuType) -> u64 {
        match self {
            SectionId::Gmem | SectionId::GmemPages => {
                ty.gmem_size.max(ty.gmem_pages() * PAGE_RECORD_LEN)
            }
            SectionId::Gtt => GTT_ENTRIES * 8,
            SectionId::Engine => regs_len(Section::Engine) + ENGINE_STATE_MAX,
            SectionId::Irq => regs_len(Section::Irq) + 4,
            SectionId::Mmio => regs_len(Section::Mmio),
            SectionId::Display => regs_len(Section::Display),
            SectionId::Config => config_len(&ty.config_params()),
            SectionId::Pipeline3d => pipeline3d::STATE_LEN as u64,
        }
    }
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn regs_len(s: Section) -> u64 {
    section_regs(s).count() as u64 * 4
}

/// Bytes of the `CONFIG` payload for a device built from `p`: the state format's header,
/// 4 KiB of configuration, the MSI-X table, the PBA and the CRC.
pub fn config_len(p: &ConfigParams) -> u64 {
    (pci_config_replay::STATE_HEADER_LEN + pci_config_replay::regs::CONFIG_SPACE_SIZE + 4) as u64
        + p.msix_table_len()
        + p.msix_pba_len()
}

/// The device's state apart from graphics memory: what the fixed sections carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuState {
    /// Every stateful register.
    pub regs: Registers,
    /// Whether vector 0 is owed to the guest.
    pub irq_owed: bool,
    /// The guest's GTT entry values.
    pub gtt: Vec<u64>,
    /// The engine's state beyond the registers.
    pub engine: EngineState,
    /// The 3D pipeline's state.
    pub pipeline3d: Pipeline3dState,
    /// The configuration space, device-owned bits (pending bits) included.
    pub config: ConfigSpaceState,
}

impl Vgpu {
    /// The device's state apart from graphics memory.
    pub fn state(&self) -> VgpuState {
        VgpuState {
            regs: self.regs.clone(),
            irq_owed: self.irq.owed,
            gtt: self.gtt.guest_entries().to_vec(),
            engine: self.engine.state(),
            pipeline3d: self.engine.pipeline3d_state(),
            config: self.config.state(),
        }
    }
}

fn put_regs(out: &mut Vec<u8>, regs: &Registers, s: Section) {
    for (i, _) in section_regs(s) {
        out.extend_from_slice(&regs.at(i).to_le_bytes());
    }
}

/// Payload of a fixed section.
pub fn encode(id: SectionId, st: &VgpuState) -> Vec<u8> {
    let mut out = Vec::new();
    match id {
        SectionId::Gtt => {
            out.reserve(st.gtt.len() * 8);
            for e in &st.gtt {
                out.extend_from_slice(&e.to_le_bytes());
            }
        }
        SectionId::Engine => {
            put_regs(&mut out, &st.regs, Section::Engine);
            out.extend_from_slice(&st.engine.to_bytes());
        }
        SectionId::Irq => {
            put_regs(&mut out, &st.regs, Section::Irq);
            out.extend_from_slice(&u32::from(st.irq_owed).to_le_bytes());
        }
        SectionId::Config => out = st.config.to_bytes(),
        SectionId::Pipeline3d => out = st.pipeline3d.to_bytes(),
        id => {
            if let Some(s) = id.regs() {
                put_regs(&mut out, &st.regs, s);
            }
        }
    }
    out
}

/// Graphics memory of `gmem_size` bytes as `GMEM` 2.0 chunks: (offset, data length) of
/// each, in stream order.
pub fn gmem_chunks(gmem_size: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..gmem_size.div_ceil(GMEM_CHUNK)).map(move |i| {
        let at = i * GMEM_CHUNK;
        (at, GMEM_CHUNK.min(gmem_size - at))
    })
}

/// Encoded length (headers, payloads, digests) of graphics memory of `gmem_size` bytes
/// as `GMEM` 2.0 chunks.
pub fn gmem_chunks_len(gmem_size: u64) -> u64 {
    gmem_chunks(gmem_size)
        .map(|(_, len)| section_encoded_len(GMEM_CHUNK_HEADER + len))
        .sum()
}

/// Encoded length (header, payload, digest) of all fixed sections for an engine state of
/// `engine_len` bytes and a device built from `config`.
pub fn fixed_sections_len(engine_len: usize, config: &ConfigParams) -> u64 {
    REQUIRED
        .iter()
        .map(|id| {
            let payload = match id {
                SectionId::Gtt => GTT_ENTRIES * 8,
                SectionId::Engine => regs_len(Section::Engine) + engine_len as u64,
                SectionId::Irq => regs_len(Section::Irq) + 4,
                SectionId::Mmio => regs_len(Section::Mmio),
                SectionId::Config => config_len(config),
                SectionId::Pipeline3d => pipeline3d::STATE_LEN as u64,
                _ => regs_len(Section::Display),
            };
            section_encoded_len(payload)
        })
        .sum()
}

/// The exact payload length a fixed section must have (the engine section: at least).
pub fn expected_len(id: SectionId) -> Option<u64> {
    match id {
        SectionId::Gtt => Some(GTT_ENTRIES * 8),
        SectionId::Irq => Some(regs_len(Section::Irq) + 4),
        SectionId::Mmio => Some(regs_len(Section::Mmio)),
        SectionId::Display => Some(regs_len(Section::Display)),
        SectionId::Pipeline3d => Some(pipeline3d::STATE_LEN as u64),
        _ => None,
    }
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Read a register group from `payload` into `regs`, checking every value's bits.
fn take_regs(
    id: SectionId,
    s: Section,
    payload: &[u8],
    regs: &mut Registers,
) -> Result<usize, String> {
    let mut n = 0;
    for (k, (i, spec)) in section_regs(s).enumerate() {
        let v = le32(payload, k);
        if v & !spec.valid != 0 {
            return Err(format!(
                "section {id}: register {} value {v:#x} has bits outside {:#x}",
                spec.name, spec.valid
            ));
        }
        regs.set_at(i, v);
        n += 4;
    }
    Ok(n)
}

/// The fixed sections decoded and checked: the state, and the live pieces it rebuilds.
#[derive(Debug)]
pub struct Decoded {
    /// The state the sections carry (`config` as saved).
    pub state: VgpuState,
    /// The engine the `ENGINE` section describes.
    pub engine: Engine,
    /// The configuration space rebuilt from `CONFIG` on this device's own params.
    pub config: ConfigSpace,
    /// Whether a vector was pending and deliverable in `CONFIG`: rebuilding cleared its
    /// pending bit, and the device owes the guest that interrupt.
    pub config_fired: bool,
}

/// Host resources that back every BAR and vector of this device's own configuration
/// space: the device rebuilds its config for itself, not for a VMM's host.
fn own_resources(p: &ConfigParams) -> HostResources {
    HostResources {
        bar_regions: [
            Some(HostRegion::vfio_bar(0, 0)),
            None,
            Some(HostRegion::vfio_bar(2, 0)),
            None,
            None,
            None,
        ],
        interrupt_sinks: (0..u32::from(p.msix_table_size)).collect(),
    }
}

/// An error and its sources, as one line.
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Parse the `CONFIG` payload (the state format checks magic, version, lengths and CRC)
/// and rebuild it on a device built from `ty`'s params; a state those params could not
/// have produced (another device ID, BAR size or table size) is refused.
fn decode_config(
    ty: &VgpuType,
    payload: &[u8],
) -> Result<(ConfigSpaceState, ConfigSpace, bool), String> {
    if payload.is_empty() {
        return Err("section CONFIG is missing or empty".into());
    }
    let saved = ConfigSpaceState::from_bytes(payload)
        .map_err(|e| format!("section CONFIG: configuration space state: {}", chain(&e)))?;
    let params = ty.config_params();
    let (config, replayed) = ConfigSpace::from_state(params, &saved, &own_resources(&params))
        .map_err(|e| format!("section CONFIG: {}", chain(&e)))?;
    Ok((saved, config, !replayed.fire.is_empty()))
}

/// Decode and check the fixed sections' payloads (each present and of its exact length)
/// into a state, and build the engine and configuration space it describes, for a device
/// of type `ty`.
pub fn decode<'a>(
    ty: &VgpuType,
    payload: impl Fn(SectionId) -> &'a [u8],
) -> Result<Decoded, String> {
    let mut regs = Registers::default();
    let mmio = payload(SectionId::Mmio);
    take_regs(SectionId::Mmio, Section::Mmio, mmio, &mut regs)?;
    let display = payload(SectionId::Display);
    take_regs(SectionId::Display, Section::Display, display, &mut regs)?;
    let irq = payload(SectionId::Irq);
    let n = take_regs(SectionId::Irq, Section::Irq, irq, &mut regs)?;
    let irq_owed = match le32(irq, n / 4) {
        0 => false,
        1 => true,
        v => return Err(format!("section IRQ: MSI owed flag {v} is neither 0 nor 1")),
    };
    let engine_payload = payload(SectionId::Engine);
    let n = take_regs(
        SectionId::Engine,
        Section::Engine,
        engine_payload,
        &mut regs,
    )?;
    let engine_state = EngineState::from_bytes(&engine_payload[n..])
        .map_err(|e| format!("section ENGINE: engine state: {e}"))?;
    let p3d = Pipeline3dState::from_bytes(payload(SectionId::Pipeline3d))
        .map_err(|e| format!("section PIPELINE3D: {e}"))?;
    Engine::from_state(ty.gmem_size, &engine_state)
        .map_err(|e| format!("section ENGINE: engine state: {e}"))?;
    let engine = Engine::from_states(ty.gmem_size, &engine_state, &p3d)
        .map_err(|e| format!("section PIPELINE3D: {e}"))?;
    let gtt = payload(SectionId::Gtt)
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let (saved_config, config, config_fired) = decode_config(ty, payload(SectionId::Config))?;
    let state = VgpuState {
        regs,
        irq_owed,
        gtt,
        engine: engine_state,
        pipeline3d: p3d,
        config: saved_config,
    };
    check_invariants(ty, &state)?;
    Ok(Decoded {
        state,
        engine,
        config,
        config_fired,
    })
}

/// Cross-register invariants the live device keeps.
fn check_invariants(ty: &VgpuType, st: &VgpuState) -> Result<(), String> {
    let r = &st.regs;
    if r.ring_enabled() && !regfile::ring_in_gtt(r.ring_start(), r.ring_size()) {
        return Err(format!(
            "section MMIO: enabled ring at {:#x} of {:#x} bytes is not inside the GTT range",
            r.ring_start(),
            r.ring_size()
        ));
    }
    let surf = r.get(REG_DSP_SURF);
    if u64::from(surf) >= ty.gmem_size {
        return Err(format!(
            "section DISPLAY: DSP_SURF {surf:#x} is outside graphics memory ({:#x} bytes)",
            ty.gmem_size
        ));
    }
    Ok(())
}

/// Bytes of registers at the start of the engine section.
pub fn engine_regs_len() -> u64 {
    regs_len(Section::Engine)
}
