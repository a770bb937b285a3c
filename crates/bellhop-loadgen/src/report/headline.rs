//! The headline table of the report: which figures it shows (`rows`), how each system's
//! figure is combined over the runs (median with its spread, or a sum), how a cell is written
//! and how Bellhop compares with each peer (the ratio of the medians). It reads results and
//! writes Markdown; the rest of the report is in `mod.rs`.

use std::fmt::Write as _;

use super::{
    all_runs, broker_cpu_per_delivery, cluster, count, cpu_per_delivery, fanout_at, kib, ms, per_s,
    ratio_of, single, spread, us, Report, Spread, SystemResults, CHAT_HEADLINE, ORDER,
};

/// Which way a figure is better.
#[derive(Clone, Copy, Debug)]
pub(super) enum Better {
    Lower,
    Higher,
}

/// How a headline figure is combined over the runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Combine {
    /// The median, with the spread.
    Median,
    /// The sum (counts of messages lost: one lost message in any run is one too many).
    Sum,
}

/// One figure of the headline table: where it is read from, how it is written and compared.
struct Row {
    workload: &'static str,
    metric: &'static str,
    better: Better,
    combine: Combine,
    value: fn(&SystemResults) -> Option<f64>,
    format: fn(f64) -> String,
}

/// One system's figure of a headline row over the runs.
pub(super) fn combine(values: &[f64], how: Combine) -> Option<Spread> {
    let s = spread(values)?;
    Some(match how {
        Combine::Median => s,
        Combine::Sum => {
            let sum = values.iter().filter(|v| !v.is_nan()).sum();
            Spread {
                median: sum,
                min: sum,
                max: sum,
                runs: s.runs,
            }
        }
    })
}

/// The rate the issue names.
const CHAT_TARGET: f64 = 10_000.0;

/// The fan-out step of the per-delivery CPU figure: 50,000 deliveries/s, which every system
/// carries here.
const FANOUT_CPU_RATE: f64 = 25.0;

fn rows() -> Vec<Row> {
    vec![
        Row {
            workload: "idle",
            metric: "server RSS per connection",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| r.idle.as_ref().map(|i| i.rss_per_connection),
            format: kib,
        },
        Row {
            workload: "idle",
            metric: "connects per second",
            better: Better::Higher,
            combine: Combine::Median,
            value: |r| r.idle.as_ref().map(|i| i.connects_per_second),
            format: per_s,
        },
        Row {
            workload: "fanout",
            metric: "deliveries/s with p99 < 50 ms",
            better: Better::Higher,
            combine: Combine::Median,
            value: |r| r.fanout.as_ref().map(|f| f.best_deliveries_under_50ms),
            format: per_s,
        },
        Row {
            workload: "fanout",
            metric: "most deliveries/s reached",
            better: Better::Higher,
            combine: Combine::Median,
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
            combine: Combine::Median,
            value: |r| r.fanout.as_ref().map(|f| f.settle_ms),
            format: ms,
        },
        Row {
            workload: "fanout, 50k deliveries/s",
            metric: "p99 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| fanout_at(r, FANOUT_CPU_RATE).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "fanout, 50k deliveries/s",
            metric: "server CPU per delivery",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| fanout_at(r, FANOUT_CPU_RATE).and_then(cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, 1 node, 2,500 msg/s",
            metric: "p50 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| single(r, CHAT_HEADLINE).map(|s| s.latency.p50_ms),
            format: ms,
        },
        Row {
            workload: "chat, 1 node, 2,500 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| single(r, CHAT_HEADLINE).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "chat, 1 node, 2,500 msg/s",
            metric: "server CPU per delivery",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| single(r, CHAT_HEADLINE).and_then(cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "p50 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| cluster(r, CHAT_HEADLINE).map(|s| s.latency.p50_ms),
            format: ms,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| cluster(r, CHAT_HEADLINE).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "server CPU per delivery",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| cluster(r, CHAT_HEADLINE).and_then(cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, cluster, 2,500 msg/s",
            metric: "of which Redis (the cluster's broker)",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| cluster(r, CHAT_HEADLINE).and_then(broker_cpu_per_delivery),
            format: us,
        },
        Row {
            workload: "chat, 1 node, 10,000 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| single(r, CHAT_TARGET).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "chat, cluster, 10,000 msg/s",
            metric: "p99 latency",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| cluster(r, CHAT_TARGET).map(|s| s.latency.p99_ms),
            format: ms,
        },
        Row {
            workload: "storm",
            metric: "all reconnected",
            better: Better::Lower,
            combine: Combine::Median,
            value: |r| r.storm.as_ref().and_then(|s| s.reconnect_ms),
            format: ms,
        },
        Row {
            workload: "storm",
            metric: "messages lost (sum over the runs)",
            better: Better::Lower,
            combine: Combine::Sum,
            value: |r| r.storm.as_ref().map(|s| s.losses.lost as f64),
            format: count,
        },
    ]
}

/// Bellhop's figure over the peer's, and whether that is Bellhop ahead.
pub(super) fn ratio(b: f64, peer: f64, better: Better) -> String {
    if peer == 0.0 && b == 0.0 {
        return "equal".to_owned();
    }
    let Some(r) = ratio_of(b, peer) else {
        return "—".to_owned();
    };
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

/// A headline cell: the median, then the spread when more than one run gave a value, and the
/// number of runs when it is fewer than the row's.
fn cell(s: Option<Spread>, format: fn(f64) -> String, how: Combine, row_runs: usize) -> String {
    let Some(s) = s else {
        return "—".to_owned();
    };
    let mut text = format(s.median);
    if how == Combine::Median && s.runs > 1 {
        let (lo, hi) = (format(s.min), format(s.max));
        // "31–36 ms" rather than "31 ms–36 ms" when both carry the same unit.
        let lo = match (lo.rsplit_once(' '), hi.rsplit_once(' ')) {
            (Some((l, lu)), Some((_, hu))) if lu == hu => l.to_owned(),
            _ => lo,
        };
        let _ = write!(text, " ({lo}–{hi})");
    }
    if s.runs < row_runs {
        let _ = write!(text, ", {} of {row_runs} runs", s.runs);
    }
    text
}

/// The headline table: one row per figure, each system's median over the runs with the spread,
/// and the ratios of the medians.
pub(super) fn headline(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "| workload | figure | runs | Bellhop | NATS | Socket.IO | ceiling | Bellhop / NATS | Bellhop / Socket.IO | Bellhop / ceiling |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    let per_system: Vec<Vec<&SystemResults>> = ORDER.iter().map(|s| all_runs(report, *s)).collect();
    for row in rows() {
        let vals: Vec<Option<Spread>> = per_system
            .iter()
            .map(|runs| {
                let v: Vec<f64> = runs.iter().filter_map(|r| (row.value)(r)).collect();
                combine(&v, row.combine)
            })
            .collect();
        let row_runs = vals.iter().flatten().map(|s| s.runs).max().unwrap_or(0);
        let c = |v: Option<Spread>| cell(v, row.format, row.combine, row_runs);
        let rat = |peer: Option<Spread>| match (vals[0], peer) {
            (Some(b), Some(p)) => ratio(b.median, p.median, row.better),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.metric,
            if row_runs == 0 {
                "—".to_owned()
            } else {
                row_runs.to_string()
            },
            c(vals[0]),
            c(vals[1]),
            c(vals[2]),
            c(vals[3]),
            rat(vals[1]),
            rat(vals[2]),
            rat(vals[3])
        );
    }
}
