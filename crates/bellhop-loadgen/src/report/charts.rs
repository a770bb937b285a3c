//! The report's SVG charts, drawn with plotters: server RSS over connections (idle) and p99
//! latency over deliveries per second (fan-out), one line per system, from run 1.

use std::path::Path;

use plotters::prelude::*;

use super::{get, Report, ORDER};
use crate::systems::System;

fn color(s: System) -> RGBColor {
    match s {
        System::Bellhop => RGBColor(0xd9, 0x5f, 0x02),
        System::Nats => RGBColor(0x1b, 0x9e, 0x77),
        System::Socketio => RGBColor(0x75, 0x70, 0xb3),
        System::Ceiling => RGBColor(0x66, 0x66, 0x66),
    }
}

/// A chart's lines, one per system: `(x, y)` points in the system's colour.
type Series = Vec<(System, Vec<(f64, f64)>)>;

/// The largest x and y of any point (at least 1, so an empty chart still has axes).
fn extent(series: &Series) -> (f64, f64) {
    let max = |pick: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(pick))
            .fold(1.0, f64::max)
    };
    (max(|p| p.0), max(|p| p.1))
}

/// Whether each measured point is marked on its line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Marks {
    Lines,
    LinesAndPoints,
}

/// Draws each system's line (and its points, with [`Marks::LinesAndPoints`]) and the legend.
fn draw_lines<'a, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    series: &Series,
    marks: Marks,
) -> anyhow::Result<()>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    for (s, pts) in series {
        let c = color(*s);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(s.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        if marks == Marks::LinesAndPoints {
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

/// Draws `fanout-latency.svg` and `idle-rss.svg` into `dir`.
pub fn charts(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // p99 over deliveries/s.
    let series: Series = ORDER
        .iter()
        .filter_map(|s| {
            let f = get(report, *s)?.fanout.as_ref()?;
            let pts = f
                .steps
                .iter()
                .filter(|st| st.latency.count > 0)
                .map(|st| {
                    (
                        st.deliveries_per_second / 1000.0,
                        st.latency.p99_ms.max(0.01),
                    )
                })
                .collect();
            Some((*s, pts))
        })
        .collect();
    let (max_x, max_y) = extent(&series);
    {
        let path = dir.join("fanout-latency.svg");
        let root = SVGBackend::new(&path, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("fanout: p99 end-to-end latency", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_x * 1.05, (0.01..max_y * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("deliveries per second (thousands)")
            .y_desc("p99 latency (ms, log)")
            .draw()?;
        draw_lines(&mut chart, &series, Marks::LinesAndPoints)?;
        root.present()?;
    }
    // RSS over connections.
    let series: Series = ORDER
        .iter()
        .filter_map(|s| {
            let i = get(report, *s)?.idle.as_ref()?;
            let pts = i
                .rss_curve
                .iter()
                .map(|(n, rss)| (*n as f64, *rss as f64 / 1048576.0))
                .collect();
            Some((*s, pts))
        })
        .collect();
    let (max_x, max_y) = extent(&series);
    let path = dir.join("idle-rss.svg");
    let root = SVGBackend::new(&path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "idle: server RSS while connections open",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("open connections (each subscribed to 2 channels)")
        .y_desc("server RSS (MiB)")
        .draw()?;
    draw_lines(&mut chart, &series, Marks::Lines)?;
    root.present()?;
    Ok(())
}
