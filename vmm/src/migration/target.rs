//! The target side: state its type, receive the stream into a VM created before the
//! switchover, verify, commit, replay config, resume, and acknowledge.

use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use slog::{info, warn, Logger};
use state_region::format::{FORMAT_MAJOR, FORMAT_MINOR};

use super::clock::monotonic_ns;
use super::control::{self, features, Ack, FromTarget, Hello, Start};
use super::device_io::{DeviceIo, Protocol};
use super::error::{MigrationError, Result};
use super::source::FailPoint;
use super::transport::PrefetchReader;
use crate::snapshot::{apply_record_ram, replay_config, restore_vcpu};
use crate::stream::{Record, StreamReader, TrailerCheck, STREAM_MAJOR, STREAM_MINOR};
use crate::vm::{Vm, VmConfig};

/// How the target runs.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The target's mdev type.
    pub mdev_type: String,
    /// Interrupt sink ids of this host.
    pub irq_sink_base: u32,
    /// Builds the target's device and guest program (the composer's choice: which device
    /// implementation, with which DMA tracking for a later migration onwards).
    pub factory: std::sync::Arc<dyn crate::platform::VmFactory>,
    /// Inject a failure.
    pub fail_at: Option<FailPoint>,
    /// Offset of each BAR inside its host region on this host (see `VmConfig`).
    pub bar_region_offset: u64,
    /// Logger.
    pub log: Logger,
}

/// What the target saw.
#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    /// Protocol used.
    pub protocol: String,
    /// Bytes received.
    pub bytes: u64,
    /// Timestamp of vCPU resume (CLOCK_MONOTONIC ns).
    pub resumed_ns: u64,
    /// Source's vCPU stop (CLOCK_MONOTONIC ns), from the switchover record.
    pub source_stopped_ns: u64,
    /// Device validate + commit, ms.
    pub load_ms: f64,
    /// Config replay, ms.
    pub config_ms: f64,
    /// vCPU restore and RUNNING, ms.
    pub resume_ms: f64,
}

/// The connection to the source after a migration: write control messages to `ctrl`,
/// read the source's to `input` (which may hold bytes already received).
#[derive(Debug)]
pub struct SourceLink {
    /// For writing ([`control::Outcome`]).
    pub ctrl: TcpStream,
    /// For reading ([`control::Summary`]).
    pub input: PrefetchReader,
}

/// Accept one migration on `listener`; returns the running VM, what happened, and the
/// link to the source (for the final [`control::Outcome`]).
pub fn incoming(
    listener: &TcpListener,
    opts: &TargetOptions,
) -> Result<(Vm, TargetReport, SourceLink)> {
    let (sock, peer) = listener.accept().map_err(|e| MigrationError::Peer {
        what: format!("accept failed: {e}"),
    })?;
    let _ = sock.set_nodelay(true);
    info!(opts.log, "incoming migration"; "from" => %peer);
    let mut ctrl = sock.try_clone().map_err(|e| MigrationError::Peer {
        what: format!("cannot clone the socket: {e}"),
    })?;
    control::send(
        &mut ctrl,
        &Hello {
            mdev_type: opts.mdev_type.clone(),
            stream_version: (STREAM_MAJOR, STREAM_MINOR),
            context_version: (FORMAT_MAJOR, FORMAT_MINOR),
            features: features::PROTOCOL_REGION | features::PROTOCOL_V2 | features::MONOTONIC_ACK,
        },
    )?;
    let mut input = PrefetchReader::spawn(sock, 32);
    let start: Start = control::recv(&mut input, "source's start")?;
    let protocol = match start {
        Start::Refuse { reason } => return Err(MigrationError::Incompatible { why: reason }),
        Start::Go { protocol } => {
            Protocol::parse(&protocol).ok_or_else(|| MigrationError::Protocol {
                what: format!("unknown protocol '{protocol}'"),
            })?
        }
    };
    match receive(&mut input, &mut ctrl, opts, protocol) {
        Ok((vm, report)) => {
            control::send(
                &mut ctrl,
                &FromTarget::Ack(Ack::Resumed {
                    resumed_ns: report.resumed_ns,
                    switchover_seen_ns: report.source_stopped_ns,
                    residue_ms: 0.0,
                    load_ms: report.load_ms,
                    config_ms: report.config_ms,
                    resume_ms: report.resume_ms,
                    bytes: report.bytes,
                }),
            )?;
            Ok((vm, report, SourceLink { ctrl, input }))
        }
        Err(e) => {
            warn!(opts.log, "incoming migration failed; discarding what was received"; "error" => %e);
            let _ = control::send(
                &mut ctrl,
                &FromTarget::Ack(Ack::Rejected {
                    reason: e.to_string(),
                }),
            );
            Err(e)
        }
    }
}

fn receive(
    input: &mut PrefetchReader,
    ctrl: &mut TcpStream,
    opts: &TargetOptions,
    protocol: Protocol,
) -> Result<(Vm, TargetReport)> {
    let mut r = StreamReader::new(input, TrailerCheck::Enforce)?.without_eof_check();
    let h = r.header().clone();
    if h.mdev_type != opts.mdev_type {
        return Err(MigrationError::Incompatible {
            why: format!(
                "the stream is for mdev type '{}', this target is '{}'",
                h.mdev_type, opts.mdev_type
            ),
        });
    }
    // Ready before the switchover: instance, memory, and the device's resume stream.
    let mut cfg = VmConfig::new(&opts.mdev_type, opts.factory.clone(), opts.log.clone());
    cfg.ram_size = h.ram_size;
    cfg.irq_sink_base = opts.irq_sink_base;
    cfg.bar_region_offset = opts.bar_region_offset;
    let mut vm = Vm::new(&cfg)?;
    let dio = DeviceIo::new(&mut vm, protocol)?;
    dio.start_resume(&mut vm)?;
    let mut config = None;
    let mut vcpu = None;
    let mut report = TargetReport {
        protocol: protocol.name().into(),
        ..Default::default()
    };
    while let Some(rec) = r.next_record()? {
        match rec {
            Record::DeviceData(chunk) => {
                dio.write_chunk(&mut vm, &chunk)?;
                r.recycle(chunk);
            }
            Record::Config(b) => config = Some(b),
            Record::Vcpu(b) => vcpu = Some(b),
            Record::Switchover { stopped_ns } => report.source_stopped_ns = stopped_ns,
            Record::Sync { seq } => control::send(ctrl, &FromTarget::Synced { seq })?,
            Record::RamPages { gpa, data } => {
                crate::memory::write(vm.memory(), gpa, &data).map_err(|e| MigrationError::Vmm {
                    source: crate::VmmError::Memory { source: e },
                })?;
                r.recycle(data);
            }
            other => apply_record_ram(&mut vm, other)?,
        }
    }
    report.bytes = r.offset();
    if opts.fail_at == Some(FailPoint::BeforeResume) {
        return Err(MigrationError::Injected {
            point: "before resume (target)".into(),
        });
    }
    let t = Instant::now();
    let (saved, vcpu) = crate::snapshot::decode_state(&vm, config, vcpu)?;
    dio.commit(&mut vm)?;
    report.load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    replay_config(&mut vm, &saved)?;
    report.config_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    restore_vcpu(&mut vm, &vcpu);
    dio.run(&mut vm)?;
    report.resumed_ns = monotonic_ns();
    report.resume_ms = t.elapsed().as_secs_f64() * 1e3;
    info!(opts.log, "migration: target resumed"; "bytes" => report.bytes, "load_ms" => report.load_ms);
    Ok((vm, report))
}
