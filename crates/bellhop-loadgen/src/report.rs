//! The benchmark report: every result as JSON, a Markdown section with the headline table
//! (each figure the median of the runs with its spread, and as a ratio Bellhop / peer of the
//! medians), the delivery check (loss, duplicate and order counts summed over every run), the
//! details of every run, and SVG charts drawn with plotters.
//!
//! The arithmetic (median, spread, ratio, sums) is plain functions over numbers, tested here;
//! nothing in this module measures or times anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::scenarios::{ChatResult, FanoutResult, IdleResult, Losses, Step, StormResult};
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
    /// Wall time of each run, seconds.
    pub run_seconds: Vec<f64>,
    /// Results of each run, per system. The first run has every scenario and step; the later
    /// ones repeat what the headline reads (see [`repeat_chat_rates`]).
    pub runs: Vec<BTreeMap<String, SystemResults>>,
}

/// The median of one figure over the runs that produced it, and its spread.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// The median (the mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many runs produced a value.
    pub runs: usize,
}

/// Median and spread of `values`; `None` when there are none. NaN values are left out (a
/// figure that could not be computed is not a measurement).
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        runs: n,
    })
}

/// `b / peer`, the ratio the headline gives; `None` when the peer's figure is 0 and Bellhop's is
/// not (no ratio to give).
pub fn ratio_of(b: f64, peer: f64) -> Option<f64> {
    (peer != 0.0).then(|| b / peer)
}

/// The chat rates a repeat run measures: the headline's rate when the ramp has it, else the
/// whole ramp (a headline without its rate reads nothing from a repeat otherwise).
pub fn repeat_chat_rates(rates: &[f64]) -> Vec<f64> {
    let headline: Vec<f64> = rates
        .iter()
        .copied()
        .filter(|r| (r - CHAT_HEADLINE).abs() < 0.5)
        .collect();
    if headline.is_empty() {
        rates.to_vec()
    } else {
        headline
    }
}

/// `total` plus `l`.
fn add_losses(total: Losses, l: &Losses) -> Losses {
    Losses {
        lost: total.lost + l.lost,
        duplicated: total.duplicated + l.duplicated,
        out_of_order: total.out_of_order + l.out_of_order,
        refused: total.refused + l.refused,
    }
}

/// The losses one run of one system counted in `scenario` (`None` when it did not run it;
/// `idle` counts no messages).
fn scenario_losses(r: &SystemResults, scenario: Scenario) -> Option<Losses> {
    match scenario {
        Scenario::Fanout => r.fanout.as_ref().map(|f| f.losses),
        Scenario::ChatSingle => r.chat_single.as_ref().map(|c| c.losses),
        Scenario::ChatCluster => r.chat_cluster.as_ref().map(|c| c.losses),
        Scenario::Storm => r.storm.as_ref().map(|s| s.losses),
    }
}

/// The scenarios that count messages, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Fanout,
    ChatSingle,
    ChatCluster,
    Storm,
}

impl Scenario {
    const COUNTED: [Scenario; 4] = [
        Scenario::Fanout,
        Scenario::ChatSingle,
        Scenario::ChatCluster,
        Scenario::Storm,
    ];

    fn label(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::ChatSingle => "chat, 1 node",
            Scenario::ChatCluster => "chat, cluster",
            Scenario::Storm => "storm",
        }
    }
}

/// The losses of `scenario` summed over `runs`, and how many runs counted them.
fn summed_losses(runs: &[&SystemResults], scenario: Scenario) -> (Losses, usize) {
    runs.iter()
        .filter_map(|r| scenario_losses(r, scenario))
        .fold((Losses::default(), 0), |(t, n), l| {
            (add_losses(t, &l), n + 1)
        })
}

/// Whether `l` has a message lost, duplicated or out of order (refusals are not failures: a
/// refused publish is never stored).
fn delivery_failed(l: &Losses) -> bool {
    l.lost + l.duplicated + l.out_of_order > 0
}

/// Which way a figure is better.
#[derive(Clone, Copy, Debug)]
enum Better {
    Lower,
    Higher,
}

/// How a headline figure is combined over the runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Combine {
    /// The median, with the spread.
    Median,
    /// The sum (counts of messages lost: one lost message in any run is one too many).
    Sum,
}

struct Row {
    workload: &'static str,
    metric: &'static str,
    better: Better,
    combine: Combine,
    value: fn(&SystemResults) -> Option<f64>,
    format: fn(f64) -> String,
}

/// One system's figure of a headline row over the runs.
fn combine(values: &[f64], how: Combine) -> Option<Spread> {
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
pub const CHAT_HEADLINE: f64 = 2500.0;
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
fn ratio(b: f64, peer: f64, better: Better) -> String {
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

const ORDER: [System; 4] = [
    System::Bellhop,
    System::Nats,
    System::Socketio,
    System::Ceiling,
];

/// `s`'s results in every run that has them.
fn all_runs(report: &Report, s: System) -> Vec<&SystemResults> {
    report
        .runs
        .iter()
        .filter_map(|run| run.get(s.label()))
        .collect()
}

/// `s`'s results in the first run (the one with every scenario and step).
fn get(report: &Report, s: System) -> Option<&SystemResults> {
    report.runs.first().and_then(|run| run.get(s.label()))
}

fn minutes(seconds: f64) -> String {
    format!("{:.1} min", seconds / 60.0)
}

/// The headline table: one row per figure, each system's median over the runs with the spread,
/// and the ratios of the medians.
fn headline(md: &mut String, report: &Report) {
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

/// Loss, duplicate and order counts of every system and scenario, summed over every run; a
/// loud line first when Bellhop's are not all 0.
fn delivery_check(md: &mut String, report: &Report) {
    let bellhop = all_runs(report, System::Bellhop);
    let failed: Vec<(Scenario, Losses)> = Scenario::COUNTED
        .iter()
        .map(|sc| (*sc, summed_losses(&bellhop, *sc).0))
        .filter(|(_, l)| delivery_failed(l))
        .collect();
    if failed.is_empty() {
        if !bellhop.is_empty() {
            let _ = writeln!(
                md,
                "**Delivery check: Bellhop lost, duplicated and reordered 0 messages in every scenario of every run.**\n"
            );
        }
    } else {
        let _ = writeln!(
            md,
            "> **⚠ DELIVERY FAILURE — Bellhop must lose, duplicate and reorder nothing, and it did (summed over {} runs):**",
            report.runs.len()
        );
        for (sc, l) in &failed {
            let _ = writeln!(
                md,
                "> - **{}: {} lost, {} duplicated, {} out of order**",
                sc.label(),
                l.lost,
                l.duplicated,
                l.out_of_order
            );
        }
        let _ = writeln!(
            md,
            "> \n> These figures are not a valid result until that is found and fixed.\n"
        );
    }
}

/// Bellhop's delivery failures summed over every run, one line per scenario (empty when none):
/// what the command prints on its way out.
pub fn delivery_failures(report: &Report) -> Vec<String> {
    let bellhop = all_runs(report, System::Bellhop);
    Scenario::COUNTED
        .iter()
        .filter_map(|sc| {
            let (l, n) = summed_losses(&bellhop, *sc);
            delivery_failed(&l).then(|| {
                format!(
                    "Bellhop {}: {} lost, {} duplicated, {} out of order over {n} runs",
                    sc.label(),
                    l.lost,
                    l.duplicated,
                    l.out_of_order
                )
            })
        })
        .collect()
}

/// The table of summed loss counts.
fn delivery_table(md: &mut String, report: &Report) {
    let _ = writeln!(
        md,
        "\n### Delivery check (summed over every run)\n\nMessages lost, duplicated and received out of order, counted per subscriber by the load generator and summed over every run of each scenario; refused publishes (answered with an error naming them, never stored) for Bellhop. Bellhop's lost, dup and reordered must be 0 everywhere.\n"
    );
    let _ = writeln!(
        md,
        "| system | scenario | runs | lost | dup | reordered | refused |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for s in ORDER {
        let runs = all_runs(report, s);
        for sc in Scenario::COUNTED {
            let (l, n) = summed_losses(&runs, sc);
            if n == 0 {
                continue;
            }
            let flag = if s == System::Bellhop && delivery_failed(&l) {
                " **⚠ must be 0**"
            } else {
                ""
            };
            let _ = writeln!(
                md,
                "| {} | {} | {n} | {} | {} | {} | {} |{flag}",
                s.label(),
                sc.label(),
                l.lost,
                l.duplicated,
                l.out_of_order,
                l.refused
            );
        }
    }
}

/// The generated Markdown section.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run of {} on commit `{}`.\n",
        report.date, report.commit
    );
    delivery_check(&mut md, report);
    let _ = writeln!(md, "Command: `{}`\n", report.command);
    let total: f64 = report.run_seconds.iter().sum();
    let per_run: Vec<String> = report.run_seconds.iter().map(|s| minutes(*s)).collect();
    let _ = writeln!(
        md,
        "Runs: {}, wall time {} ({}); what each run measured is under Parameters, `runs`.\n",
        report.runs.len(),
        minutes(total),
        per_run.join(" + ")
    );
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
    let _ = writeln!(md, "Each figure is the median over the runs in the `runs` column, with the spread (lowest–highest) in parentheses; the messages-lost row is the sum over the runs. Ratios are of the medians, Bellhop / peer; \"ahead\" means Bellhop is better on that figure (lower latency, memory and CPU; higher rates). The ceiling is the benchmark's own minimal fan-out server (pre-framed bytes written to every subscriber with vectored writes, nothing else): it runs the fan-out rows only, and Bellhop / ceiling is the fraction of this machine's fan-out limit Bellhop reaches.\n");
    headline(&mut md, report);
    delivery_table(&mut md, report);

    let _ = writeln!(
        md,
        "\n### idle\n\n![server RSS over connections (run 1)](bench/idle-rss.svg)\n"
    );
    let _ = writeln!(md, "| system | run | connections | connect time | connects/s | RSS before | RSS after | per connection | errors |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for s in ORDER {
        for (run, r) in all_runs(report, s).into_iter().enumerate() {
            let Some(i) = r.idle.as_ref() else { continue };
            let _ = writeln!(
                md,
                "| {} | {} | {}/{} | {:.1} s | {} | {:.1} MiB | {:.1} MiB | {} | {} |",
                s.label(),
                run + 1,
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
        "\n### fanout\n\n![p99 latency over deliveries per second (run 1)](bench/fanout-latency.svg)\n"
    );
    let _ = writeln!(md, "| system | run | subscribers | publishes/s | deliveries/s | p50 | p99 | p99.9 | server CPU (cores) | CPU per delivery | lost | dup | refused |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in ORDER {
        for (run, r) in all_runs(report, s).into_iter().enumerate() {
            let Some(f) = r.fanout.as_ref() else { continue };
            for st in &f.steps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    s.label(),
                    run + 1,
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
    let _ = writeln!(md, "| system | run | topology | connections | messages/s | deliveries/s | p50 | p99 | p99.9 | server CPU | server RSS | lost | dup | reordered | errors |");
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in ORDER {
        for (run, r) in all_runs(report, s).into_iter().enumerate() {
            for c in [&r.chat_single, &r.chat_cluster].into_iter().flatten() {
                for st in &c.steps {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {:.0} MiB | {} | {} | {} | {} |",
                        s.label(),
                        run + 1,
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
    }

    let _ = writeln!(md, "\n### storm\n");
    let _ = writeln!(md, "| system | run | clients | publishes/s | all reconnected | all caught up | not recovered | lost | dup | errors |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for s in ORDER {
        for (run, r) in all_runs(report, s).into_iter().enumerate() {
            let Some(st) = r.storm.as_ref() else { continue };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                s.label(),
                run + 1,
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
        .flat_map(|s| {
            all_runs(report, *s)
                .into_iter()
                .enumerate()
                .flat_map(move |(run, r)| {
                    r.failures
                        .iter()
                        .map(move |f| format!("- {}, run {}: {f}", s.label(), run + 1))
                })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn report(runs: Vec<BTreeMap<String, SystemResults>>) -> Report {
        Report {
            date: "2026-12-01T00:00:00Z".into(),
            commit: "test".into(),
            machine: Vec::new(),
            versions: BTreeMap::new(),
            command: "bellhop-loadgen bench".into(),
            parameters: BTreeMap::new(),
            run_seconds: vec![60.0; runs.len()],
            runs,
        }
    }

    fn idle(rss_per_connection: f64) -> IdleResult {
        IdleResult {
            connections: 10,
            connected: 10,
            connect_seconds: 1.0,
            connects_per_second: 10.0,
            rss_before: 0,
            rss_after: 0,
            rss_per_connection,
            rss_curve: Vec::new(),
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    fn storm(lost: u64, reconnect_ms: f64) -> StormResult {
        StormResult {
            clients: 10,
            publish_rate: 1.0,
            reconnect_ms: Some(reconnect_ms),
            recovery_ms: Some(reconnect_ms),
            not_recovered: 0,
            losses: Losses {
                lost,
                ..Losses::default()
            },
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    fn chat(p50_ms: f64, duplicated: u64) -> ChatResult {
        ChatResult {
            topology: "1 node".into(),
            rooms: 1,
            members: 4,
            connected: 4,
            settle_ms: 0.0,
            steps: vec![Step {
                target_publish_rate: CHAT_HEADLINE,
                publish_rate: CHAT_HEADLINE,
                deliveries_per_second: 4.0 * CHAT_HEADLINE,
                latency: Percentiles {
                    count: 1,
                    p50_ms,
                    ..Percentiles::default()
                },
                server_cores: 0.5,
                server_rss: 0,
            }],
            losses: Losses {
                duplicated,
                ..Losses::default()
            },
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    /// One run: Bellhop and NATS with these idle figures (bytes per connection).
    fn idle_run(bellhop: f64, nats: f64) -> BTreeMap<String, SystemResults> {
        let mut run = BTreeMap::new();
        for (s, v) in [(System::Bellhop, bellhop), (System::Nats, nats)] {
            run.insert(
                s.label().to_owned(),
                SystemResults {
                    idle: Some(idle(v)),
                    ..SystemResults::default()
                },
            );
        }
        run
    }

    /// The cells of the headline row `metric`.
    fn headline_row(md: &str, metric: &str) -> Vec<String> {
        let line = md
            .lines()
            .find(|l| l.split('|').nth(2).map(str::trim) == Some(metric))
            .unwrap_or_else(|| panic!("no headline row {metric:?} in\n{md}"));
        line.split('|').map(|c| c.trim().to_owned()).collect()
    }

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        let s = spread(&[9.0, 1.0, 4.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 4.0,
                min: 1.0,
                max: 9.0,
                runs: 3
            }
        );
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let s = spread(&[10.0, 2.0, 4.0, 100.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (7.0, 2.0, 100.0, 4));
        let s = spread(&[3.0, 5.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (4.0, 3.0, 5.0));
    }

    #[test]
    fn one_value_is_its_own_median_and_none_is_no_figure() {
        let s = spread(&[2.5]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.5, 2.5, 2.5, 1));
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[f64::NAN]), None);
        let s = spread(&[f64::NAN, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.runs), (2.0, 2));
    }

    #[test]
    fn a_sum_row_adds_the_runs() {
        let s = combine(&[0.0, 4.0, 1.0], Combine::Sum).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (5.0, 5.0, 5.0, 3));
    }

    #[test]
    fn ratios_are_of_the_medians() {
        assert_eq!(ratio_of(3.0, 4.0), Some(0.75));
        assert_eq!(ratio_of(3.0, 0.0), None);
        assert_eq!(ratio(1.0, 2.0, Better::Lower), "0.50 (ahead)");
        assert_eq!(ratio(1.0, 2.0, Better::Higher), "0.50 (behind)");
        assert_eq!(ratio(1.02, 1.0, Better::Lower), "1.02 (≈)");
        assert_eq!(ratio(0.0, 0.0, Better::Lower), "equal");
        assert_eq!(ratio(1.0, 0.0, Better::Lower), "—");

        // Bellhop 10, 20, 40 KiB; NATS 10, 40, 80 KiB: medians 20 and 40.
        let runs = vec![
            idle_run(10.0 * 1024.0, 10.0 * 1024.0),
            idle_run(20.0 * 1024.0, 40.0 * 1024.0),
            idle_run(40.0 * 1024.0, 80.0 * 1024.0),
        ];
        let md = markdown(&report(runs));
        let row = headline_row(&md, "server RSS per connection");
        assert_eq!(row[3], "3", "runs column");
        assert_eq!(row[4], "20.0 KiB (10.0–40.0 KiB)");
        assert_eq!(row[5], "40.0 KiB (10.0–80.0 KiB)");
        assert_eq!(row[8], "0.50 (ahead)");

        // NATS 10, 15, 80 KiB: the per-run ratios 1.0, 1.33, 0.5 have the median 1.0; the
        // headline gives the ratio of the medians, 20 / 15.
        let runs = vec![
            idle_run(10.0 * 1024.0, 10.0 * 1024.0),
            idle_run(20.0 * 1024.0, 15.0 * 1024.0),
            idle_run(40.0 * 1024.0, 80.0 * 1024.0),
        ];
        let row = headline_row(&markdown(&report(runs)), "server RSS per connection");
        assert_eq!(
            row[8], "1.33 (behind)",
            "the ratio of the medians, not of the runs"
        );
    }

    #[test]
    fn a_system_with_fewer_runs_says_so_and_a_missing_one_is_a_dash() {
        let mut short = idle_run(10.0 * 1024.0, 20.0 * 1024.0);
        short.remove(System::Nats.label());
        let runs = vec![idle_run(10.0 * 1024.0, 20.0 * 1024.0), short];
        let row = headline_row(&markdown(&report(runs)), "server RSS per connection");
        assert_eq!(row[3], "2");
        assert_eq!(row[4], "10.0 KiB (10.0–10.0 KiB)");
        assert_eq!(row[5], "20.0 KiB, 1 of 2 runs");
        assert_eq!(row[6], "—", "Socket.IO did not run");
        assert_eq!(row[8], "0.50 (ahead)");
    }

    #[test]
    fn repeat_runs_measure_chat_at_the_headline_rate_only() {
        assert_eq!(
            repeat_chat_rates(&[1000.0, 2500.0, 5000.0, 10_000.0]),
            vec![2500.0]
        );
        assert_eq!(repeat_chat_rates(&[1000.0, 5000.0]), vec![1000.0, 5000.0]);
        assert_eq!(repeat_chat_rates(&[]), Vec::<f64>::new());
    }

    #[test]
    fn losses_are_summed_over_runs_and_bellhops_are_flagged() {
        let run = |lost: u64, dup: u64| {
            let mut run = BTreeMap::new();
            run.insert(
                System::Bellhop.label().to_owned(),
                SystemResults {
                    storm: Some(storm(lost, 100.0)),
                    chat_single: Some(chat(1.0, dup)),
                    ..SystemResults::default()
                },
            );
            run.insert(
                System::Nats.label().to_owned(),
                SystemResults {
                    storm: Some(storm(1000, 100.0)),
                    ..SystemResults::default()
                },
            );
            run
        };

        let lost_row = |md: &str| headline_row(md, "messages lost (sum over the runs)");

        // Every Bellhop count 0 (NATS losing is its design, not a failure): no flag.
        let clean = report(vec![run(0, 0), run(0, 0)]);
        assert!(delivery_failures(&clean).is_empty());
        let md = markdown(&clean);
        assert!(!md.contains("DELIVERY FAILURE"), "{md}");
        assert!(md.contains("Bellhop lost, duplicated and reordered 0 messages"));
        assert!(
            md.contains("| NATS | storm | 2 | 2000 | 0 | 0 | 0 |"),
            "{md}"
        );
        assert_eq!(lost_row(&md)[5], "2000");

        // Bellhop lost 3 in run 2 and duplicated 1 in run 3: summed, flagged at the top.
        let bad = report(vec![run(0, 0), run(3, 0), run(0, 1)]);
        assert_eq!(
            delivery_failures(&bad),
            vec![
                "Bellhop chat, 1 node: 0 lost, 1 duplicated, 0 out of order over 3 runs",
                "Bellhop storm: 3 lost, 0 duplicated, 0 out of order over 3 runs",
            ]
        );
        let md = markdown(&bad);
        let flag = md.find("DELIVERY FAILURE").expect("flagged");
        let table = md.find("### Headline").expect("headline");
        assert!(flag < table, "the flag comes before the figures");
        let flagged_row = "| Bellhop | storm | 3 | 3 | 0 | 0 | 0 | **⚠ must be 0**";
        assert!(md.contains(flagged_row), "{md}");
        assert_eq!(lost_row(&md)[4], "3");
    }
}
