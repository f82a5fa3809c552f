//! `bench --what pipeline`: the migration pipeline alone, uncapped, guest idle and memory in
//! use: our stream (main stream alone, and on RAM channels) beside raw loopback TCP, its
//! own checks on one core and QEMU, with what each costs in CPU per GB.

use std::path::Path;

use slog::Logger;
use vgpu_sim::workload::Params;
use vmm::migration::{Protocol, SourceOptions, SourceReport};

use super::bench_floors::{check_rate, raw_tcp};
use super::bench_migration::{draw_last, median, one, reference, How, Last, Setup, REFERENCE_RAM};
use super::bench_qemu::PeerBench;
use super::{CliError, Result};

/// Stream, raw TCP and integrity-check throughput (bytes/s, medians) on the same bytes: the
/// migration pipeline alone, with guest memory in use and the guest idle.
pub(super) fn figures(
    runs: usize,
    params: &Params,
    how: How,
    mut peer: Option<&mut PeerBench>,
    compare_lazy: bool,
    last: &mut Last,
    log: &Logger,
) -> Result<Pipeline> {
    let params = *params;
    // 2. Uncapped: our stream against raw TCP and its own checks on as many bytes.
    let free = SourceOptions {
        protocol: Protocol::Region,
        channels: how.channels,
        ..SourceOptions::default()
    };
    let vcpu = how.vcpu;
    let mut stream = Vec::new();
    let mut lazy = Vec::new();
    let mut prefault = Vec::new();
    let mut tcp = Vec::new();
    let mut sha = Vec::new();
    let (mut cpu, mut tcp_cpu) = (Vec::new(), Vec::new());
    let idle = Params {
        frame_limit: 4,
        ..params
    };
    let once = |prefault: bool| {
        let setup = Setup {
            migrate_at: u64::MAX,
            prefault,
            ..reference(REFERENCE_RAM, &idle, true, vcpu)
        };
        one(&setup, &free, log)
    };
    let rate = |r: &SourceReport| r.bytes.total as f64 / (r.total_ms / 1e3);
    for _ in 0..runs {
        let (r, rounds, pf, c) = once(true)?;
        *last = Some((r.clone(), rounds));
        stream.push(rate(&r));
        cpu.push(c / (r.bytes.total as f64 / 1e9));
        prefault.push(pf);
        if compare_lazy {
            // The same with the target faulting its RAM in while the stream arrives.
            lazy.push(rate(&once(false)?.0));
        }
        let (t, c) = raw_tcp(r.bytes.total)?;
        tcp.push(t);
        tcp_cpu.push(c / (r.bytes.total as f64 / 1e9));
        sha.push(check_rate(r.bytes.ram, r.bytes.total - r.bytes.ram));
        if let Some(p) = peer.as_deref_mut() {
            // QEMU's guest holds as many non-zero bytes as our stream moved.
            p.run(r.bytes.total);
        }
    }
    Ok(Pipeline {
        stream: median(stream),
        lazy: (!lazy.is_empty()).then(|| median(lazy)),
        prefault_ms: median(prefault),
        tcp: median(tcp),
        checks: median(sha),
        cpu_per_gb: median(cpu),
        tcp_cpu_per_gb: median(tcp_cpu),
    })
}

/// The uncapped pipeline's figures, medians; rates in bytes/s.
#[derive(Debug)]
pub(super) struct Pipeline {
    /// Our stream into a target whose RAM was faulted in before it accepted.
    pub(super) stream: f64,
    /// Our stream into a target that makes its VM at the stream's header.
    pub(super) lazy: Option<f64>,
    /// The target's preparation before the stream, ms.
    pub(super) prefault_ms: f64,
    /// Raw loopback TCP on as many bytes.
    pub(super) tcp: f64,
    /// The stream's integrity checks on one core.
    pub(super) checks: f64,
    /// CPU seconds per GB (10^9 bytes) moved, both ends of our stream.
    pub(super) cpu_per_gb: f64,
    /// CPU seconds per GB moved, both ends of raw loopback TCP.
    pub(super) tcp_cpu_per_gb: f64,
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The fastest a pipeline costing `cpu_per_gb` CPU seconds per GB can run when both its
/// ends share this machine's cores, bytes/s.
fn bound(cpu_per_gb: f64) -> f64 {
    cores() as f64 / cpu_per_gb.max(1e-9) * 1e9
}

/// `bench --what pipeline`: only the uncapped pipeline figures; with `qemu`, QEMU's own
/// migration of as much non-zero memory beside them (when QEMU is installed).
pub fn pipeline(
    runs: usize,
    how: How,
    qemu: bool,
    timeline: Option<&Path>,
    json: bool,
    log: &Logger,
) -> Result<()> {
    let params = Params {
        frame_limit: 1_000,
        ..Params::default()
    };
    let mut peer = qemu.then(|| PeerBench::new(log));
    let mut last = None;
    let main = How { channels: 0, ..how };
    let p = figures(
        runs.max(1),
        &params,
        main,
        peer.as_mut(),
        true,
        &mut last,
        log,
    )?;
    // With RAM channels, the same again on them, beside.
    let multi = (how.channels > 0)
        .then(|| figures(runs.max(1), &params, how, None, false, &mut last, log))
        .transpose()?;
    let (s, t, h) = (p.stream, p.tcp, p.checks);
    let limit = SourceOptions::default().downtime_limit.as_secs_f64() * 1e3;
    draw_last(timeline, "bench pipeline (uncapped)", &last, limit)?;
    let peer = peer.as_ref().map(PeerBench::summary);
    if json {
        let mut v = serde_json::json!({"stream_mbps": s / 1e6, "raw_tcp_mbps": t / 1e6, "checks_mbps": h / 1e6, "stream_over_slower": s / t.min(h),
            "target_prefault_ms": p.prefault_ms, "stream_target_not_prefaulted_mbps": p.lazy.map(|l| l / 1e6),
            "stream_cpu_s_per_gb": p.cpu_per_gb, "raw_tcp_cpu_s_per_gb": p.tcp_cpu_per_gb,
            "stream_bound_on_machine_mbps": bound(p.cpu_per_gb) / 1e6});
        if let Some(m) = &multi {
            v["channels"] = serde_json::json!(how.channels);
            v["channels_stream_mbps"] = serde_json::json!(m.stream / 1e6);
            v["channels_cpu_s_per_gb"] = serde_json::json!(m.cpu_per_gb);
            v["channels_stream_over_slower"] = serde_json::json!(m.stream / m.tcp.min(m.checks));
        }
        if let Some(p) = &peer {
            v["peer"] = serde_json::to_value(p).unwrap_or_default();
            if let Some(q) = p.mbps {
                v["stream_over_qemu"] = serde_json::json!(s / 1e6 / q);
            }
        }
        println!("{v}");
    } else {
        println!("migration stream {:.0} MB/s, raw loopback TCP {:.0} MB/s, integrity checks {:.0} MB/s, stream/slower {:.2}", s / 1e6, t / 1e6, h / 1e6, s / t.min(h));
        println!(
            "  the target made its VM and faulted in its RAM before accepting: {:.0} ms, outside the stream's time",
            p.prefault_ms
        );
        if let Some((r, _)) = &last {
            let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{:.0} ms", x.ms)).collect();
            println!(
                "  the last run: {} MiB ({} MiB guest pages, {} MiB device data), total {:.0} ms: rounds {}, downtime {:.1} ms (target load {:.1} ms)",
                r.bytes.total >> 20,
                r.bytes.ram >> 20,
                (r.bytes.device_precopy + r.bytes.device_stopcopy) >> 20,
                r.total_ms,
                rounds.join(" + "),
                r.downtime_ms,
                r.breakdown.target_load_ms
            );
        }
        if let Some(l) = p.lazy {
            println!(
                "  the same stream into a target that makes its VM at the stream's header: {:.0} MB/s (prefaulted/not {:.2})",
                l / 1e6,
                s / l
            );
        }
        println!(
            "  CPU per GB moved (user + system, both ends): ours {:.2} s, raw loopback TCP {:.2} s{}; on this machine's {} cores ours cannot pass {:.0} MB/s",
            p.cpu_per_gb,
            p.tcp_cpu_per_gb,
            peer.as_ref()
                .and_then(|q| q.cpu_per_gb)
                .map(|c| format!(", QEMU {c:.2} s"))
                .unwrap_or_default(),
            cores(),
            bound(p.cpu_per_gb) / 1e6
        );
        if let Some(m) = &multi {
            println!(
                "  with {} RAM channels: {:.0} MB/s, CPU per GB {:.2} s (on this machine's {} cores it cannot pass {:.0} MB/s), stream/slower {:.2}{}",
                how.channels,
                m.stream / 1e6,
                m.cpu_per_gb,
                cores(),
                bound(m.cpu_per_gb) / 1e6,
                m.stream / m.tcp.min(m.checks),
                peer.as_ref()
                    .and_then(|q| q.mbps)
                    .map(|q| format!(", ours/QEMU one channel {:.2}", m.stream / 1e6 / q))
                    .unwrap_or_default()
            );
        }
        if let Some(p) = &peer {
            match p.mbps {
                Some(q) => println!(
                    "QEMU {} ({}, one channel, max-bandwidth unlimited, target RAM preallocated, {} MiB non-zero guest RAM) {:.0} MB/s; ours/QEMU {:.2} (aim >= 2)",
                    p.qemu_version.as_deref().unwrap_or("?"),
                    p.accel.unwrap_or("?"),
                    p.guest_mib,
                    q,
                    s / 1e6 / q
                ),
                None => println!(
                    "QEMU: {}",
                    p.note.as_deref().unwrap_or("no figure")
                ),
            }
            if let Some(m) = p.multifd_mbps {
                println!(
                    "QEMU multifd, {} channels (same guest): {:.0} MB/s, CPU per GB {}",
                    p.multifd_channels,
                    m,
                    p.multifd_cpu_per_gb
                        .map_or_else(|| "?".into(), |c| format!("{c:.2} s"))
                );
            }
        }
    }
    // QEMU installed but its migration failed: our figures are printed, the run fails.
    match peer {
        Some(p) if p.installed && !p.measured => Err(CliError::Check {
            msg: p
                .note
                .unwrap_or_else(|| "the QEMU peer gave no figure".into()),
        }),
        _ => Ok(()),
    }
}
