//! `inspect`: what a snapshot (stream) or device context holds, every digest verified.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use pci_config_replay::{ConfigParams, ConfigSpace, ConfigSpaceState};
use serde_json::{json, Value};
use snafu::ResultExt;
use state_region::format::{self, ContextSummary};
use vmm::stream::{Record, StreamReader, TrailerCheck, STREAM_MAGIC};

use super::{CliError, FileSnafu, Result};

/// Largest file `inspect` reads into memory.
const MAX_FILE: u64 = 8 << 30;

pub fn run(path: &Path, json: bool, show_config: bool) -> Result<()> {
    let mut f = File::open(path).context(FileSnafu {
        what: "cannot open",
        path,
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_FILE {
        return Err(CliError::BadFile {
            path: path.to_path_buf(),
            msg: format!("{len} bytes is over the {MAX_FILE}-byte inspect limit"),
        });
    }
    let mut magic = [0u8; 8];
    let n = f.read(&mut magic).context(FileSnafu {
        what: "cannot read",
        path,
    })?;
    drop(f);
    let bad = |msg: String| CliError::BadFile {
        path: path.to_path_buf(),
        msg,
    };
    let f = File::open(path).context(FileSnafu {
        what: "cannot open",
        path,
    })?;
    let mut out = json!({ "file": path.display().to_string(), "bytes": len });
    let mut text = Vec::new();
    // For a stream, the device context must be of the type its header names (a restore
    // would create a device of that type, which refuses any other).
    if n < 8 {
        return Err(bad(format!(
            "the stream ends after {n} bytes, inside the 8-byte magic: too short for a snapshot or a device context"
        )));
    }
    if magic != STREAM_MAGIC && magic != format::MAGIC {
        return Err(bad(format!(
            "neither a snapshot nor a device context: bad magic {magic:02x?} at byte 0"
        )));
    }
    let (device, config, stream_type) = if n == 8 && magic == STREAM_MAGIC {
        let mut r = StreamReader::new(BufReader::new(f), TrailerCheck::Enforce)
            .map_err(|e| bad(e.to_string()))?;
        let h = r.header().clone();
        let (mut ram_pages, mut zero_pages, mut chunks) = (0u64, 0u64, 0u64);
        let mut device = Vec::new();
        let mut config = None;
        let mut vcpu = None;
        while let Some(rec) = r.next_record().map_err(|e| bad(e.to_string()))? {
            match rec {
                Record::RamPages { data, .. } => ram_pages += data.len() as u64 / 4096,
                Record::RamZero { pages, .. } => zero_pages += pages,
                Record::DeviceData(c) => {
                    chunks += 1;
                    device.extend_from_slice(&c);
                }
                Record::DeviceEnd => {}
                Record::Config(c) => config = Some(c),
                Record::Vcpu(v) => vcpu = Some(v),
                Record::Switchover { .. } | Record::Sync { .. } => {}
            }
        }
        let vcpu_state = vcpu
            .as_deref()
            .map(vmm::vcpu::SavedVcpu::from_bytes)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let pending = vcpu_state
            .as_ref()
            .map(|s| s.pending_vectors())
            .unwrap_or_default();
        let vcpu_kind = vcpu_state.as_ref().map(|s| s.kind());
        let rip = vcpu_state.as_ref().and_then(|s| s.rip());
        out["stream"] = json!({
            "format": format!("{}.{}", h.major, h.minor),
            "mdev_type": h.mdev_type,
            "ram_size": h.ram_size,
            "ram_pages": ram_pages,
            "zero_pages": zero_pages,
            "device_chunks": chunks,
            "device_bytes": device.len(),
            "digest": "verified",
            "vcpu": vcpu_kind,
            "vcpu_rip": rip,
            "vcpu_pending_vectors": pending,
        });
        text.push(format!(
            "stream: format {}.{}, mdev type {}, guest RAM {} MiB ({} pages sent, {} zero pages), stream digest verified",
            h.major, h.minor, h.mdev_type, h.ram_size >> 20, ram_pages, zero_pages
        ));
        text.push(format!(
            "device data: {} bytes in {} chunks; vCPU ({}{}) pending vectors: {:?}",
            device.len(),
            chunks,
            vcpu_kind.unwrap_or("none"),
            rip.map(|r| format!(", rip {r:#x}")).unwrap_or_default(),
            pending
        ));
        (device, config, Some(h.mdev_type))
    } else {
        let mut device = Vec::new();
        BufReader::new(f)
            .read_to_end(&mut device)
            .context(FileSnafu {
                what: "cannot read",
                path,
            })?;
        (device, None, None)
    };

    // The device context: every section verified, then decoded.
    let limits = vgpu_sim::inspect::context_limits(stream_type.as_deref());
    let summary: ContextSummary =
        format::inspect(&device, limits).map_err(|e| bad(format!("device context: {e}")))?;
    let sections: Vec<Value> = summary
        .sections
        .iter()
        .map(|s| {
            json!({
                "id": s.header.id,
                "name": vgpu_sim::inspect::section_name(s.header.id),
                "version": format!("{}.{}", s.header.major, s.header.minor),
                "length": s.header.length,
                "offset": s.offset,
                "sha256": s.digest_hex,
            })
        })
        .collect();
    text.push(format!(
        "device context: format {}.{}, mdev type {}, {} bytes, {} sections (digests verified):",
        summary.header.major,
        summary.header.minor,
        summary.header.mdev_type,
        summary.length,
        summary.sections.len()
    ));
    // A run of sections of one id and version (graphics memory's chunks) is one line.
    for run in summary.sections.chunk_by(|a, b| {
        (a.header.id, a.header.major, a.header.minor)
            == (b.header.id, b.header.major, b.header.minor)
    }) {
        let s = &run[0];
        let name = vgpu_sim::inspect::section_name(s.header.id);
        if run.len() == 1 {
            text.push(format!(
                "  {:<12} v{}.{} {:>11} bytes at {:>10}  sha256 {}",
                name,
                s.header.major,
                s.header.minor,
                s.header.length,
                s.offset,
                &s.digest_hex[..16.min(s.digest_hex.len())]
            ));
        } else {
            let bytes: u64 = run.iter().map(|s| s.header.length).sum();
            text.push(format!(
                "  {:<12} v{}.{} {:>11} bytes at {:>10}  in {} sections, each sha256 verified",
                name,
                s.header.major,
                s.header.minor,
                bytes,
                s.offset,
                run.len()
            ));
        }
    }
    let facts =
        vgpu_sim::inspect::summarize(&device).map_err(|e| bad(format!("device context: {e}")))?;
    let mut facts_json = serde_json::Map::new();
    for (k, v) in &facts {
        text.push(format!("  {k}: {v}"));
        facts_json.insert(k.clone(), Value::String(v.clone()));
    }
    out["device"] = json!({
        "format": format!("{}.{}", summary.header.major, summary.header.minor),
        "mdev_type": summary.header.mdev_type,
        "bytes": summary.length,
        "sections": sections,
        "summary": facts_json,
    });

    if let Some(c) = config {
        let saved =
            ConfigSpaceState::from_bytes(&c).map_err(|e| bad(format!("config space: {e}")))?;
        let mut bytes = [0u8; 4096];
        bytes.copy_from_slice(&saved.config[..]);
        let cfg = config_view(&saved).map_err(|e| bad(format!("config space: {e}")))?;
        out["config"] = json!({ "lspci": cfg.lspci_hex(), "decoded": cfg.decoded() });
        if show_config {
            text.push("config space (lspci -xxx):".into());
            text.push(cfg.lspci_hex());
            text.push(cfg.decoded());
        }
    } else if show_config {
        return Err(bad(
            "no config space in this file (a device-only context)".into()
        ));
    }

    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for l in text {
            println!("{l}");
        }
    }
    Ok(())
}

/// A config space showing the saved state, for display: replayed onto a device with the
/// saved BAR sizes.
fn config_view(saved: &ConfigSpaceState) -> std::result::Result<ConfigSpace, String> {
    let b = &saved.config;
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let params = ConfigParams {
        vendor_id: u16at(0),
        device_id: u16at(2),
        subsystem_vendor_id: u16at(0x2c),
        subsystem_id: u16at(0x2e),
        revision: b[8],
        bar0_size: saved.bar_sizes[0],
        bar2_size: saved.bar_sizes[2],
        msix_table_size: (saved.msix_table.len() / pci_config_replay::MSIX_ENTRY_SIZE as usize)
            as u16,
        ..vgpu_sim::inspect::config_params_hint()
    };
    let mut cfg = ConfigSpace::new(params).map_err(|e| e.to_string())?;
    let host = pci_config_replay::HostResources {
        bar_regions: [
            Some(pci_config_replay::HostRegion::vfio_bar(0, 0)),
            None,
            Some(pci_config_replay::HostRegion::vfio_bar(2, 0)),
            None,
            None,
            None,
        ],
        interrupt_sinks: (0..64).collect(),
    };
    pci_config_replay::replay(&mut cfg, saved, &host).map_err(|e| e.to_string())?;
    Ok(cfg)
}
