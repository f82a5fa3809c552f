//! The timeline's panels: bytes by kind per round, bandwidth and dirty rate, expected
//! downtime against the limit, throttle, and the downtime breakdown as a stacked bar.

use plotters::prelude::*;
use vmm::migration::{Progress, SourceReport};

use super::{bars, draw_err, Result, Span, FONT};

const RAM_C: RGBColor = RGBColor(66, 133, 244);
const DMA_C: RGBColor = RGBColor(244, 160, 0);
const DEV_C: RGBColor = RGBColor(15, 157, 88);
const BW_C: RGBColor = RGBColor(66, 133, 244);
const DIRTY_C: RGBColor = RGBColor(219, 68, 55);
const PARTS_C: [RGBColor; 7] = [
    RGBColor(171, 71, 188),
    RGBColor(66, 133, 244),
    RGBColor(0, 172, 193),
    RGBColor(244, 160, 0),
    RGBColor(219, 68, 55),
    RGBColor(15, 157, 88),
    RGBColor(120, 144, 156),
];

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn max_or(v: impl Iterator<Item = f64>, floor: f64) -> f64 {
    v.fold(floor, f64::max) * 1.15
}

/// Round labels: 0..n-1, then "stop-copy".
fn round_label(n: usize) -> impl Fn(&i32) -> String {
    move |x: &i32| {
        if *x < 0 {
            String::new()
        } else if *x as usize == n {
            "stop-copy".into()
        } else if (*x as usize) < n {
            x.to_string()
        } else {
            String::new()
        }
    }
}

pub(super) fn bytes_panel(area: &Area, rep: &SourceReport) -> Result<()> {
    let b = bars(rep);
    let n = rep.rounds.len();
    let top = max_or(b.iter().map(|x| x.ram + x.dma + x.dev), 1.0);
    let mut c = ChartBuilder::on(area)
        .caption("bytes per round by kind (MiB)", (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-1i32..(n as i32 + 1), 0f64..top)
        .map_err(draw_err)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 3)
        .x_label_formatter(&round_label(n))
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_err)?;
    let parts: [(&str, RGBColor, Span); 3] = [
        ("RAM", RAM_C, |x| (0.0, x.ram)),
        ("RAM via DMA log only", DMA_C, |x| (x.ram, x.ram + x.dma)),
        ("device", DEV_C, |x| (x.ram + x.dma, x.ram + x.dma + x.dev)),
    ];
    for (name, color, span) in parts {
        c.draw_series(b.iter().enumerate().map(|(i, x)| {
            let (lo, hi) = span(x);
            let mut r = Rectangle::new([(i as i32, lo), (i as i32, hi)], color.filled());
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(draw_err)?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    legend(&mut c)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    c: &mut ChartContext<'a, DB, CT>,
) -> Result<()> {
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(draw_err)
}

pub(super) fn rates_panel(area: &Area, rep: &SourceReport, rounds: &[Progress]) -> Result<()> {
    let n = rep.rounds.len();
    let bw: Vec<(i32, f64)> = rounds
        .iter()
        .map(|p| (p.round as i32, p.bandwidth / 1e6))
        .collect();
    let dirty: Vec<(i32, f64)> = rep
        .rounds
        .iter()
        .map(|r| (r.round as i32, r.dirty_rate / 1e6))
        .collect();
    let top = max_or(
        bw.iter()
            .chain(dirty.iter())
            .map(|p| p.1)
            .chain([rep.bandwidth / 1e6]),
        1.0,
    );
    let mut c = ChartBuilder::on(area)
        .caption("measured bandwidth and dirty rate (MB/s)", (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-1i32..(n as i32 + 1), 0f64..top)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_labels(n + 3)
        .x_label_formatter(&round_label(n))
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_err)?;
    for (name, color, pts) in [("bandwidth", BW_C, bw), ("dirty rate", DIRTY_C, dirty)] {
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_err)?;
    }
    legend(&mut c)
}

pub(super) fn downtime_panel(
    area: &Area,
    rep: &SourceReport,
    rounds: &[Progress],
    limit_ms: Option<f64>,
) -> Result<()> {
    let n = rep.rounds.len();
    let exp: Vec<(i32, f64)> = rounds
        .iter()
        .map(|p| (p.round as i32, p.expected_downtime_ms))
        .collect();
    // A round's expectation can be far above the limit (round 0 of a large guest): the
    // axis holds the limit and the real downtime, and caps the rest at 4x the limit.
    let cap = limit_ms.map_or(f64::INFINITY, |l| l * 4.0);
    let top = max_or(
        exp.iter()
            .map(|p| p.1.min(cap))
            .chain([rep.downtime_ms, limit_ms.unwrap_or(0.0)]),
        1.0,
    );
    let mut c = ChartBuilder::on(area)
        .caption("expected downtime against the limit (ms)", (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-1i32..(n as i32 + 1), 0f64..top)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_labels(n + 3)
        .x_label_formatter(&round_label(n))
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_err)?;
    let capped: Vec<(i32, f64)> = exp.iter().map(|&(x, y)| (x, y.min(top))).collect();
    c.draw_series(LineSeries::new(capped.clone(), BW_C.stroke_width(2)))
        .map_err(draw_err)?
        .label("expected downtime after the round")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BW_C.stroke_width(2)));
    c.draw_series(capped.iter().map(|&p| Circle::new(p, 4, BW_C.filled())))
        .map_err(draw_err)?;
    if let Some(l) = limit_ms {
        c.draw_series(LineSeries::new(
            [(-1, l), (n as i32 + 1, l)],
            DIRTY_C.stroke_width(2),
        ))
        .map_err(draw_err)?
        .label(format!("limit {l:.0} ms"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], DIRTY_C.stroke_width(2)));
    }
    c.draw_series([TriangleMarker::new(
        (n as i32, rep.downtime_ms.min(top)),
        7,
        DEV_C.filled(),
    )])
    .map_err(draw_err)?
    .label(format!("measured downtime {:.2} ms", rep.downtime_ms))
    .legend(|(x, y)| TriangleMarker::new((x + 6, y), 6, DEV_C.filled()));
    legend(&mut c)
}

pub(super) fn throttle_panel(area: &Area, rep: &SourceReport, rounds: &[Progress]) -> Result<()> {
    let n = rep.rounds.len();
    let mut pts: Vec<(i32, f64)> = rounds
        .iter()
        .map(|p| (p.round as i32, f64::from(p.throttle_pct)))
        .collect();
    pts.push((n as i32, f64::from(rep.throttle_pct)));
    let mut c = ChartBuilder::on(area)
        .caption("engine throttle (auto-converge, %)", (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-1i32..(n as i32 + 1), 0f64..100f64)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_labels(n + 3)
        .x_label_formatter(&round_label(n))
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_err)?;
    c.draw_series(LineSeries::new(pts.clone(), DIRTY_C.stroke_width(2)))
        .map_err(draw_err)?
        .label("throttle")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], DIRTY_C.stroke_width(2)));
    c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, DIRTY_C.filled())))
        .map_err(draw_err)?;
    legend(&mut c)
}

pub(super) fn breakdown_panel(area: &Area, rep: &SourceReport) -> Result<()> {
    let b = &rep.breakdown;
    let parts = [
        ("stop", b.stop_ms),
        ("drain", b.drain_ms),
        ("wire", b.wire_ms),
        ("target receive", b.target_receive_ms),
        ("load", b.target_load_ms),
        ("config", b.target_config_ms),
        ("resume", b.target_resume_ms),
    ];
    let sum: f64 = parts.iter().map(|p| p.1.max(0.0)).sum();
    let top = sum.max(rep.downtime_ms).max(1e-3) * 1.1;
    let mut c = ChartBuilder::on(area)
        .caption(
            format!(
                "downtime breakdown (ms): measured {:.2}, parts add up to {:.2}",
                rep.downtime_ms, sum
            ),
            (FONT, 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..top, 0i32..2i32)
        .map_err(draw_err)?;
    c.configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(2)
        .y_label_formatter(&|_| String::new())
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_err)?;
    let mut at = 0.0;
    for (i, (name, ms)) in parts.iter().enumerate() {
        let ms = ms.max(0.0);
        let color = PARTS_C[i];
        let mut r = Rectangle::new([(at, 1), (at + ms, 1)], color.filled());
        r.set_margin(25, 25, 0, 0);
        c.draw_series([r])
            .map_err(draw_err)?
            .label(format!("{name} {ms:.2}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        at += ms;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(draw_err)
}
