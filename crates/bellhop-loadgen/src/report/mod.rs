//! The benchmark report: every result as JSON and a Markdown section with the headline table
//! (each figure the median of the runs with its spread, and as a ratio Bellhop / peer of the
//! medians), the delivery check (loss, duplicate and order counts summed over every run) and the
//! details of every run. The headline table's figures and cells are in `headline.rs`, the
//! arithmetic over runs in `runs.rs` and the SVG charts in `charts.rs`; nothing here measures or
//! times anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::scenarios::{ChatResult, FanoutResult, IdleResult, Losses, Step, StormResult};
use crate::systems::System;

mod charts;
mod headline;
mod runs;
pub use charts::charts;
use headline::headline;
use runs::{delivery_failed, summed_losses, Scenario};
pub use runs::{ratio_of, repeat_chat_rates, spread, Spread};

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

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// A ramp step's rate, throughput, latency and CPU cells: `publishes/s | deliveries/s | p50 |
/// p99 | p99.9 | server CPU`, the CPU with the broker's share where a cluster has one.
fn step_cells(st: &Step) -> String {
    let broker = st
        .broker_cores
        .map_or(String::new(), |b| format!(" (Redis {b:.2})"));
    format!(
        "{:.0} | {} | {} | {} | {} | {:.2}{broker}",
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

/// `fanout` at the publish rate `rate`.
fn fanout_at(r: &SystemResults, rate: f64) -> Option<&Step> {
    r.fanout.as_ref().and_then(|f| step_at(&f.steps, rate))
}

/// Server CPU time per delivery, µs.
fn cpu_per_delivery(s: &Step) -> Option<f64> {
    (s.deliveries_per_second > 0.0).then(|| s.server_cores * 1e6 / s.deliveries_per_second)
}

/// The part of [`cpu_per_delivery`] the broker behind a cluster spent, µs.
fn broker_cpu_per_delivery(s: &Step) -> Option<f64> {
    let broker = s.broker_cores?;
    (s.deliveries_per_second > 0.0).then(|| broker * 1e6 / s.deliveries_per_second)
}

fn us(v: f64) -> String {
    format!("{v:.1} µs")
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
                match st.recovery_ms {
                    Some(t) => ms(t),
                    None if s.resumes() => "never (messages lost)".to_owned(),
                    None => "never (no resume)".to_owned(),
                },
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

#[cfg(test)]
mod tests;
