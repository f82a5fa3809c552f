//! No wait without a deadline: a peer that freezes (SIGSTOP, at an exact phase through the
//! hidden `--stop-self-at`) is given up on within the peer timeout. A frozen target leaves
//! the source resuming its device and guest, finishing the workload with the reference's
//! checksum log, and exiting non-zero with one line naming the phase; a frozen source
//! leaves the target discarding its VM and exiting likewise. Keep-alives keep a live but
//! busy peer from being taken for a dead one.
//!
//! Every process is the real `vgpu-migrate` binary; the frozen one is killed (SIGKILL) by
//! its guard at the end. Waits are for events (exit, a file, a process state), each bounded
//! by a generous hang guard.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use vgpu_migrate_tests::process::{self, Out, Proc, HANG_GUARD};
use vmm::migration::clock::{monotonic_ns, set_slices, DeadlineReader, Liveness};
use vmm::migration::control::{ControlWriter, KeepAliveThread, TargetEvents};
use vmm::migration::transport::{ChannelWriter, PrefetchReader};

const SMALL: [&str; 10] = vgpu_migrate_tests::SMALL_ARGS;
const FRAMES: &str = "6";
/// The default `--peer-timeout`, in seconds.
const PEER_TIMEOUT_S: f64 = 5.0;

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", out.what, out.stdout))
}

/// `run --frames 6 --json` of the same workload: what a source that kept its guest must
/// end with.
fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let mut args = vec!["run", "--frames", FRAMES, "--json"];
        args.extend(SMALL);
        json(&Proc::start("run", &args).wait().ok())
    })
}

/// `migrate` of the small workload to `url`, migrating at frame 2.
fn migrate(url: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "migrate",
        "--to",
        url,
        "--frames",
        FRAMES,
        "--migrate-at",
        "2",
        "--json",
    ];
    args.extend(SMALL);
    args.extend(extra);
    Proc::start("migrate", &args)
}

/// Wait until `p` is stopped by a signal; CLOCK_MONOTONIC ns when it was first seen so.
fn wait_stopped(p: &mut Proc) -> u64 {
    let start = Instant::now();
    loop {
        if p.state() == Some('T') {
            return monotonic_ns();
        }
        assert!(!p.exited(), "{} exited instead of stopping", p.pid());
        assert!(start.elapsed() < HANG_GUARD, "{} never stopped", p.pid());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The target freezes at `phase`: the source gives up, resumes, finishes the workload with
/// the reference's checksum log, and exits non-zero with one line naming `names`.
/// Returns ms from the target's freeze to the source's device running again.
fn target_freezes(phase: &str, names: &[&str]) -> f64 {
    let (mut target, url) = process::incoming(&["--stop-self-at", phase, "--json"]);
    let source = migrate(&url, &[]);
    let frozen_ns = wait_stopped(&mut target);
    let source = source.wait();

    let line = source.one_error_line();
    assert!(line.contains("target stopped"), "{line}");
    assert!(
        names.iter().any(|n| line.contains(n)),
        "names the phase ({names:?}): {line}"
    );
    assert!(line.contains("in 5 s"), "names the timeout: {line}");
    assert!(
        line.contains("the source kept running and finished frame 6")
            && line.contains("checksum log equals the reference"),
        "{line}"
    );
    let v = json(&source);
    assert_eq!(v["migrated"], false, "{v}");
    assert_eq!(
        v["checksums"],
        reference()["checksums"],
        "the guest ran on: {v}"
    );
    assert_eq!(v["final_checksum"], reference()["final_checksum"], "{v}");
    assert_eq!(target.state(), Some('T'), "the target is still frozen");

    let resumed_ns = v["source_resumed_ns"].as_u64().expect("source_resumed_ns");
    let ms = (resumed_ns as f64 - frozen_ns as f64) / 1e6;
    eprintln!("target frozen at {phase}: the source's device ran again after {ms:.0} ms");
    // No upper bound on wall time here (a loaded machine may take any time to get here;
    // the source's own line above says it gave up after the 5 s timeout, and every process
    // wait is bounded by the hang guard).
    ms
}

#[test]
fn a_target_frozen_at_the_handshake_leaves_the_source_running() {
    target_freezes("handshake", &["during the handshake"]);
}

#[test]
fn a_target_frozen_in_a_precopy_round_leaves_the_source_running() {
    target_freezes("round:1", &["during pre-copy round 1"]);
}

#[test]
fn a_target_frozen_in_the_downtime_window_leaves_the_source_running() {
    // Frozen at the SWITCHOVER record: the source's vCPU is stopped; it is left writing
    // the residue or waiting for the acknowledgement.
    let ms = target_freezes(
        "switchover",
        &["during the target's load", "during stop-and-copy"],
    );
    // The source waits for the timeout after the target's last keep-alive, which came
    // at most one keep-alive interval before the freeze.
    assert!(ms > (PEER_TIMEOUT_S - 1.0) * 1e3, "gave up early: {ms} ms");
}

/// The source freezes at `phase`: the target discards its VM and exits non-zero with one
/// line naming `name`.
fn source_freezes(phase: &str, name: &str) {
    let (target, url) = process::incoming(&["--json"]);
    let mut source = migrate(&url, &["--stop-self-at", phase]);
    wait_stopped(&mut source);
    let target = target.wait();

    let line = target.one_error_line();
    assert!(line.contains("incoming migration failed"), "{line}");
    assert!(line.contains("source stopped sending"), "{line}");
    assert!(line.contains(name), "names the phase ({name}): {line}");
    assert_eq!(target.stdout, "", "the target reports no result");
    assert_eq!(source.state(), Some('T'), "the source is still frozen");
}

#[test]
fn a_source_frozen_at_the_handshake_is_given_up() {
    source_freezes("handshake", "during the handshake");
}

#[test]
fn a_source_frozen_in_a_precopy_round_is_given_up() {
    source_freezes("round:1", "during pre-copy round 1");
}

#[test]
fn a_source_frozen_in_the_downtime_window_is_given_up() {
    source_freezes("switchover", "during stop-and-copy");
}

#[test]
fn a_bad_peer_timeout_is_a_usage_error() {
    let out = migrate("tcp://127.0.0.1:9", &["--peer-timeout", "0.1"]).wait();
    let line = out.one_error_line();
    assert!(line.contains("--peer-timeout 0.1"), "{line}");
}

fn loopback() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

/// A source writes more than the socket holds to a target that does not read for twice
/// the timeout (it is "busy"), then reads everything. With the target's keep-alives the
/// source waits and everything arrives; without, the source gives up, naming the phase.
fn busy_target(keepalives: bool) -> Result<(), String> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let (src, dst) = loopback();
    let live = Liveness::new("target", TIMEOUT);
    live.set_phase("the test round");
    set_slices(&src, &live).unwrap();
    let events = TargetEvents::spawn(
        DeadlineReader::new(src.try_clone().unwrap(), live.clone()),
        live.clone(),
    );
    let mut w = ChannelWriter::spawn(src, None, live);
    let data: Vec<u8> = (0..(48u32 << 20)).map(|i| (i % 251) as u8).collect();
    let want = data.clone();
    let target = std::thread::spawn(move || {
        let tlive = Liveness::new("source", Duration::from_secs(60));
        let ctrl = ControlWriter::new(dst.try_clone().unwrap(), tlive.clone()).unwrap();
        let ka = keepalives.then(|| KeepAliveThread::spawn(ctrl.clone()));
        // The behaviour under test, not a synchronisation: a target busy for a while.
        std::thread::sleep(TIMEOUT * 2);
        let mut r = PrefetchReader::spawn(dst, 8, tlive);
        let mut got = Vec::new();
        let res = r.read_to_end(&mut got);
        drop(ka);
        (res.is_ok(), got)
    });
    let res = w
        .write_all(&data)
        .and_then(|_| w.finish())
        .map_err(|e| e.to_string());
    drop(w);
    drop(events);
    let (read_ok, got) = target.join().unwrap();
    if res.is_ok() {
        assert!(read_ok && got == want, "everything arrived, in order");
    }
    res
}

#[test]
fn keepalives_keep_a_busy_target_alive() {
    busy_target(true).expect("a busy target that sends keep-alives is alive");
}

#[test]
fn without_keepalives_a_silent_target_is_given_up() {
    let e = busy_target(false).expect_err("a silent target is given up");
    assert_eq!(
        e,
        "target stopped reading during the test round (nothing from it in 2 s)"
    );
}
