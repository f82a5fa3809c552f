//! A picture of a migration (`--timeline FILE.png`) and its live events (`--events`).
//!
//! [`Recorder`] sits in the `progress` callback of [`vmm::migration::migrate`]: it keeps
//! each round's live figures (the bandwidth, expected downtime and throttle that
//! [`RoundStats`](vmm::migration::source::RoundStats) does not hold) and, with `--events`,
//! prints one JSON object per phase change and per round on standard error, as QEMU's
//! migration events do. [`draw`] turns the report and those figures into a PNG of five
//! panels: bytes by kind per round, bandwidth and dirty rate, expected downtime against the
//! limit, the throttle, and the downtime breakdown as a stacked bar. Text uses the embedded
//! DejaVu Sans (no system fonts).

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use plotters::prelude::*;
use serde_json::{json, Value};
use snafu::{ResultExt, Snafu};
use vmm::migration::{Progress, SourceReport};

mod panels;
use panels::{breakdown_panel, bytes_panel, downtime_panel, rates_panel, throttle_panel};

/// Width of the picture, pixels.
pub const WIDTH: u32 = 1400;
/// Height of the picture, pixels.
pub const HEIGHT: u32 = 1000;
const FONT: &str = "sans-serif";
const PAGE: u64 = 4096;

/// Errors of the timeline.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum TimelineError {
    /// The embedded font was refused.
    #[snafu(display("the embedded font: {what}"))]
    Font {
        /// Why.
        what: String,
    },
    /// Drawing failed.
    #[snafu(display("drawing the timeline: {what}"))]
    Draw {
        /// What failed.
        what: String,
    },
    /// The PNG could not be written.
    #[snafu(display("writing the timeline {}: {source}", path.display()))]
    Write {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The PNG encoder failed.
    #[snafu(display("encoding the timeline {}: {source}", path.display()))]
    Encode {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: png::EncodingError,
    },
}

type Result<T, E = TimelineError> = std::result::Result<T, E>;

fn draw_err(e: impl std::fmt::Display) -> TimelineError {
    TimelineError::Draw {
        what: e.to_string(),
    }
}

/// Records a migration's live progress; with `events`, prints it as JSON lines on stderr.
#[derive(Debug)]
pub struct Recorder {
    events: bool,
    t0: Instant,
    phase: Option<&'static str>,
    rounds: Vec<Progress>,
}

impl Recorder {
    /// A recorder; `events` prints each phase change and round on stderr.
    pub fn new(events: bool) -> Self {
        Self {
            events,
            t0: Instant::now(),
            phase: None,
            rounds: Vec::new(),
        }
    }

    /// The pre-copy rounds' live figures seen so far, in order.
    pub fn rounds(&self) -> &[Progress] {
        &self.rounds
    }

    fn emit(&self, mut v: Value) {
        if !self.events {
            return;
        }
        v["ms"] = json!((self.t0.elapsed().as_secs_f64() * 1e6).round() / 1e3);
        // One write of a whole line: lines never interleave with other stderr writers.
        let mut line = v.to_string();
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn phase(&mut self, phase: &'static str, extra: Value) {
        if self.phase == Some(phase) {
            return;
        }
        self.phase = Some(phase);
        let mut v = json!({"event": "phase", "phase": phase});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        self.emit(v);
    }

    /// The migration starts (connect, handshake, device set-up).
    pub fn start(&mut self) {
        self.t0 = Instant::now();
        self.phase("setup", Value::Null);
    }

    /// One `progress` report of [`vmm::migration::migrate`].
    pub fn progress(&mut self, p: &Progress) {
        match p.phase {
            "done" => self.phase(
                "completed",
                json!({"downtime_ms": p.expected_downtime_ms, "total_ms": p.expected_total_ms, "sent": p.sent}),
            ),
            phase => {
                self.phase(phase, Value::Null);
                if phase == "pre-copy" {
                    self.rounds.push(p.clone());
                    self.emit(json!({
                        "event": "round",
                        "round": p.round,
                        "sent": p.sent,
                        "remaining": p.remaining,
                        "dirty_rate": p.dirty_rate,
                        "bandwidth": p.bandwidth,
                        "expected_downtime_ms": p.expected_downtime_ms,
                        "expected_total_ms": p.expected_total_ms,
                        "throttle_pct": p.throttle_pct,
                    }));
                }
            }
        }
    }

    /// The migration failed with `error` (the guest runs on at the source).
    pub fn failed(&mut self, error: &str) {
        self.phase("failed", json!({ "error": error }));
    }
}

fn register_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "DejaVu Sans did not parse".to_string())?;
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            .map_err(|_| "DejaVu Sans Bold did not parse".to_string())
    })
    .clone()
    .map_err(|what| TimelineError::Font { what })
}

/// Bytes by kind in one bar: RAM found by the CPU log, RAM found only by the DMA log,
/// device data.
#[derive(Debug, Clone, Copy)]
struct Bar {
    ram: f64,
    dma: f64,
    dev: f64,
}

/// Where one kind sits in a stacked bar: (bottom, top).
type Span = fn(&Bar) -> (f64, f64);

fn bars(rep: &SourceReport) -> Vec<Bar> {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut v: Vec<Bar> = rep
        .rounds
        .iter()
        .map(|r| Bar {
            ram: mib(r.ram_pages.saturating_sub(r.dma_only_pages) * PAGE),
            dma: mib(r.dma_only_pages * PAGE),
            dev: mib(r.device_bytes),
        })
        .collect();
    // Stop-copy: the RAM the rounds did not send, the device's final data and state.
    let rounds_ram: u64 = rep.rounds.iter().map(|r| r.ram_pages * PAGE).sum();
    v.push(Bar {
        ram: mib(rep.bytes.ram.saturating_sub(rounds_ram)),
        dma: 0.0,
        dev: mib(rep.bytes.device_stopcopy + rep.bytes.state),
    });
    v
}

/// Draw `rep` (with the live figures `rounds` of [`Recorder::rounds`] and the downtime
/// limit, ms) as a `WIDTH`x`HEIGHT` PNG at `path`.
pub fn draw(
    path: &Path,
    title: &str,
    rep: &SourceReport,
    rounds: &[Progress],
    limit_ms: Option<f64>,
) -> Result<()> {
    register_font()?;
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let heading = format!(
            "{title}: {} protocol, {} rounds, {:.1} MiB, downtime {:.2} ms (expected {:.2}), total {:.1} ms",
            rep.protocol,
            rep.rounds.len(),
            rep.bytes.total as f64 / 1048576.0,
            rep.downtime_ms,
            rep.expected_downtime_ms,
            rep.total_ms
        );
        let root = root
            .titled(&heading, (FONT, 22).into_font().style(FontStyle::Bold))
            .map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(HEIGHT * 62 / 100 - 30);
        let upper = top.split_evenly((2, 2));
        bytes_panel(&upper[0], rep)?;
        rates_panel(&upper[1], rep, rounds)?;
        downtime_panel(&upper[2], rep, rounds, limit_ms)?;
        throttle_panel(&upper[3], rep, rounds)?;
        breakdown_panel(&bottom, rep)?;
        root.present().map_err(draw_err)?;
    }
    write_png(path, &rgb)
}

fn write_png(path: &Path, rgb: &[u8]) -> Result<()> {
    let f = std::fs::File::create(path).context(WriteSnafu { path })?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().context(EncodeSnafu { path })?;
    w.write_image_data(rgb).context(EncodeSnafu { path })?;
    w.finish().context(EncodeSnafu { path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::migration::source::{Breakdown, RoundStats};

    fn report() -> (SourceReport, Vec<Progress>) {
        let mut rep = SourceReport {
            protocol: "v2",
            downtime_ms: 12.5,
            total_ms: 300.0,
            expected_downtime_ms: 10.0,
            bandwidth: 1.2e9,
            ..SourceReport::default()
        };
        rep.rounds = (0..3)
            .map(|r| RoundStats {
                round: r,
                ram_pages: 1000 / (u64::from(r) + 1),
                dma_only_pages: 2,
                device_bytes: 8 << 20,
                ms: 50.0,
                dirty_rate: 2e8,
            })
            .collect();
        rep.bytes.ram = 3000 * PAGE;
        rep.bytes.device_stopcopy = 1 << 20;
        rep.breakdown = Breakdown {
            stop_ms: 0.4,
            drain_ms: 6.0,
            wire_ms: 1.0,
            target_receive_ms: 2.0,
            target_load_ms: 2.0,
            target_config_ms: 0.1,
            target_resume_ms: 0.0,
        };
        let prog = (0..3)
            .map(|r| Progress {
                phase: "pre-copy",
                round: r,
                bandwidth: 1e9,
                expected_downtime_ms: 400.0 / f64::from(r + 1),
                throttle_pct: 10 * r,
                ..Progress::default()
            })
            .collect();
        (rep, prog)
    }

    #[test]
    fn bars_hold_every_round_and_the_stop_copy() {
        let (rep, _) = report();
        let b = bars(&rep);
        assert_eq!(b.len(), 4);
        assert!((b[0].dma - 2.0 * 4096.0 / 1048576.0).abs() < 1e-12);
        // Rounds sent 1000 + 500 + 333 pages: 1167 of the 3000 were left for stop-copy.
        assert!((b[3].ram - 1167.0 * 4096.0 / 1048576.0).abs() < 1e-9);
        assert!((b[3].dev - 1.0).abs() < 1e-12);
    }

    #[test]
    fn recorder_keeps_rounds_and_phases() {
        let (_, prog) = report();
        let mut r = Recorder::new(false);
        r.start();
        for p in &prog {
            r.progress(p);
        }
        r.progress(&Progress {
            phase: "done",
            ..Progress::default()
        });
        assert_eq!(r.rounds().len(), 3);
        assert_eq!(r.phase, Some("completed"));
    }

    #[test]
    fn draws_a_png_of_the_stated_size() {
        let (rep, prog) = report();
        let dir = std::env::temp_dir().join(format!("vgpu-timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.png");
        draw(&path, "test", &rep, &prog, Some(300.0)).expect("draw");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = dec.read_info().expect("decode");
        assert_eq!((reader.info().width, reader.info().height), (WIDTH, HEIGHT));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
