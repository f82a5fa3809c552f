//! Two hosts: `vgpu-migrate incoming` and `vgpu-migrate migrate` in two network namespaces
//! joined by a veth pair, so the stream crosses a real network path (its own interfaces,
//! addresses and TCP stacks), optionally shaped (delay, loss, rate). Each
//! migration verifies on the target against a run that never migrated.
//!
//! The downtime must stay right when the hosts do not share a clock: the source measures
//! it on its own clock (stop to the target's ack, minus half the path's RTT; see
//! `vmm::migration::clock`). With 20 ms of delay each way, the downtime grows by the one
//! way the last bytes travel, not by the round trip.
//!
//! The kernels of these machines have no `sch_netem`, so a shaped path is two TUN
//! interfaces (one per namespace) and a relay in this test that moves the IP packets
//! between them after the delay, with the loss and rate asked ([`relay`]); TCP still runs
//! end to end between the two namespaces' stacks. The unshaped path is a veth pair.
//!
//! Needs root and iproute2 (`ip`); without them each test prints why it skips. The
//! namespaces have unique names per test and are deleted by a guard even when a test
//! fails. The addresses are link-local (169.254.77.0/30), inside the namespaces only.

#[path = "two_hosts/relay.rs"]
mod relay;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vgpu_migrate_tests::process::{binary, HANG_GUARD};
use vgpu_migrate_tests::SMALL_ARGS;

const SOURCE_ADDR: &str = "169.254.77.1";
const TARGET_ADDR: &str = "169.254.77.2";

/// Run `ip`/`tc` with `args`; the error names the command and what it printed.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root");
    }
    let found = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Some("iproute2 (ip) is not installed; scripts/setup.sh installs it");
    }
    None
}

/// Two namespaces, "source" and "target", joined by a veth pair or by a shaped relay;
/// deleted on drop (with their interfaces; the relay stops first).
struct TwoHosts {
    source: String,
    target: String,
    created: Vec<String>,
    relay: Option<relay::Relay>,
}

impl TwoHosts {
    /// The namespaces, empty but for `lo`.
    fn namespaces() -> Result<(Self, String), String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id());
        let mut h = TwoHosts {
            source: format!("vgpu-src-{id}"),
            target: format!("vgpu-dst-{id}"),
            created: Vec::new(),
            relay: None,
        };
        for ns in [h.source.clone(), h.target.clone()] {
            run("ip", &["netns", "add", &ns])?;
            h.created.push(ns.clone());
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok((h, id))
    }

    /// Joined by a veth pair (interface names are at most 15 bytes).
    fn veth() -> Result<Self, String> {
        let (h, id) = Self::namespaces()?;
        let (va, vb) = (format!("vs{id}"), format!("vd{id}"));
        run(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        )?;
        run("ip", &["link", "set", &va, "netns", &h.source])?;
        run("ip", &["link", "set", &vb, "netns", &h.target])?;
        for (ns, dev, addr) in [(&h.source, &va, SOURCE_ADDR), (&h.target, &vb, TARGET_ADDR)] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev],
            )?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(h)
    }

    /// Joined by a TUN interface in each and the relay between them, shaped by `shape`.
    fn shaped(shape: relay::Shape) -> Result<Self, String> {
        let (mut h, id) = Self::namespaces()?;
        let (ta, tb) = (format!("ts{id}"), format!("td{id}"));
        let (fa, fb) = (relay::tun(&ta)?, relay::tun(&tb)?);
        for (ns, dev, addr, peer) in [
            (&h.source, &ta, SOURCE_ADDR, TARGET_ADDR),
            (&h.target, &tb, TARGET_ADDR, SOURCE_ADDR),
        ] {
            run("ip", &["link", "set", dev, "netns", ns])?;
            run(
                "ip",
                &["-n", ns, "addr", "add", addr, "peer", peer, "dev", dev],
            )?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        h.relay = Some(relay::Relay::start(fa, fb, shape));
        Ok(h)
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        drop(self.relay.take());
        for ns in &self.created {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// A `vgpu-migrate` process in a namespace; killed on drop unless waited for.
struct NsProc {
    what: &'static str,
    child: Child,
}

impl NsProc {
    fn start(what: &'static str, ns: &str, args: &[&str]) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary())
            .args(["--log-level", "critical"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Self { what, child }
    }

    /// Wait (at most the hang guard) and parse stdout as JSON; panics with stderr if the
    /// process failed.
    fn json(mut self) -> Value {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(start.elapsed() < HANG_GUARD, "{} hung", self.what);
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        let mut err = String::new();
        let _ = self
            .child
            .stdout
            .take()
            .map(|mut o| o.read_to_string(&mut out));
        let _ = self
            .child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut err));
        assert!(
            status.success(),
            "{} failed ({status}):\n{err}\n{out}",
            self.what
        );
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{out}", self.what))
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Migrate the small workload from the source namespace to the target namespace and
/// return (source report, target report), both verified.
fn migrate_across(h: &TwoHosts, extra: &[&str]) -> (Value, Value) {
    let ready: PathBuf = std::env::temp_dir().join(format!("{}.url", h.target));
    let _ = std::fs::remove_file(&ready);
    let listen = format!("tcp://{TARGET_ADDR}:0");
    let ready_s = ready.to_str().expect("UTF-8").to_string();
    let target = NsProc::start(
        "incoming",
        &h.target,
        &[
            "incoming",
            "--listen",
            &listen,
            "--ready-file",
            &ready_s,
            "--type",
            "vgpu-64",
            "--json",
        ],
    );
    let start = Instant::now();
    let url = loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if !s.trim().is_empty() {
                break s.trim().to_string();
            }
        }
        assert!(start.elapsed() < HANG_GUARD, "incoming never listened");
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&ready);
    assert!(
        url.contains(TARGET_ADDR),
        "the target listens on its own host: {url}"
    );
    let mut args = vec![
        "migrate",
        "--to",
        url.as_str(),
        "--type",
        "vgpu-64",
        "--frames",
        "6",
        "--migrate-at",
        "2",
        "--json",
    ];
    args.extend(SMALL_ARGS);
    args.extend(extra);
    let source = NsProc::start("migrate", &h.source, &args).json();
    let target = target.json();
    assert_eq!(source["migrated"], true, "{source}");
    assert_eq!(source["error"], Value::Null, "{source}");
    assert_eq!(source["verified"], true, "{source}");
    assert_eq!(target["verified"], true, "{target}");
    (source, target)
}

/// The source's downtime measurement: (downtime, stop to ack, ack trip) in ms, and how.
fn downtime(source: &Value) -> (f64, f64, f64, String) {
    let d = &source["migration"]["downtime_clock"];
    let f = |k: &str| {
        d[k].as_f64()
            .unwrap_or_else(|| panic!("no {k} in {source}"))
    };
    let method = d["method"].as_str().unwrap_or_default().to_string();
    (
        f("downtime_ms"),
        f("stop_to_ack_ms"),
        f("ack_trip_ms"),
        method,
    )
}

#[test]
fn migrates_between_two_namespaces_over_a_veth_pair_and_verifies() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let h = TwoHosts::veth().expect("two namespaces and a veth pair");
    let (source, _) = migrate_across(&h, &["--protocol", "v2"]);
    let (down, to_ack, trip, method) = downtime(&source);
    assert!(method.contains("source clock only"), "{method}");
    eprintln!("veth: downtime {down:.2} ms; {method}");
    assert!(down > 0.0 && down <= to_ack && trip >= 0.0, "{source}");
    assert_eq!(source["downtime_ms"].as_f64(), Some(down), "{source}");
}

#[test]
fn a_path_with_20_ms_each_way_adds_one_way_to_the_downtime_not_the_round_trip() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let h = TwoHosts::shaped(relay::Shape {
        delay: Duration::from_millis(20),
        loss_ppm: 0,
        rate_bps: None,
    })
    .expect("two namespaces and a 20 ms path");
    let (source, _) = migrate_across(&h, &["--protocol", "v2"]);
    let (down, to_ack, trip, method) = downtime(&source);
    eprintln!("20 ms each way: downtime {down:.2} ms; {method}");
    // The source's TCP measured the 40 ms round trip; half of it is the ack's way back.
    assert!(
        (19.0..=30.0).contains(&trip),
        "ack trip {trip} ms: {method}"
    );
    assert!((to_ack - down - trip).abs() < 0.01, "{source}");
    // The last bytes had to cross the path before the target could resume: the downtime
    // holds one way (20 ms) at least, and the ack's way back is not in it.
    assert!(
        down >= 19.0,
        "downtime {down} ms misses the one-way delay: {method}"
    );
    assert!(
        down <= to_ack - 19.0,
        "downtime {down} ms holds the ack's trip: {method}"
    );
}

#[test]
fn a_lossy_rate_limited_path_still_migrates_and_verifies() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let h = TwoHosts::shaped(relay::Shape {
        delay: Duration::from_millis(2),
        loss_ppm: 10_000,
        rate_bps: Some(400_000_000),
    })
    .expect("two namespaces and a lossy, rate-limited path");
    for protocol in ["region", "v2"] {
        let (source, _) = migrate_across(&h, &["--protocol", protocol]);
        assert_eq!(source["migration"]["protocol"], protocol, "{source}");
    }
}
