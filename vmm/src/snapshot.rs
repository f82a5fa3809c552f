//! Snapshots: the migration stream written to a file, and read back into a fresh VM.
//!
//! Saving drives the device through its device-state region when it has one (the v1
//! sequence: `device_state = SAVING`, then `pending_bytes` / `data_offset` / `data_size` /
//! data until `pending_bytes` is 0), as QEMU drives a VFIO device through `pread`/`pwrite`,
//! and through the v2 state machine and data stream when it offers v2 alone
//! ([`SnapshotDevice`]). Restoring
//! creates a fresh VM of the stream's mdev type, puts its device in RESUMING, writes the
//! chunks in order, and only after the whole stream's digest verified stops the device
//! (RESUMING -> STOP: the device validates and commits), replays PCI config, restores the
//! vCPU and sets the device running.
//!
//! A snapshot file is written atomically ([`save_file`], [`atomic`]): under a temporary
//! name in the same directory, `fsync`ed, renamed into place only when complete, so a
//! full disk or an interrupted save never leaves a file that restores.

pub mod atomic;
mod device;

pub use device::SnapshotDevice;

use std::io::{Read, Write};
use std::path::Path;

use pci_config_replay::ConfigSpaceState;
use slog::info;
use snafu::{ResultExt, Snafu};

use crate::error::*;
use crate::memory::{self, PAGE_SIZE};
use crate::stream::{Header, Record, StreamReader, StreamWriter, TrailerCheck, WriteStats};
use crate::stream::{STREAM_MAJOR, STREAM_MINOR};
use crate::vcpu::{SavedVcpu, Vcpu};
use crate::vm::{Vm, VmConfig};

/// The device-state region's index, found by its type/subtype capability.
pub fn state_region_index(vm: &Vm) -> Result<u32> {
    vm.device_ref()
        .find_region(state_region::MIGRATION_REGION_TYPE)
        .ok_or(VmmError::NoStateRegion)
}

/// Stream header for this VM.
pub fn header(vm: &Vm) -> Header {
    Header {
        major: STREAM_MAJOR,
        minor: STREAM_MINOR,
        flags: 0,
        ram_size: memory::size(vm.memory()),
        page_size: PAGE_SIZE as u32,
        mdev_type: vm.mdev_type().to_string(),
    }
}

/// Write every non-zero guest page, in runs of consecutive pages (pages the host never
/// backed are not even read).
pub fn write_all_ram<W: Write>(vm: &Vm, w: &mut StreamWriter<W>) -> Result<()> {
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for gpa in memory::maybe_written(vm.memory()).iter_dirty() {
        memory::read(vm.memory(), gpa, &mut page).context(MemorySnafu)?;
        if memory::is_zero(&page) {
            continue;
        }
        let continues = run_start + run.len() as u64 == gpa;
        if !run.is_empty() && (!continues || run.len() >= 1 << 20) {
            w.ram_pages(run_start, &run).context(StreamSnafu)?;
            run.clear();
        }
        if run.is_empty() {
            run_start = gpa;
        }
        run.extend_from_slice(&page);
    }
    if !run.is_empty() {
        w.ram_pages(run_start, &run).context(StreamSnafu)?;
    }
    Ok(())
}

/// Drain the device's stop-and-copy data (through the v1 region, or v2 for a device
/// without one) into the stream.
pub fn save_device<W: Write>(vm: &mut Vm, w: &mut StreamWriter<W>) -> Result<()> {
    let mut dev = SnapshotDevice::of(vm)?;
    dev.save(
        vm,
        |chunk| w.device_data(chunk),
        |source| VmmError::Stream { source },
    )?;
    w.device_end().context(StreamSnafu)?;
    Ok(())
}

/// Write a whole snapshot of a stopped VM (vCPU between steps). The device is left in
/// STOP_COPY; call [`resume_source`] to let the VM go on.
pub fn save<W: Write>(vm: &mut Vm, out: W) -> Result<WriteStats> {
    let mut w = StreamWriter::new(out, &header(vm)).context(StreamSnafu)?;
    write_all_ram(vm, &mut w)?;
    save_device(vm, &mut w)?;
    w.config(&config_bytes(vm)?).context(StreamSnafu)?;
    let vcpu = vm.vcpu_record()?.to_bytes();
    w.vcpu(&vcpu).context(StreamSnafu)?;
    let (_, stats) = w.finish().context(StreamSnafu)?;
    info!(vm.log(), "snapshot written"; "bytes" => stats.total, "ram" => stats.ram, "device" => stats.device);
    Ok(stats)
}

/// What a snapshot file save failed on. The file's final path is left as it was.
#[derive(Debug, Snafu)]
pub enum SaveFileError {
    /// Creating, writing, syncing or renaming the file failed.
    #[snafu(display("{source}"))]
    File {
        /// The cause.
        source: atomic::AtomicFileError,
    },
    /// Saving the VM failed.
    #[snafu(display("{source}"))]
    Save {
        /// The cause.
        source: VmmError,
    },
}

/// Save a whole snapshot of a stopped VM ([`save`]), or with `device_only` only the
/// device's context ([`save_device_only`]), to the file `path`, atomically: the file
/// appears complete or not at all, and an older file at `path` stays intact if the save
/// fails. Returns the bytes written.
pub fn save_file(vm: &mut Vm, path: &Path, device_only: bool) -> Result<u64, SaveFileError> {
    save_file_failing_after(vm, path, device_only, None)
}

/// [`save_file`], with every write failing with `ENOSPC` (as on a full disk) once
/// `fail_after` bytes went through: fault injection for tests; `None` is [`save_file`].
pub fn save_file_failing_after(
    vm: &mut Vm,
    path: &Path,
    device_only: bool,
    fail_after: Option<u64>,
) -> Result<u64, SaveFileError> {
    let mut file = atomic::AtomicFile::create(path).context(FileSnafu)?;
    let mut out = FailAfter {
        inner: &mut file,
        left: fail_after,
    };
    let bytes = if device_only {
        save_device_only(vm, &mut out)
    } else {
        save(vm, &mut out).map(|s| s.total)
    }
    .context(SaveSnafu)?;
    // An error above dropped `file`, which removed the partial temporary file.
    file.commit().context(FileSnafu)?;
    Ok(bytes)
}

/// A writer that fails with "no space left" once `left` bytes went through (never with
/// `None`).
struct FailAfter<'a, W: Write> {
    inner: &'a mut W,
    left: Option<u64>,
}

impl<W: Write> Write for FailAfter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.left {
            None => buf.len(),
            Some(0) => return Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        let n = self.inner.write(&buf[..n])?;
        if let Some(left) = self.left.as_mut() {
            *left -= n as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write only the bytes the device-state region produced (a device context file). The
/// device is left in STOP_COPY.
pub fn save_device_only<W: Write>(vm: &mut Vm, mut out: W) -> Result<u64> {
    let mut dev = SnapshotDevice::of(vm)?;
    dev.save(
        vm,
        |chunk| out.write_all(chunk),
        |source| VmmError::Stream {
            source: crate::stream::StreamError::Io { offset: 0, source },
        },
    )
}

/// The guest-visible config state, read through the device's config region and BAR0.
pub fn config_bytes(vm: &mut Vm) -> Result<Vec<u8>> {
    let (face, dev) = vm.pci_and_device();
    Ok(face.read_state(dev).context(PciSnafu)?.to_bytes())
}

/// Put a source device back to RUNNING after a save (or a failed migration).
pub fn resume_source(vm: &mut Vm) -> Result<()> {
    SnapshotDevice::of(vm)?.run(vm)
}

/// Read a stream into a fresh VM built from `base` (this host's factory, interrupt sinks,
/// BAR region offsets); the device type and RAM size come from the stream. The VM is
/// ready to run when this returns.
pub fn restore_with<R: Read>(input: R, base: &VmConfig) -> Result<Vm> {
    let mut r = StreamReader::new(input, TrailerCheck::Enforce).context(StreamSnafu)?;
    let h = r.header().clone();
    let mut cfg = base.clone();
    cfg.mdev_type = h.mdev_type.clone();
    cfg.ram_size = h.ram_size;
    let mut vm = Vm::new(&cfg)?;
    let mut dev = SnapshotDevice::of(&mut vm)?;
    dev.start_resume(&mut vm)?;
    let mut config = None;
    let mut vcpu = None;
    while let Some(rec) = r.next_record().context(StreamSnafu)? {
        apply_record(&mut vm, &mut dev, rec, &mut config, &mut vcpu)?;
    }
    finish_restore(&mut vm, &mut dev, config, vcpu)?;
    info!(vm.log(), "snapshot restored"; "mdev_type" => &h.mdev_type, "bytes" => r.offset());
    Ok(vm)
}

/// Apply one record to a target VM whose device is RESUMING (snapshot restore: device data
/// goes through `dev`).
pub fn apply_record(
    vm: &mut Vm,
    dev: &mut SnapshotDevice,
    rec: Record,
    config: &mut Option<Vec<u8>>,
    vcpu: &mut Option<Vec<u8>>,
) -> Result<()> {
    match rec {
        Record::DeviceData(chunk) => dev.load_chunk(vm, &chunk)?,
        Record::Config(b) => *config = Some(b),
        Record::Vcpu(b) => *vcpu = Some(b),
        other => apply_record_ram(vm, other)?,
    }
    Ok(())
}

/// Apply a guest RAM record; other records are ignored.
pub fn apply_record_ram(vm: &mut Vm, rec: Record) -> Result<()> {
    match rec {
        Record::RamPages { gpa, data } => {
            memory::write(vm.memory(), gpa, &data).context(MemorySnafu)?
        }
        Record::RamZero { gpa, pages } => {
            let zero = vec![0u8; PAGE_SIZE as usize];
            for p in 0..pages {
                memory::write(vm.memory(), gpa + p * PAGE_SIZE, &zero).context(MemorySnafu)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Decode and check the config and vCPU records before anything commits: both present,
/// well-formed, and the config's read-only bits equal to this device's.
pub fn decode_state(
    vm: &Vm,
    config: Option<Vec<u8>>,
    vcpu: Option<Vec<u8>>,
) -> Result<(ConfigSpaceState, SavedVcpu)> {
    let config = config.ok_or_else(|| VmmError::Config {
        reason: "the stream has no config space".into(),
    })?;
    let vcpu = vcpu.ok_or_else(|| VmmError::Config {
        reason: "the stream has no vCPU state".into(),
    })?;
    let saved = ConfigSpaceState::from_bytes(&config).map_err(|e| VmmError::Config {
        reason: e.to_string(),
    })?;
    let vcpu = SavedVcpu::from_bytes(&vcpu).context(VcpuSnafu)?;
    vm.pci()
        .check_compatible(&saved)
        .map_err(|e| VmmError::Config {
            reason: e.to_string(),
        })?;
    Ok((saved, vcpu))
}

/// Replay the guest's config onto this VM's device through its config region (after the
/// device committed) and rebuild the BAR map and interrupt routes on this host's
/// resources. Vectors that were pending and are deliverable fire as the replay unmasks
/// them, through the target's rebuilt routes.
pub fn replay_config(vm: &mut Vm, saved: &ConfigSpaceState) -> Result<()> {
    let (mut face, dev) = vm.pci_and_device();
    face.replay(dev, saved).map_err(|e| VmmError::Config {
        reason: e.to_string(),
    })
}

/// Restore the vCPU.
pub fn restore_vcpu(vm: &mut Vm, state: &SavedVcpu) -> Result<()> {
    match state {
        SavedVcpu::Sim(s) => {
            *vm.vcpu() = Vcpu::from_state(s);
            Ok(())
        }
        SavedVcpu::Kvm(s) => vm.restore_kvm_vcpu(s),
    }
}

/// After the stream verified: commit the device, replay config, restore the vCPU, run.
pub fn finish_restore(
    vm: &mut Vm,
    dev: &mut SnapshotDevice,
    config: Option<Vec<u8>>,
    vcpu: Option<Vec<u8>>,
) -> Result<()> {
    let (saved, vcpu) = decode_state(vm, config, vcpu)?;
    // RESUMING -> STOP: the device validates the whole context and commits it.
    dev.commit(vm)?;
    replay_config(vm, &saved)?;
    restore_vcpu(vm, &vcpu)?;
    dev.run(vm)
}
