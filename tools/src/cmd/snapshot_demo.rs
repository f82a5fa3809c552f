//! `snapshot-demo`: run a reference, then run again, save mid-batch, restore into a fresh VM on
//! other host resources, finish, and compare everything the guest can see.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::Path;
use std::time::Instant;
use vgpu_platform::VgpuVm;

use serde::Serialize;
use slog::Logger;
use snafu::ResultExt;
use vgpu_sim::regs;
use vmm::StopAt;

use super::{boot, CliError, FileSnafu, Result, SnapshotFileSnafu};
use crate::cli::WorkloadArgs;
use crate::output::{write_png, RunReport};

#[derive(Debug, Serialize)]
struct DemoReport {
    verified: bool,
    frames: u64,
    dump_frame: u64,
    dump_command: u64,
    dump_in_batch: bool,
    dump_batch_offset: u32,
    snapshot_bytes: u64,
    save_ms: f64,
    restore_ms: f64,
    final_checksum: String,
    checksums_equal: bool,
    ram_equal: bool,
    gmem_equal: bool,
    png_before: String,
    png_after: String,
}

pub fn run(
    w: &WorkloadArgs,
    frames: u64,
    dump_at: u64,
    dir: &Path,
    json: bool,
    log: &Logger,
) -> Result<()> {
    if dump_at == 0 || dump_at >= frames {
        return Err(CliError::Usage {
            msg: format!(
                "--dump-at {dump_at} must be between 1 and --frames - 1 ({})",
                frames - 1
            ),
        });
    }
    fs::create_dir_all(dir).context(FileSnafu {
        what: "cannot create",
        path: dir,
    })?;

    // The reference: a run that never stops.
    let mut reference = boot(w, frames, log)?;
    reference.run(StopAt::Done)?;
    let want = RunReport::collect(&mut reference, frames);
    drop(reference);

    // The same run, stopped in the middle of the batch after frame `dump_at`.
    let mut src = boot(w, frames, log)?;
    src.run(StopAt::Frame(dump_at))?;
    let c = src.command_count() + 7;
    src.run(StopAt::Command(c))?;
    let status = src.reg(regs::REG_ENGINE_STATUS);
    let bb_off = src.reg(regs::REG_BB_OFFSET);
    let png_before = dir.join("before.png");
    write_png(&mut src, &png_before)?;
    let snap = dir.join("snapshot.vgm");
    let t = Instant::now();
    vmm::snapshot::save_file(&mut src, &snap, false).context(SnapshotFileSnafu)?;
    let save_ms = t.elapsed().as_secs_f64() * 1e3;
    let snapshot_bytes = fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    drop(src);

    // A fresh VM, other interrupt sinks, loads it and finishes.
    let t = Instant::now();
    let f = File::open(&snap).context(FileSnafu {
        what: "cannot open",
        path: &snap,
    })?;
    let mut dst = vgpu_platform::restore(BufReader::new(f), log, Default::default(), 700)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    let next = dst.completed_frames() + 1;
    dst.run(StopAt::Frame(next))?;
    let png_after = dir.join("after.png");
    write_png(&mut dst, &png_after)?;
    dst.run(StopAt::Done)?;
    let got = RunReport::collect(&mut dst, frames);

    let report = DemoReport {
        verified: got.checksums == want.checksums
            && got.ram_digest == want.ram_digest
            && got.gmem_digest == want.gmem_digest,
        frames,
        dump_frame: dump_at,
        dump_command: c,
        dump_in_batch: status & regs::ENGINE_IN_BATCH != 0,
        dump_batch_offset: bb_off,
        snapshot_bytes,
        save_ms,
        restore_ms,
        final_checksum: got.final_checksum.clone(),
        checksums_equal: got.checksums == want.checksums,
        ram_equal: got.ram_digest == want.ram_digest,
        gmem_equal: got.gmem_digest == want.gmem_digest,
        png_before: png_before.display().to_string(),
        png_after: png_after.display().to_string(),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let wp = w.params(frames);
        println!(
            "vgpu-migrate demo: {} on {} frames, {}x{}, {} triangles, seed {}",
            w.mdev_type, frames, wp.width, wp.height, wp.triangles, w.seed
        );
        println!(
            "  saved after frame {} at command {} ({}, batch offset {:#x}): {} bytes in {:.1} ms",
            dump_at,
            c,
            if report.dump_in_batch {
                "mid-batch"
            } else {
                "between batches"
            },
            bb_off,
            snapshot_bytes,
            save_ms
        );
        println!("  restored into a fresh VM in {restore_ms:.1} ms and ran to frame {frames}");
        println!(
            "  checksum log equal: {}  guest RAM equal: {}  graphics memory equal: {}",
            report.checksums_equal, report.ram_equal, report.gmem_equal
        );
        println!(
            "  final checksum {}  frames: {} and {}",
            report.final_checksum, report.png_before, report.png_after
        );
        println!(
            "  {}",
            if report.verified {
                "VERIFIED: the restored run equals a run that never stopped"
            } else {
                "MISMATCH"
            }
        );
    }
    if !report.verified {
        return Err(CliError::Check {
            msg: "the restored run differs from the reference run".into(),
        });
    }
    Ok(())
}
