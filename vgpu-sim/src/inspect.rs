//! Decoding a saved device context for people: section names, caps for a verifying scan,
//! and a summary of registers, pending interrupts and the engine's position.

use pci_config_replay::{ConfigParams, ConfigSpaceState};
use state_region::format::{ContextParser, ParserLimits, SectionHeader, SectionSink};

use crate::device::migration::{decode_sections, SectionId};
use crate::regs::*;
use crate::types::{VgpuType, VGPU_TYPES};

/// Parser limits for a context of any known type (or of `mdev_type`).
pub fn context_limits(mdev_type: Option<&str>) -> ParserLimits {
    let types: Vec<VgpuType> = match mdev_type.and_then(|t| VgpuType::by_name(t).ok()) {
        Some(t) => vec![t],
        None => VGPU_TYPES.to_vec(),
    };
    ParserLimits::new(mdev_type.map(str::to_string), move |id| {
        let s = SectionId::from_raw(id)?;
        types.iter().map(|t| s.cap(t)).max()
    })
}

/// Name of a section id.
pub fn section_name(id: u32) -> &'static str {
    if id == state_region::format::END_SECTION_ID {
        return "END";
    }
    SectionId::from_raw(id).map_or("UNKNOWN", SectionId::name)
}

/// Config params of the vGPU types apart from what the saved config space says itself.
pub fn config_params_hint() -> ConfigParams {
    crate::VGPU_64.config_params()
}

/// Keeps the small sections, counts graphics memory.
#[derive(Default)]
struct Collect {
    fixed: Vec<(u32, Vec<u8>)>,
    gmem_bytes: u64,
    gmem_page_sections: u64,
}

impl SectionSink for Collect {
    fn begin(&mut self, hdr: &SectionHeader) -> Result<(), String> {
        match SectionId::from_raw(hdr.id) {
            // A GMEM 2.0 chunk starts with its offset.
            Some(SectionId::Gmem) if hdr.major >= crate::device::migration::GMEM_VERSION.0 => {
                self.gmem_bytes += hdr
                    .length
                    .saturating_sub(crate::device::migration::GMEM_CHUNK_HEADER)
            }
            Some(SectionId::Gmem) => self.gmem_bytes += hdr.length,
            Some(SectionId::GmemPages) => self.gmem_page_sections += 1,
            _ => self.fixed.push((hdr.id, Vec::new())),
        }
        Ok(())
    }

    fn data(&mut self, hdr: &SectionHeader, _offset: u64, bytes: &[u8]) -> Result<(), String> {
        match SectionId::from_raw(hdr.id) {
            Some(SectionId::Gmem) | Some(SectionId::GmemPages) => {}
            _ => {
                if let Some((_, v)) = self.fixed.last_mut() {
                    v.extend_from_slice(bytes);
                }
            }
        }
        Ok(())
    }

    fn end(&mut self, _hdr: &SectionHeader) -> Result<(), String> {
        Ok(())
    }
}

fn irq_bits(v: u32) -> String {
    let names = [
        (INT_USER, "USER"),
        (INT_PIPE_NOTIFY, "PIPE_NOTIFY"),
        (INT_FLIP_DONE, "FLIP_DONE"),
        (INT_GTT_ERROR, "GTT_ERROR"),
        (INT_CMD_ERROR, "CMD_ERROR"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| v & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        format!("{v:#x}")
    } else {
        format!("{v:#x} ({})", set.join("|"))
    }
}

/// One line on the saved configuration space: identity, decode, BARs.
fn config_summary(c: &ConfigSpaceState) -> String {
    let id = |o: usize| u16::from_le_bytes([c.config[o], c.config[o + 1]]);
    let bars: Vec<String> = [0u8, 2]
        .iter()
        .map(|&b| match c.bar_address(b) {
            Some(a) => format!("BAR{b} {a:#x}"),
            None => format!("BAR{b} not decoding"),
        })
        .collect();
    format!(
        "{:04x}:{:04x} command {:#06x}, {}",
        id(0),
        id(2),
        c.command(),
        bars.join(", ")
    )
}

/// One line on the saved interrupt configuration: mode, masks, pending bits.
fn config_irq_summary(c: &ConfigSpaceState) -> String {
    let ctl = c.msix_control();
    let msi = c.msi();
    let mut parts = Vec::new();
    if ctl.enabled {
        parts.push(format!(
            "MSI-X enabled{}",
            if ctl.function_mask {
                ", function masked"
            } else {
                ""
            }
        ));
    } else if msi.enabled {
        parts.push("MSI enabled".to_string());
    } else {
        parts.push("INTx".to_string());
    }
    for v in 0..c.msix_vectors() {
        let masked = c.msix_entry(v).is_some_and(|e| e.masked);
        parts.push(format!(
            "vector {v}{}{}",
            if masked { " masked" } else { " unmasked" },
            if c.msix_pending(v) { " PENDING" } else { "" }
        ));
    }
    parts.push(format!(
        "MSI {}{}",
        if msi.masked { "masked" } else { "unmasked" },
        if msi.pending { " PENDING" } else { "" }
    ));
    parts.join("; ")
}

/// Verify `bytes` as a context and summarise it as (field, value) pairs.
pub fn summarize(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut parser = ContextParser::new(context_limits(None));
    let mut c = Collect::default();
    parser.feed(bytes, &mut c).map_err(|e| e.to_string())?;
    parser.finish().map_err(|e| e.to_string())?;
    let ty_name = parser
        .header()
        .map(|h| h.mdev_type.clone())
        .unwrap_or_default();
    let ty = VgpuType::by_name(&ty_name).map_err(|e| e.to_string())?;
    let empty: &[u8] = &[];
    let find = |id: SectionId| -> &[u8] {
        c.fixed
            .iter()
            .rev()
            .find(|(i, _)| *i == id as u32)
            .map_or(empty, |(_, v)| v.as_slice())
    };
    let decoded = decode_sections(&ty, find)?;
    let st = &decoded.state;
    let r = &st.regs;
    let mapped = st.gtt.iter().filter(|e| *e & GTT_PRESENT != 0).count();
    let mut out = vec![
        (
            "mdev type".to_string(),
            format!("{} ({} MiB graphics memory)", ty.name, ty.gmem_size >> 20),
        ),
        (
            "graphics memory".into(),
            if c.gmem_bytes > 0 {
                format!("full image, {} bytes", c.gmem_bytes)
            } else {
                format!("{} page sections (pre-copy)", c.gmem_page_sections)
            },
        ),
        (
            "GTT".into(),
            format!("{mapped} of {} entries present", st.gtt.len()),
        ),
        (
            "ring".into(),
            format!(
                "start {:#x} size {:#x} {} head {:#x} tail {:#x}",
                r.ring_start(),
                r.ring_size(),
                if r.ring_enabled() {
                    "enabled"
                } else {
                    "disabled"
                },
                r.get(REG_RING_HEAD),
                r.get(REG_RING_TAIL)
            ),
        ),
        (
            "engine".into(),
            format!(
                "{} batch {:#x} offset {:#x}, {} commands executed, seqno {}{}",
                if st.engine.in_batch { "in" } else { "not in a" },
                st.engine.batch_start,
                st.engine.batch_offset,
                r.get(REG_CMD_COUNT),
                r.get(REG_SEQNO),
                if st.engine.halted { ", HALTED" } else { "" }
            ),
        ),
        (
            "interrupts".into(),
            format!(
                "IIR {} IMR {:#x} IER {:#x} ISR {:#x}; MSI owed: {}",
                irq_bits(r.get(REG_IIR)),
                r.get(REG_IMR),
                r.get(REG_IER),
                r.get(REG_ISR),
                st.irq_owed
            ),
        ),
        (
            "pending interrupts".into(),
            irq_bits(r.get(REG_IIR) & r.get(REG_IER)),
        ),
        (
            "errors".into(),
            format!(
                "status {:#x} address {:#x}",
                r.get(REG_ERROR_STATUS),
                r.get64(REG_ERROR_ADDR_LO, REG_ERROR_ADDR_HI)
            ),
        ),
        (
            "display".into(),
            format!(
                "{} surface {:#x} stride {} size {}x{}, {} flips",
                if r.get(REG_DSP_CTL) & DSP_CTL_ENABLE != 0 {
                    "on,"
                } else {
                    "off,"
                },
                r.get(REG_DSP_SURF),
                r.get(REG_DSP_STRIDE),
                r.get(REG_DSP_SIZE) & 0xffff,
                r.get(REG_DSP_SIZE) >> 16,
                r.get(REG_FLIP_COUNT)
            ),
        ),
    ];
    out.push(("config space".into(), config_summary(&st.config)));
    out.push(("config interrupts".into(), config_irq_summary(&st.config)));
    out.push((
        "render target".into(),
        format!(
            "{:#x} {}x{} stride {}",
            st.engine.render_target.offset,
            st.engine.render_target.width,
            st.engine.render_target.height,
            st.engine.render_target.stride
        ),
    ));
    out.push(("3d pipeline".into(), pipeline3d_summary(&st.pipeline3d)));
    Ok(out)
}

/// One line about the 3D pipeline's state.
fn pipeline3d_summary(p: &crate::engine::pipeline3d::Pipeline3dState) -> String {
    let v = p.viewport;
    let d = p.depth_buffer;
    let depth = match (
        p.depth_flags & crate::cmd::DEPTH_TEST != 0,
        p.depth_flags & crate::cmd::DEPTH_WRITE != 0,
    ) {
        (true, true) => "test+write",
        (true, false) => "test",
        (false, true) => "write",
        (false, false) => "off",
    };
    let cull = match p.cull {
        crate::cmd::CULL_BACK => "back",
        crate::cmd::CULL_FRONT => "front",
        _ => "none",
    };
    format!(
        "viewport {}x{}+{}+{}, depth {depth} buffer {:#x} {}x{}, cull {cull}, light ({}, {}, {}) ambient {:#x} diffuse {:#x}, index buffer {:#x}",
        v.width,
        v.height,
        v.x,
        v.y,
        d.offset,
        d.width,
        d.height,
        p.light.dir[0],
        p.light.dir[1],
        p.light.dir[2],
        p.light.ambient,
        p.light.diffuse,
        p.index_buffer
    )
}
