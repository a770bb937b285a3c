//! The benchmark report: every result as JSON, a Markdown section with the headline table
//! (each figure as a ratio Bellhop / peer) and the details, and SVG charts drawn with plotters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::scenarios::{ChatResult, FanoutResult, IdleResult, Step, StormResult};
use crate::systems::System;

/// Everything one system produced in a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SystemResults {
    /// `idle`.
    pub idle: Option<IdleResult>,
    /// `fanout`.
    pub fanout: Option<FanoutResult>,
    /// `chat` on one node.
    pub chat_single: Option<ChatResult>,
    /// `chat` on several nodes.
    pub chat_cluster: Option<ChatResult>,
    /// `storm`.
    pub storm: Option<StormResult>,
    /// Scenarios that could not run, with the reason.
    pub failures: Vec<String>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When (UTC).
    pub date: String,
    /// `git describe` of the checkout.
    pub commit: String,
    /// What the machine is.
    pub machine: Vec<String>,
    /// Versions of the systems.
    pub versions: BTreeMap<String, String>,
    /// The command that produced it.
    pub command: String,
    /// Scenario parameters.
    pub parameters: BTreeMap<String, String>,
    /// Results per system.
    pub results: BTreeMap<String, SystemResults>,
}

/// Which way a figure is better.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

struct Row {
    workload: &'static str,
    metric: &'static str,
    better: Better,
    value: fn(&SystemResults) -> Option<f64>,
    format: fn(f64) -> String,
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}
/// A ramp step's rate, throughput, latency and CPU cells: `publishes/s | deliveries/s | p50 |
/// p99 | p99.9 | server CPU`.
fn step_cells(st: &Step) -> String {
    format!(
        "{:.0} | {} | {} | {} | {} | {:.2}",
        st.publish_rate,
        per_s(st.deliveries_per_second),
        ms(st.latency.p50_ms),
        ms(st.latency.p99_ms),
        ms(st.latency.p999_ms),
        st.server_cores
    )
}

fn per_s(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k/s", v / 1000.0)
    } else {
        format!("{v:.0}/s")
    }
}
fn kib(v: f64) -> String {
    format!("{:.1} KiB", v / 1024.0)
}
fn count(v: f64) -> String {
    format!("{v:.0}")
}

/// The chat rate of the headline: one every system carries on this machine.
const CHAT_HEADLINE: f64 = 2500.0;
/// The rate the issue names.
const CHAT_TARGET: f64 = 10_000.0;

/// The step of `steps` at the publish rate `rate`.
fn step_at(steps: &[Step], rate: f64) -> Option<&Step> {
    steps
        .iter()
        .find(|s| (s.target_publish_rate - rate).abs() < 0.5)
}

/// `chat` on one node at `rate`.
fn single(r: &SystemResults, rate: f64) -> Option<&Step> {
    r.chat_single.as_ref().and_then(|c| step_at(&c.steps, rate))
}

/// `chat` on several nodes at `rate`.
fn cluster(r: &SystemResults, rate: f64) -> Option<&Step> {
    r.chat_cluster
        .as_ref()
        .and_then(|c| step_at(&c.steps, rate))
}

/// The fan-out step of the per-delivery CPU figure: 50,000 deliveries/s, which every system
/// carries here.
const FANOUT_CPU_RATE: f64 = 25.0;

/// `fanout` at the publish rate `rate`.
fn fanout_at(r: &SystemResults, rate: f64) -> Option<&Step> {
    r.fanout.as_ref().and_then(|f| step_at(&f.steps, rate))
}

/// Server CPU time per delivery, µs.
fn cpu_per_delivery(s: &Step) -> Option<f64> {
    (s.deliveries_per_second > 0.0).then(|| s.server_cores * 1e6 / s.deliveries_per_second)
}

fn us(v: f64) -> String {
    format!("{v:.1} µs")
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            workload: "idle",
            metric: "server RSS per connection",
            better: Better::Lower,
            value: |r| r.idle.as_ref().map(|i| i.rss_per_connection),
            format: kib,
        },
        Row {
            workload: "idle",
            metric: "connects per second",
            better: Better::Higher,
            value: |r| r.idle.as_ref().map(|i| i.connects_per_second),
            format: per_s,
        },
        Row {
            workload: "fanout",
            metric: "deliveries/s with p99 < 50 ms",
            better: Better::Higher,
            value: |r| r.fanout.as_ref().map(|f| f.best_deliveries_under_50ms),
            format: per_s,
        },
        Row {
            workload: "fanout",
            metric: "most deliveries/s reached",
            better: Better::Higher,
            value: |r| {
                r.fanout.as_ref().map(|f| {
                    f.steps
                        .iter()
                        .map(|s| s.deliveries_per_second)
                        .fold(0.0, f64::max)
                })
            },
            format: per_s,
        },
        Row {
            workload: "fanout",
            metric: "server busy after the subscribers joined",
            better: Better::Lower,
            value: |r| r.fanout.as_ref().map(|f| f.settle_ms),
            format: ms,
        },
        Row {
            workload: "fanout, 50k deliveries/s",
            metric: "p99 latency",
            better: Better::Lower,
            value: |r| fanout_at(r, FANOUT_CPU_RATE).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "fanout, 50k deliveries/s",
            metric: "server CPU per delivery",
            better: Better::Lower,
            value: |r| fanout_at(r, FANOUT_CPU_RATE).and_then(cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, 1 node, 2,500 msg/s",
            metric: "p50 latency",
            better: Better::Lower,
            value: |r| single(r, CHAT_HEADLINE).map(|s| s.latency.p50_ms),
            format: ms,
        },
        Row {
            workload: "chat, 1 node, 2,500 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            value: |r| single(r, CHAT_HEADLINE).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "chat, 1 node, 2,500 msg/s",
            metric: "server CPU per delivery",
            better: Better::Lower,
            value: |r| single(r, CHAT_HEADLINE).and_then(cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "p50 latency",
            better: Better::Lower,
            value: |r| cluster(r, CHAT_HEADLINE).map(|s| s.latency.p50_ms),
            format: ms,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            value: |r| cluster(r, CHAT_HEADLINE).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "server CPU per delivery",
            better: Better::Lower,
            value: |r| cluster(r, CHAT_HEADLINE).and_then(cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, 1 node, 10,000 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            value: |r| single(r, CHAT_TARGET).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "chat, cluster, 10,000 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            value: |r| cluster(r, CHAT_TARGET).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "storm",
            metric: "all reconnected",
            better: Better::Lower,
            value: |r| r.storm.as_ref().and_then(|s| s.reconnect_ms),
            format: ms,
        },
        Row {
            workload: "storm",
            metric: "messages lost",
            better: Better::Lower,
            value: |r| r.storm.as_ref().map(|s| s.losses.lost as f64),
            format: count,
        },
    ]
}

/// Bellhop's figure over the peer's, and whether that is Bellhop ahead.
fn ratio(b: f64, peer: f64, better: Better) -> String {
    if peer == 0.0 && b == 0.0 {
        return "equal".to_owned();
    }
    if peer == 0.0 {
        return "—".to_owned();
    }
    let r = b / peer;
    let ahead = match better {
        Better::Lower => r < 1.0,
        Better::Higher => r > 1.0,
    };
    let mark = if (r - 1.0).abs() < 0.05 {
        "≈"
    } else if ahead {
        "ahead"
    } else {
        "behind"
    };
    format!("{r:.2} ({mark})")
}

const ORDER: [System; 4] = [
    System::Bellhop,
    System::Nats,
    System::Socketio,
    System::Ceiling,
];

fn get(report: &Report, s: System) -> Option<&SystemResults> {
    report.results.get(s.label())
}

/// The generated Markdown section.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run of {} on commit `{}`.\n",
        report.date, report.commit
    );
    let _ = writeln!(md, "Command: `{}`\n", report.command);
    let _ = writeln!(md, "Machine:\n");
    for m in &report.machine {
        let _ = writeln!(md, "- {m}");
    }
    let _ = writeln!(md, "\nVersions:\n");
    for (k, v) in &report.versions {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "\nParameters:\n");
    for (k, v) in &report.parameters {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "\n### Headline\n");
    let _ = writeln!(md, "Ratios are Bellhop / peer; \"ahead\" means Bellhop is better on that figure (lower latency, memory and CPU; higher rates). The ceiling is the benchmark's own minimal fan-out server (pre-framed bytes written to every subscriber with vectored writes, nothing else): it runs the fan-out rows only, and Bellhop / ceiling is the fraction of this machine's fan-out limit Bellhop reaches.\n");
    let _ = writeln!(
        md,
        "| workload | figure | Bellhop | NATS | Socket.IO | ceiling | Bellhop / NATS | Bellhop / Socket.IO | Bellhop / ceiling |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for row in rows() {
        let vals: Vec<Option<f64>> = ORDER
            .iter()
            .map(|s| get(report, *s).and_then(|r| (row.value)(r)))
            .collect();
        let cell = |v: Option<f64>| v.map_or("—".to_owned(), row.format);
        let rat = |peer: Option<f64>| match (vals[0], peer) {
            (Some(b), Some(p)) => ratio(b, p, row.better),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.metric,
            cell(vals[0]),
            cell(vals[1]),
            cell(vals[2]),
            cell(vals[3]),
            rat(vals[1]),
            rat(vals[2]),
            rat(vals[3])
        );
    }

    let _ = writeln!(
        md,
        "\n### idle\n\n![server RSS over connections](bench/idle-rss.svg)\n"
    );
    let _ = writeln!(md, "| system | connections | connect time | connects/s | RSS before | RSS after | per connection | errors |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for s in ORDER {
        if let Some(i) = get(report, s).and_then(|r| r.idle.as_ref()) {
            let _ = writeln!(
                md,
                "| {} | {}/{} | {:.1} s | {} | {:.1} MiB | {:.1} MiB | {} | {} |",
                s.label(),
                i.connected,
                i.connections,
                i.connect_seconds,
                per_s(i.connects_per_second),
                i.rss_before as f64 / 1048576.0,
                i.rss_after as f64 / 1048576.0,
                kib(i.rss_per_connection),
                i.errors
            );
        }
    }

    let _ = writeln!(
        md,
        "\n### fanout\n\n![p99 latency over deliveries per second](bench/fanout-latency.svg)\n"
    );
    let _ = writeln!(md, "| system | subscribers | publishes/s | deliveries/s | p50 | p99 | p99.9 | server CPU (cores) | CPU per delivery | lost | dup | refused |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in ORDER {
        if let Some(f) = get(report, s).and_then(|r| r.fanout.as_ref()) {
            for st in &f.steps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    s.label(),
                    f.connected,
                    step_cells(st),
                    cpu_per_delivery(st).map_or("—".to_owned(), us),
                    f.losses.lost,
                    f.losses.duplicated,
                    f.losses.refused
                );
            }
        }
    }

    let _ = writeln!(md, "\n### chat\n");
    let _ = writeln!(md, "| system | topology | connections | messages/s | deliveries/s | p50 | p99 | p99.9 | server CPU | server RSS | lost | dup | reordered | errors |");
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in ORDER {
        let Some(r) = get(report, s) else { continue };
        for c in [&r.chat_single, &r.chat_cluster].into_iter().flatten() {
            for st in &c.steps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.0} MiB | {} | {} | {} | {} |",
                    s.label(),
                    c.topology,
                    c.connected,
                    step_cells(st),
                    st.server_rss as f64 / 1048576.0,
                    c.losses.lost,
                    c.losses.duplicated,
                    c.losses.out_of_order,
                    c.errors
                );
            }
        }
    }

    let _ = writeln!(md, "\n### storm\n");
    let _ = writeln!(md, "| system | clients | publishes/s | all reconnected | all caught up | not recovered | lost | dup | errors |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for s in ORDER {
        if let Some(st) = get(report, s).and_then(|r| r.storm.as_ref()) {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                s.label(),
                st.clients,
                st.publish_rate,
                st.reconnect_ms.map_or("never".to_owned(), ms),
                st.recovery_ms
                    .map_or("never (messages lost)".to_owned(), ms),
                st.not_recovered,
                st.losses.lost,
                st.losses.duplicated,
                st.errors
            );
        }
    }
    let failures: Vec<String> = ORDER
        .iter()
        .filter_map(|s| get(report, *s).map(|r| (s, r)))
        .flat_map(|(s, r)| {
            r.failures
                .iter()
                .map(move |f| format!("- {}: {f}", s.label()))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\n### Scenarios that failed to run\n");
        for f in failures {
            let _ = writeln!(md, "{f}");
        }
    }
    md
}

const BEGIN: &str =
    "<!-- BEGIN GENERATED BY make bench: everything up to the END marker is rewritten -->";
const END: &str = "<!-- END GENERATED -->";

/// Replaces the generated section of `doc` (or creates the file around it).
pub fn rewrite_doc(doc: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let generated = format!("{BEGIN}\n\n{section}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{generated}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("# Benchmarks\n\n{generated}\n"),
    };
    std::fs::write(doc, new)?;
    Ok(())
}

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
