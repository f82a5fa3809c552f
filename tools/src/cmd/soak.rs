//! `soak`: migrate guests back and forth between this process and a peer process, many
//! times, while they render, checking each guest's checksum log against a run that never
//! migrated after every round trip.
//!
//! This process (the home) boots `--vms` guests, each with its own vGPU instance from one
//! parent device, starts the peer (`vgpu-migrate soak --peer-of URLS`, which has its own
//! parent), and for every guest, on its own thread: migrate to the peer, take it back, check
//! the log so far. The peer takes each guest, lets it render `--hop-frames` frames, and
//! migrates it home. After the last round trip each guest runs two more frames and its whole
//! fingerprint (checksum log, guest RAM, graphics memory) is compared with the reference's.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use slog::{info, Logger};
use vgpu_platform::{available_instances, ParentFactory, SharedParent, VgpuVm};
use vgpu_sim::types::VgpuParent;
use vmm::migration::{self, Protocol, SourceOptions, TargetOptions};
use vmm::{StopAt, Vm};

use super::{boot_with, parse_features, parse_tracking, CliError, Result};
use crate::cli::{SoakArgs, WorkloadArgs};

/// While soaking, the guest's frame limit is out of reach; it is set at the end.
const OUT_OF_REACH: u64 = 200_000;

/// What a soak did.
#[derive(Debug, Serialize)]
struct SoakReport {
    vms: usize,
    round_trips: u64,
    /// Migrations in all (two per round trip per guest).
    migrations: u64,
    total_s: f64,
    /// Median wall time of one round trip of one guest, ms.
    round_trip_median_ms: f64,
    /// Median downtime of the migrations from home to the peer, ms (measured by the
    /// source, as `migrate` reports it).
    downtime_median_ms: f64,
    /// `available_instances` of the type on this process's parent: before the guests,
    /// with them, after.
    available_instances: [u64; 3],
    /// Frames each guest rendered in all.
    frames: Vec<u64>,
    verified: bool,
}

fn check(msg: impl Into<String>) -> CliError {
    CliError::Check { msg: msg.into() }
}

fn parent_factory(w: &WorkloadArgs, tracking: &str) -> Result<(SharedParent, Arc<ParentFactory>)> {
    let parent: SharedParent = Arc::new(Mutex::new(VgpuParent::default()));
    let inner = vgpu_platform::factory_checked(
        parse_tracking(tracking)?,
        parse_features(&w.migration_features)?,
        super::v1_checks(w.lenient_v1),
    );
    Ok((parent.clone(), Arc::new(ParentFactory::new(inner, parent))))
}

fn source_opts(a: &SoakArgs) -> Result<SourceOptions> {
    Ok(SourceOptions {
        protocol: Protocol::parse(&a.protocol).ok_or_else(|| CliError::Usage {
            msg: format!("--protocol '{}' is not region or v2", a.protocol),
        })?,
        ..SourceOptions::default()
    })
}

fn target_opts(
    mdev_type: &str,
    factory: Arc<ParentFactory>,
    sinks: u32,
    log: &Logger,
) -> TargetOptions {
    TargetOptions {
        mdev_type: mdev_type.into(),
        irq_sink_base: sinks,
        factory,
        fail_at: None,
        bar_region_offset: 0,
        peer_timeout: migration::DEFAULT_PEER_TIMEOUT,
        stop_self_at: None,
        log: log.clone(),
    }
}

fn listeners(n: usize) -> Result<(Vec<TcpListener>, Vec<String>)> {
    let mut ls = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..n {
        let l =
            migration::transport::listen("tcp://127.0.0.1:0").map_err(|e| check(e.to_string()))?;
        urls.push(migration::transport::local_url(&l).map_err(|e| check(e.to_string()))?);
        ls.push(l);
    }
    Ok((ls, urls))
}

/// How long a side waits for a guest to come back before it gives up on its peer.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(120);

/// Wait until `l` has a connection to accept, at most [`ARRIVAL_DEADLINE`].
fn wait_arrival(l: &TcpListener) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = ARRIVAL_DEADLINE.as_millis() as libc::c_int;
    loop {
        // SAFETY: poll(2) on one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            1.. => return Ok(()),
            0 => {
                return Err(check(format!(
                    "no guest arrived within {} s: the peer is gone",
                    ARRIVAL_DEADLINE.as_secs()
                )))
            }
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(check(format!("poll: {}", std::io::Error::last_os_error()))),
        }
    }
}

/// Accept one guest on `l`; read the source's summary so it can go.
fn take(l: &TcpListener, opts: &TargetOptions) -> Result<Vm> {
    wait_arrival(l)?;
    let (vm, _, mut link) =
        migration::incoming(l, opts).map_err(|e| check(format!("incoming: {e}")))?;
    let _: Option<migration::control::Summary> = link.input.recv_control("source's summary").ok();
    Ok(vm)
}

/// Migrate `vm` to `url`; the downtime, ms.
fn send(vm: &mut Vm, url: &str, opts: &SourceOptions) -> Result<f64> {
    let (rep, _events) = migration::migrate(vm, url, opts, &mut |_| {})
        .map_err(|e| check(format!("migrate: {e}")))?;
    Ok(rep.downtime_ms)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The peer: take each guest, let it render, send it home; `round_trips` times.
pub fn peer(a: &SoakArgs, w: &WorkloadArgs, home: &str, ready: &Path, log: &Logger) -> Result<()> {
    let homes: Vec<String> = home.split(',').map(str::to_string).collect();
    let (_parent, factory) = parent_factory(w, &a.dirty_tracking)?;
    let (ls, urls) = listeners(homes.len())?;
    let tmp = ready.with_extension("tmp");
    std::fs::write(&tmp, urls.join(",")).map_err(|e| check(format!("ready file: {e}")))?;
    std::fs::rename(&tmp, ready).map_err(|e| check(format!("ready file: {e}")))?;
    let sopts = source_opts(a)?;
    std::thread::scope(|s| {
        let handles: Vec<_> = ls
            .iter()
            .zip(&homes)
            .enumerate()
            .map(|(i, (l, home))| {
                let topts = target_opts(&w.mdev_type, factory.clone(), 9000 + 100 * i as u32, log);
                let sopts = sopts.clone();
                s.spawn(move || -> Result<()> {
                    for _ in 0..a.round_trips {
                        let mut vm = take(l, &topts)?;
                        let next = vm.completed_frames() + a.hop_frames;
                        vm.run(StopAt::Frame(next))?;
                        send(&mut vm, home, &sopts)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(check("a soak thread panicked")))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

fn spawn_peer(a: &SoakArgs, w: &WorkloadArgs, homes: &[String], ready: &Path) -> Result<Child> {
    let exe =
        std::env::current_exe().map_err(|e| check(format!("cannot find this program: {e}")))?;
    Command::new(exe)
        .args(["--log-level", "critical", "soak", "--type", &w.mdev_type])
        .args(["--migration-features", &w.migration_features])
        .args([
            "--dirty-tracking",
            &a.dirty_tracking,
            "--protocol",
            &a.protocol,
        ])
        .args(["--round-trips", &a.round_trips.to_string()])
        .args(["--hop-frames", &a.hop_frames.to_string()])
        .args(["--peer-of", &homes.join(",")])
        .arg("--ready-file")
        .arg(ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| check(format!("cannot start the peer: {e}")))
}

fn wait_ready(peer: &mut Child, ready: &Path) -> Result<Vec<String>> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(ready) {
            let _ = std::fs::remove_file(ready);
            return Ok(s.trim().split(',').map(str::to_string).collect());
        }
        if let Ok(Some(st)) = peer.try_wait() {
            return Err(check(format!("the peer exited before it listened ({st})")));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(check("the peer did not listen within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One guest's soak at home; returns (round-trip ms, downtimes of the migrations out ms,
/// frames). A log or fingerprint that differs from the reference is an error.
#[allow(clippy::too_many_arguments)]
fn soak_one(
    mut vm: Vm,
    a: &SoakArgs,
    w: &WorkloadArgs,
    l: &TcpListener,
    peer_url: &str,
    topts: &TargetOptions,
    log: &Logger,
) -> Result<(Vec<f64>, Vec<f64>, u64)> {
    let sopts = source_opts(a)?;
    let tracking = parse_tracking(&a.dirty_tracking)?;
    // The reference: the same guest that never migrates, run alongside.
    let mut reference = boot_with(w, OUT_OF_REACH, tracking, log)?;
    let mut trips = Vec::new();
    let mut downtimes = Vec::new();
    for trip in 1..=a.round_trips {
        let t = Instant::now();
        downtimes.push(send(&mut vm, peer_url, &sopts)?);
        drop(vm);
        vm = take(l, topts)?;
        trips.push(t.elapsed().as_secs_f64() * 1e3);
        let n = vm.completed_frames();
        reference.run(StopAt::Frame(n))?;
        if vm.checksums(n) != reference.checksums(n) {
            return Err(check(format!(
                "round trip {trip}: the checksum log differs from the reference by frame {n}"
            )));
        }
    }
    let frames = vm.completed_frames() + 2;
    vm.set_frame_limit(frames)?;
    vm.run(StopAt::Done)?;
    reference.set_frame_limit(frames)?;
    reference.run(StopAt::Done)?;
    let got = crate::verify::fingerprint(&mut vm, frames);
    let want = crate::verify::fingerprint(&mut reference, frames);
    let (ok, detail) = crate::verify::compare(&got, &want);
    if !ok {
        return Err(check(format!(
            "after {} round trips: {detail}",
            a.round_trips
        )));
    }
    Ok((trips, downtimes, frames))
}

/// `soak`: see the module docs.
pub fn run(a: &SoakArgs, w: &WorkloadArgs, json: bool, log: &Logger) -> Result<()> {
    if let Some(home) = &a.peer_of {
        let ready = a.ready_file.as_deref().ok_or_else(|| CliError::Usage {
            msg: "--peer-of needs --ready-file".into(),
        })?;
        return peer(a, w, home, ready, log);
    }
    if a.vms == 0 || a.round_trips == 0 {
        return Err(CliError::Usage {
            msg: "--vms and --round-trips must be at least 1".into(),
        });
    }
    let t0 = Instant::now();
    let (parent, factory) = parent_factory(w, &a.dirty_tracking)?;
    let before = available_instances(&parent, &w.mdev_type);
    // Every guest first, so that a type with too few instances is refused before anything
    // moves.
    let mut vms = Vec::new();
    for i in 0..a.vms {
        let mut cfg = vgpu_platform::vm_config(&w.mdev_type, log.clone());
        cfg.ram_size = w.ram_mib << 20;
        cfg.irq_sink_base = 100 + 100 * i as u32;
        cfg.factory = factory.clone();
        let mut vm = Vm::new(&cfg).map_err(|e| check(format!("guest {}: {e}", i + 1)))?;
        vm.boot(&w.params(OUT_OF_REACH))?;
        vm.run(StopAt::Frame(1))?;
        vms.push(vm);
    }
    let with = available_instances(&parent, &w.mdev_type);
    let (ls, homes) = listeners(a.vms)?;
    let ready = std::env::temp_dir().join(format!("vgpu-migrate-soak-{}.urls", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut child = spawn_peer(a, w, &homes, &ready)?;
    let peers = wait_ready(&mut child, &ready);
    let peers = match peers {
        Ok(p) if p.len() == a.vms => p,
        Ok(p) => {
            let _ = child.kill();
            return Err(check(format!(
                "the peer listens on {} ports, not {}",
                p.len(),
                a.vms
            )));
        }
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    info!(log, "soak started"; "vms" => a.vms, "round_trips" => a.round_trips);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .into_iter()
            .zip(ls.iter().zip(&peers))
            .enumerate()
            .map(|(i, (vm, (l, peer_url)))| {
                let topts = target_opts(&w.mdev_type, factory.clone(), 5000 + 100 * i as u32, log);
                s.spawn(move || soak_one(vm, a, w, l, peer_url, &topts, log))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(check("a soak thread panicked")))
            })
            .collect::<Vec<_>>()
    });
    if results.iter().any(|r| r.is_err()) {
        // The peer may wait for a guest that will not come.
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| check(format!("the peer: {e}")));
    let mut trips = Vec::new();
    let mut downtimes = Vec::new();
    let mut frames = Vec::new();
    for r in results {
        let (t, d, f) = r?;
        trips.extend(t);
        downtimes.extend(d);
        frames.push(f);
    }
    match status? {
        st if st.success() => {}
        st => return Err(check(format!("the peer failed ({st})"))),
    }
    let after = available_instances(&parent, &w.mdev_type);
    let report = SoakReport {
        vms: a.vms,
        round_trips: a.round_trips,
        migrations: 2 * a.round_trips * a.vms as u64,
        total_s: t0.elapsed().as_secs_f64(),
        round_trip_median_ms: median(trips),
        downtime_median_ms: median(downtimes),
        available_instances: [before, with, after],
        frames,
        verified: true,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "soak: {} guest(s) x {} round trips ({} migrations) in {:.1} s, round trip median {:.0} ms; every checksum log equals the reference; available_instances {} -> {} -> {}",
            report.vms,
            report.round_trips,
            report.migrations,
            report.total_s,
            report.round_trip_median_ms,
            before,
            with,
            after
        );
    }
    Ok(())
}
