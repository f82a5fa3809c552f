//! The target side: state its type, receive the stream into a VM created before the
//! switchover, verify, commit, replay config, resume, and acknowledge.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use slog::{info, warn, Logger};
use state_region::format::{FORMAT_MAJOR, FORMAT_MINOR};

use super::clock::{monotonic_ns, Liveness};
use super::control::{
    features, Ack, ControlWriter, FromSource, FromTarget, Hello, KeepAliveThread, Start,
    KEEPALIVE_INTERVAL,
};
use super::device_io::{DeviceIo, Protocol};
use super::error::{MigrationError, Result};
use super::multifd::{accept_channels, RamReceivers};
use super::source::FailPoint;
use super::transport::PrefetchReader;
use super::StopPoint;
use crate::snapshot::{apply_record_ram, replay_config, restore_vcpu};
use crate::stream::{
    Record, RecordSink, SinkError, StreamReader, TrailerCheck, STREAM_MAJOR, STREAM_MINOR,
};
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
    /// Give up on a source that shows no sign of life for this long (see
    /// [`super::control::DEFAULT_PEER_TIMEOUT`]).
    pub peer_timeout: Duration,
    /// Freeze this process there (testing).
    pub stop_self_at: Option<crate::migration::SelfFault>,
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
    /// Creating the VM and faulting in its guest RAM before the stream was accepted
    /// ([`prepare`]), ms; 0 when the VM was made after the stream's header. Not part of
    /// the migration's figures.
    pub prefault_ms: f64,
}

/// A target VM made before the migration arrives: created, with its guest RAM allocated
/// and faulted in (as a VFIO target pins and maps guest RAM when its VM is created), so
/// that neither the migration's total time nor its downtime pays for page faults and the
/// kernel zeroing fresh pages.
#[derive(Debug)]
pub struct PreparedVm {
    vm: Vm,
    prefault_ms: f64,
}

impl PreparedVm {
    /// The time the preparation took, ms.
    pub fn prefault_ms(&self) -> f64 {
        self.prefault_ms
    }
}

/// Make the target's VM for a guest of `ram_size` bytes now: create it (device instance
/// and memory), prepare its KVM machine where KVM is usable, and fault in all of guest RAM
/// in parallel threads. A stream whose guest has another RAM size is then refused.
pub fn prepare(opts: &TargetOptions, ram_size: u64) -> Result<PreparedVm> {
    let t = Instant::now();
    let mut vm = new_vm(opts, ram_size)?;
    vm.prepare_kvm();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    crate::memory::prefault(vm.memory(), threads);
    let prefault_ms = t.elapsed().as_secs_f64() * 1e3;
    info!(opts.log, "target VM prepared"; "ram_size" => ram_size, "prefault_ms" => prefault_ms);
    Ok(PreparedVm { vm, prefault_ms })
}

fn new_vm(opts: &TargetOptions, ram_size: u64) -> Result<Vm> {
    let mut cfg = VmConfig::new(&opts.mdev_type, opts.factory.clone(), opts.log.clone());
    cfg.ram_size = ram_size;
    cfg.irq_sink_base = opts.irq_sink_base;
    cfg.bar_region_offset = opts.bar_region_offset;
    Ok(Vm::new(&cfg)?)
}

/// The connection to the source after a migration: write control messages to `ctrl`,
/// read the source's from `input`. Keep-alives go to the source until it is dropped.
#[derive(Debug)]
pub struct SourceLink {
    /// For writing ([`super::control::Outcome`]).
    pub ctrl: ControlWriter,
    /// For reading ([`super::control::Summary`], with [`PrefetchReader::recv_control`]).
    pub input: PrefetchReader,
    _keepalive: KeepAliveThread,
}

/// Accept one migration on `listener`; returns the running VM, what happened, and the
/// link to the source (for the final [`super::control::Outcome`]). The VM is made once
/// the stream's header says how much RAM the guest has.
pub fn incoming(
    listener: &TcpListener,
    opts: &TargetOptions,
) -> Result<(Vm, TargetReport, SourceLink)> {
    incoming_prepared(listener, opts, None)
}

/// [`incoming`] into a VM made beforehand by [`prepare`] (when `prepared` is given): its
/// RAM size must be the stream's.
pub fn incoming_prepared(
    listener: &TcpListener,
    opts: &TargetOptions,
    prepared: Option<PreparedVm>,
) -> Result<(Vm, TargetReport, SourceLink)> {
    let (sock, peer) = listener.accept().map_err(|e| MigrationError::Peer {
        what: format!("accept failed: {e}"),
    })?;
    let _ = sock.set_nodelay(true);
    info!(opts.log, "incoming migration"; "from" => %peer);
    let live = Liveness::new("source", opts.peer_timeout);
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Handshake, &opts.log);
    let ctrl = sock
        .try_clone()
        .map_err(|e| MigrationError::PeerIo {
            what: "cannot clone the socket".into(),
            source: e,
        })
        .and_then(|s| ControlWriter::new(s, live.clone()))?;
    // The hello first: keep-alives follow it.
    let session_id = super::multifd::new_session();
    ctrl.send(&Hello {
        mdev_type: opts.mdev_type.clone(),
        stream_version: (STREAM_MAJOR, STREAM_MINOR),
        context_version: (FORMAT_MAJOR, FORMAT_MINOR),
        features: features::PROTOCOL_REGION
            | features::PROTOCOL_V2
            | features::MONOTONIC_ACK
            | features::KEEPALIVE
            | features::HANDOVER
            | features::MULTIFD,
        session: session_id,
    })?;
    let keepalive = KeepAliveThread::spawn(ctrl.clone());
    let mut input = PrefetchReader::spawn(sock, 32, live);
    match session(&mut input, &ctrl, opts, prepared, (listener, session_id)) {
        Ok((vm, report)) => Ok((
            vm,
            report,
            SourceLink {
                ctrl,
                input,
                _keepalive: keepalive,
            },
        )),
        Err(e) => {
            let e = e.unwrap_transport();
            warn!(opts.log, "incoming migration failed; discarding what was received"; "error" => %e);
            // A source that stopped answering would not read the rejection either.
            if !e.is_peer_timeout() {
                // The source says "the target rejected the migration: REASON" itself.
                let reason = match &e {
                    MigrationError::Rejected { reason } => reason.clone(),
                    other => other.to_string(),
                };
                let _ = ctrl.send(&FromTarget::Ack(Ack::Rejected { reason }));
            }
            ctrl.shutdown();
            Err(e)
        }
    }
}

/// The source's start, the stream, and the acknowledgement.
fn session(
    input: &mut PrefetchReader,
    ctrl: &ControlWriter,
    opts: &TargetOptions,
    prepared: Option<PreparedVm>,
    (listener, session_id): (&TcpListener, u64),
) -> Result<(Vm, TargetReport)> {
    let start: Start = input.recv_control("source's start")?;
    let (protocol, channels) = match start {
        Start::Refuse { reason } => return Err(MigrationError::Incompatible { why: reason }),
        Start::Go { protocol, channels } => (
            Protocol::parse(&protocol).ok_or_else(|| MigrationError::Protocol {
                what: format!("unknown protocol '{protocol}'"),
            })?,
            channels,
        ),
    };
    // The source opens its RAM channels right after its start.
    let channels = if channels > 0 {
        input.liveness().set_phase("the RAM channels' connections");
        let socks = accept_channels(listener, session_id, channels, input.liveness(), &opts.log)?;
        info!(opts.log, "RAM channels connected"; "channels" => channels);
        socks
    } else {
        Vec::new()
    };
    input.liveness().set_phase("pre-copy round 0");
    let (mut vm, mut report, mut dio) = receive(input, ctrl, opts, (protocol, channels), prepared)?;
    // The whole state is here and loaded; the guest runs here only once the source has
    // said it will not run it again (so it never runs on both sides).
    ctrl.send(&FromTarget::Ack(Ack::Prepared {
        bytes: report.bytes,
    }))?;
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Prepared, &opts.log);
    input.liveness().set_phase("the source's handover");
    await_handover(input, &opts.log)?;
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Handover, &opts.log);
    resume(&mut vm, &mut dio, &mut report)?;
    StopPoint::stop_if(opts.stop_self_at, StopPoint::Resumed, &opts.log);
    // The guest runs here now, whatever becomes of the source: a lost acknowledgement
    // costs the source its figures, not the guest.
    if let Err(e) = ctrl.send(&FromTarget::Ack(Ack::Resumed {
        resumed_ns: report.resumed_ns,
        switchover_seen_ns: report.source_stopped_ns,
        residue_ms: 0.0,
        load_ms: report.load_ms,
        config_ms: report.config_ms,
        resume_ms: report.resume_ms,
        bytes: report.bytes,
    })) {
        warn!(opts.log, "could not tell the source the guest resumed; it runs here"; "error" => %e);
    }
    input.liveness().set_phase("the source's summary");
    Ok((vm, report))
}

/// Wait for the source's HANDOVER. An ABORT, or silence past the peer timeout, discards
/// the migration (the source runs the guest on). A connection that ends without an ABORT
/// means the source process died (a source that gives up says so first): the target holds
/// the whole state and the source cannot run the guest any more, so the guest resumes
/// here.
fn await_handover(input: &mut PrefetchReader, log: &slog::Logger) -> Result<()> {
    const WHAT: &str = "source's handover";
    let decide = |m: FromSource| match m {
        FromSource::Handover => Ok(true),
        FromSource::KeepAlive(_) => Ok(false),
        FromSource::Abort { reason } => Err(MigrationError::Peer {
            what: format!("the source gave up before the handover: {reason}"),
        }),
    };
    loop {
        match input.recv_control::<FromSource>(WHAT) {
            Ok(m) => {
                if decide(m)? {
                    return Ok(());
                }
            }
            Err(e) if e.is_peer_timeout() => {
                // A process frozen past its deadline wakes to find it passed: what arrived
                // meanwhile is read before giving up.
                match input.recv_control_within::<FromSource>(WHAT, KEEPALIVE_INTERVAL * 2) {
                    Ok(Some(m)) if decide(m.clone())? => return Ok(()),
                    _ => return Err(e),
                }
            }
            Err(e @ (MigrationError::Peer { .. } | MigrationError::PeerIo { .. })) => {
                warn!(log, "the source died after the target had the whole state; the guest resumes here"; "error" => %e);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Run the loaded guest: device RUNNING, then the vCPU.
fn resume(vm: &mut Vm, dio: &mut DeviceIo, report: &mut TargetReport) -> Result<()> {
    let t = Instant::now();
    dio.run(vm)?;
    // A KVM guest runs on from here (its vCPU's first entry ends the downtime); the
    // simulated vCPU runs when the caller steps it.
    if vm.on_kvm() {
        vm.start_kvm()?;
    }
    report.resumed_ns = monotonic_ns();
    report.resume_ms += t.elapsed().as_secs_f64() * 1e3;
    info!(vm.log(), "migration: target resumed"; "bytes" => report.bytes, "load_ms" => report.load_ms);
    Ok(())
}

/// Applies the bulk bytes of the stream as they arrive (see [`RecordSink`]).
struct Apply<'a> {
    vm: &'a mut Vm,
    dio: &'a DeviceIo,
    /// The device's error, kept whole.
    failed: Option<MigrationError>,
}

impl RecordSink for Apply<'_> {
    fn ram(&mut self, gpa: u64, bytes: &[u8]) -> std::result::Result<(), SinkError> {
        crate::memory::write(self.vm.memory(), gpa, bytes).map_err(|e| e.into())
    }

    fn device(&mut self, bytes: &[u8]) -> std::result::Result<(), SinkError> {
        self.dio.write_chunk(self.vm, bytes).map_err(|e| {
            let text = e.to_string();
            self.failed = Some(e);
            text.into()
        })
    }
}

/// The stream, loaded: device committed, config replayed, vCPU restored; not yet running.
fn receive(
    input: &mut PrefetchReader,
    ctrl: &ControlWriter,
    opts: &TargetOptions,
    (protocol, channels): (Protocol, Vec<std::net::TcpStream>),
    prepared: Option<PreparedVm>,
) -> Result<(Vm, TargetReport, DeviceIo)> {
    let live = input.liveness().clone();
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
    let (mut vm, prefault_ms) = match prepared {
        Some(p) => {
            let have = crate::memory::size(p.vm.memory());
            if have != h.ram_size {
                return Err(MigrationError::Incompatible {
                    why: format!(
                        "the stream's guest has {} MiB of RAM, this target prepared {} MiB",
                        h.ram_size >> 20,
                        have >> 20
                    ),
                });
            }
            (p.vm, p.prefault_ms)
        }
        None => (new_vm(opts, h.ram_size)?, 0.0),
    };
    // If the source's guest runs on KVM, its vCPU state comes at the end of the stream:
    // the KVM machine it needs is made now (or was, by `prepare`), outside the downtime
    // window.
    vm.prepare_kvm();
    let mut dio = DeviceIo::new(&mut vm, protocol)?;
    dio.start_resume(&mut vm)?;
    // Guest RAM from the RAM channels goes in on their own threads from here.
    let mut ram = if channels.is_empty() {
        None
    } else {
        Some(RamReceivers::spawn(channels, vm.memory(), live.clone())?)
    };
    let mut config = None;
    let mut vcpu = None;
    let mut report = TargetReport {
        protocol: protocol.name().into(),
        prefault_ms,
        ..Default::default()
    };
    loop {
        // Guest pages and device data go from the prefetch buffer straight into guest RAM
        // and the device; the rest comes back as records.
        let mut sink = Apply {
            vm: &mut vm,
            dio: &dio,
            failed: None,
        };
        let rec = match r.next_record_into(&mut sink) {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            // The device's refusal is reported as the device said it.
            Err(e) => return Err(sink.failed.take().unwrap_or_else(|| e.into())),
        };
        match rec {
            Record::DeviceData(chunk) => {
                dio.write_chunk(&mut vm, &chunk)?;
                r.recycle(chunk);
            }
            Record::Config(b) => config = Some(b),
            Record::Vcpu(b) => vcpu = Some(b),
            Record::Switchover { stopped_ns } => {
                report.source_stopped_ns = stopped_ns;
                live.set_phase("stop-and-copy");
                StopPoint::stop_if(opts.stop_self_at, StopPoint::Switchover, &opts.log);
            }
            Record::Sync { seq } => {
                if let Ok(round) = u32::try_from(seq) {
                    StopPoint::stop_if(opts.stop_self_at, StopPoint::Round(round), &opts.log);
                }
                // Every channel's part of the round is applied before the answer.
                if let Some(r) = &ram {
                    r.wait_mark(seq)?;
                }
                ctrl.send(&FromTarget::Synced { seq })?;
                live.set_phase(format!("pre-copy round {}", seq + 1));
            }
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
    if let Some(r) = ram.take() {
        live.set_phase("the RAM channels' end");
        report.bytes += r.finish()?;
    }
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
    restore_vcpu(&mut vm, &vcpu)?;
    report.resume_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok((vm, report, dio))
}
