//! `migrate --timeline FILE.png` draws the migration as a PNG, and `--events` prints one JSON
//! object per phase change and per pre-copy round on stderr while it runs.

use serde_json::Value;
use vgpu_migrate_tests::process::{self, Proc};
use vgpu_migrate_tests::SMALL_ARGS;

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vgpu-timeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The JSON objects among the lines of `stderr` (every line that starts with '{' must be
/// one).
fn events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn phases(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| e["phase"].as_str().expect("phase is a string").to_string())
        .collect()
}

#[test]
fn timeline_is_a_png_and_events_are_json_lines() {
    let dir = scratch("ok");
    let png_path = dir.join("timeline.png");
    let png_s = png_path.to_str().expect("UTF-8 path");
    // The target checks its run against a reference: the migration must be a good one.
    let (target, url) = process::incoming(&["--type", "vgpu-64"]);
    let mut args = vec![
        "migrate",
        "--to",
        &url,
        "--frames",
        "6",
        "--migrate-at",
        "3",
        "--timeline",
        png_s,
        "--events",
    ];
    args.extend(SMALL_ARGS);
    let src = Proc::start("migrate", &args).wait().ok();
    target.wait().ok();

    // Events: JSON lines, each with its time; phases in order, rounds numbered from 0.
    let ev = events(&src.stderr);
    assert!(
        ev.iter().all(|e| e["ms"].as_f64().is_some()),
        "{}",
        src.stderr
    );
    assert_eq!(
        phases(&ev),
        vec!["setup", "pre-copy", "completed"],
        "{}",
        src.stderr
    );
    let rounds: Vec<&Value> = ev.iter().filter(|e| e["event"] == "round").collect();
    assert!(!rounds.is_empty(), "no round event: {}", src.stderr);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"].as_u64(), Some(i as u64));
        assert!(r["sent"].as_u64().is_some_and(|s| s > 0));
        assert!(r["bandwidth"].as_f64().is_some_and(|b| b > 0.0));
        assert!(r["expected_downtime_ms"].as_f64().is_some());
        assert!(r["throttle_pct"].as_u64().is_some());
    }
    let done = ev.last().expect("events");
    assert_eq!(done["phase"], "completed");
    assert!(done["downtime_ms"].as_f64().is_some_and(|d| d > 0.0));
    // The completed phase comes after every round.
    let last_round_ms = rounds.last().and_then(|r| r["ms"].as_f64()).unwrap_or(0.0);
    assert!(done["ms"].as_f64().unwrap_or(0.0) >= last_round_ms);

    // The timeline: a PNG that decodes, of the stated size.
    let bytes = std::fs::read(&png_path).expect("timeline written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("the timeline decodes");
    assert_eq!((reader.info().width, reader.info().height), (1400, 1000));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_migration_ends_its_events_with_failed_and_draws_nothing() {
    let dir = scratch("failed");
    let png_path = dir.join("timeline.png");
    let png_s = png_path.to_str().expect("UTF-8 path");
    let (target, url) = process::incoming(&["--type", "vgpu-64", "--no-verify"]);
    let mut args = vec![
        "migrate",
        "--to",
        &url,
        "--frames",
        "6",
        "--migrate-at",
        "3",
        "--inject-failure",
        "round:1",
        "--timeline",
        png_s,
        "--events",
    ];
    args.extend(SMALL_ARGS);
    let src = Proc::start("migrate", &args).wait();
    drop(target);
    // Besides the events, one error line and a non-zero exit.
    assert!(src.code.is_some_and(|c| c != 0 && c != 101), "{src:?}");
    let others: Vec<&str> = src
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('{'))
        .collect();
    assert_eq!(others.len(), 1, "{}", src.stderr);
    assert!(
        others[0].starts_with("error: ") && others[0].contains("migration failed"),
        "{}",
        others[0]
    );

    let ev = events(&src.stderr);
    let ph = phases(&ev);
    assert_eq!(
        ph.first().map(String::as_str),
        Some("setup"),
        "{}",
        src.stderr
    );
    assert_eq!(
        ph.last().map(String::as_str),
        Some("failed"),
        "{}",
        src.stderr
    );
    let failed = ev
        .iter()
        .rfind(|e| e["event"] == "phase")
        .expect("a phase event");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("round 1")),
        "{failed}"
    );
    // Round 0 ran before the injected failure.
    assert!(ev
        .iter()
        .any(|e| e["event"] == "round" && e["round"].as_u64() == Some(0)));
    assert!(!png_path.exists(), "no picture of a migration that failed");
    let _ = std::fs::remove_dir_all(&dir);
}
