//! The fault matrix: `kill -9` and a freeze (SIGSTOP) of the source and of the target at
//! every phase of a live migration, each cell a test. Faults are placed exactly with the
//! hidden `--kill-self-at` / `--stop-self-at` (the process signals itself at that point).
//!
//! What must hold in every cell:
//! - before the target holds the whole state, a failed peer leaves the source running with
//!   a checksum log equal to the reference (or, if the source itself failed, the target
//!   discards what it received);
//! - from then on (PREPARED, HANDOVER, RESUMED), exactly one side runs the guest, never both:
//!   the target resumes only after the source's HANDOVER or once the source is known dead
//!   (its connection ended without an ABORT); the source runs the guest again only if the
//!   target is known gone (its connection ended), and stays paused when the target is
//!   merely silent;
//! - every process that is not frozen ends within its deadline, with one `error:` line if
//!   it failed.
//!
//! The freezes of the handshake, pre-copy and switchover phases are in `peer_timeout.rs`
//! (with the default 5 s timeout); the cells here use `--peer-timeout 1`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use vgpu_migrate_tests::process::{self, Out, Proc, HANG_GUARD};

const SMALL: [&str; 10] = vgpu_migrate_tests::SMALL_ARGS;
const FRAMES: &str = "6";

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}", out.what, out.stdout))
}

/// `run --frames 6 --json` of the same workload: what any side that ran the guest to the
/// end must end with.
fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let mut args = vec!["run", "--frames", FRAMES, "--json"];
        args.extend(SMALL);
        json(&Proc::start("run", &args).wait().ok())
    })
}

fn target(fault: &[&str]) -> (Proc, String) {
    let mut args = vec!["--peer-timeout", "1", "--json"];
    args.extend(fault);
    process::incoming(&args)
}

fn source(url: &str, fault: &[&str]) -> Proc {
    let mut args = vec![
        "migrate",
        "--to",
        url,
        "--frames",
        FRAMES,
        "--migrate-at",
        "2",
        "--peer-timeout",
        "1",
        "--json",
    ];
    args.extend(SMALL);
    args.extend(fault);
    Proc::start("migrate", &args)
}

/// Wait until `p` is stopped by a signal.
fn wait_stopped(p: &mut Proc) {
    let start = Instant::now();
    while p.state() != Some('T') {
        assert!(!p.exited(), "{} exited instead of stopping", p.pid());
        assert!(start.elapsed() < HANG_GUARD, "{} never stopped", p.pid());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn cont(p: &Proc) {
    // SAFETY: kill(2) sends SIGCONT to a child this test started and has not reaped.
    let r = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGCONT) };
    assert_eq!(r, 0, "SIGCONT {}", p.pid());
}

/// The source ran the guest to the end itself: one error line saying so, and the checksum
/// log of the reference.
fn source_kept_the_guest(out: &Out, cell: &str) {
    let line = out.one_error_line();
    assert!(
        line.contains("the source kept running and finished frame 6")
            && line.contains("checksum log equals the reference"),
        "{cell}: {line}"
    );
    let v = json(out);
    assert_eq!(v["migrated"], false, "{cell}: {v}");
    assert_eq!(v["checksums"], reference()["checksums"], "{cell}: {v}");
}

/// The target ran the guest to the end: exit 0, verified against the reference.
fn target_ran_the_guest(out: Out, cell: &str) {
    let out = out.ok();
    let v = json(&out);
    assert_eq!(v["verified"], true, "{cell}: {v}");
    assert_eq!(
        v["final_checksum"],
        reference()["final_checksum"],
        "{cell}: {v}"
    );
}

/// The target discarded what it received: one error line.
fn target_discarded(out: &Out, cell: &str) {
    let line = out.one_error_line();
    assert!(line.contains("incoming migration failed"), "{cell}: {line}");
}

/// The target dies at `phase`: the source learns it from the closed connection and runs
/// the guest on, to the reference's checksums (if the target had resumed, its short run
/// died with it: the guest goes on from the switchover point here).
fn target_killed(phase: &str) {
    let (t, url) = target(&["--kill-self-at", phase]);
    let s = source(&url, &[]).wait();
    let t = t.wait();
    assert_eq!(t.code, None, "the target was killed");
    source_kept_the_guest(&s, &format!("target killed at {phase}"));
}

/// The target freezes at `phase` after it holds the whole state: the source has handed
/// the guest over, hears nothing, and stays paused (one error line, no run of its own);
/// the target, continued, runs the guest to the end.
fn target_frozen_after_prepared(phase: &str) {
    let cell = format!("target frozen at {phase}");
    let (mut t, url) = target(&["--stop-self-at", phase]);
    let s = source(&url, &[]);
    wait_stopped(&mut t);
    let s = s.wait();
    let line = s.one_error_line();
    assert!(
        line.contains("migration unconfirmed") && line.contains("stays paused here"),
        "{cell}: {line}"
    );
    assert!(
        s.stdout.trim().is_empty(),
        "{cell}: no report of a run: {}",
        s.stdout
    );
    cont(&t);
    target_ran_the_guest(t.wait(), &cell);
}

/// The source dies at `phase` before the target holds the whole state: the target
/// discards.
fn source_killed_early(phase: &str) {
    let cell = format!("source killed at {phase}");
    let (t, url) = target(&[]);
    let s = source(&url, &["--kill-self-at", phase]).wait();
    assert_eq!(s.code, None, "{cell}: the source was killed");
    target_discarded(&t.wait(), &cell);
}

/// The source dies at `phase` once the target holds the whole state: the target resumes
/// (the source cannot run the guest any more) and runs it to the end.
fn source_killed_late(phase: &str) {
    let cell = format!("source killed at {phase}");
    let (t, url) = target(&[]);
    let s = source(&url, &["--kill-self-at", phase]).wait();
    assert_eq!(s.code, None, "{cell}: the source was killed");
    target_ran_the_guest(t.wait(), &cell);
}

macro_rules! cells {
    ($($name:ident => $f:ident($phase:expr);)*) => {
        $(
            #[test]
            fn $name() {
                $f($phase);
            }
        )*
    };
}

cells! {
    target_killed_at_the_handshake => target_killed("handshake");
    target_killed_in_precopy_round_1 => target_killed("round:1");
    target_killed_in_the_downtime_window => target_killed("switchover");
    target_killed_with_the_whole_state => target_killed("prepared");
    target_killed_after_the_handover_before_resuming => target_killed("handover");
    target_killed_after_resuming_before_telling => target_killed("resumed");
    target_frozen_with_the_whole_state => target_frozen_after_prepared("prepared");
    target_frozen_after_the_handover => target_frozen_after_prepared("handover");
    target_frozen_after_resuming_before_telling => target_frozen_after_prepared("resumed");
    source_killed_at_the_handshake => source_killed_early("handshake");
    source_killed_in_precopy_round_1 => source_killed_early("round:1");
    source_killed_in_the_downtime_window => source_killed_early("switchover");
    source_killed_before_the_handover => source_killed_late("prepared");
    source_killed_after_the_handover => source_killed_late("handover");
}

/// The source freezes having read PREPARED, before it hands over: the target hears nothing,
/// discards; the source, continued, finds the target gone and runs the guest on.
#[test]
fn source_frozen_before_the_handover() {
    let cell = "source frozen at prepared";
    let (t, url) = target(&[]);
    let mut s = source(&url, &["--stop-self-at", "prepared"]);
    wait_stopped(&mut s);
    let t = t.wait();
    let line = t.one_error_line();
    assert!(line.contains("handover"), "{cell}: {line}");
    cont(&s);
    source_kept_the_guest(&s.wait(), cell);
}

/// The source freezes right after it handed over: the target runs the guest; the source,
/// continued, reads the target's confirmation and outcome and reports the migration.
#[test]
fn source_frozen_after_the_handover() {
    let cell = "source frozen at handover";
    let (t, url) = target(&[]);
    let mut s = source(&url, &["--stop-self-at", "handover"]);
    wait_stopped(&mut s);
    target_ran_the_guest(t.wait(), cell);
    cont(&s);
    let out = s.wait().ok();
    let v = json(&out);
    assert_eq!(v["migrated"], true, "{cell}: {v}");
    assert_eq!(v["verified"], true, "{cell}: {v}");
}
