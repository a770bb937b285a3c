//! The report's arithmetic and tables: medians, spreads, ratios, sums and the delivery flag.

use super::headline::{combine, ratio, Better, Combine};
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
            broker_cores: None,
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

#[test]
fn a_cluster_step_reports_its_brokers_share_of_the_cpu() {
    let step = Step {
        deliveries_per_second: 10_000.0,
        server_cores: 1.0,
        broker_cores: Some(0.25),
        ..Step::default()
    };
    assert_eq!(cpu_per_delivery(&step), Some(100.0));
    assert_eq!(broker_cpu_per_delivery(&step), Some(25.0));
    assert!(step_cells(&step).ends_with("| 1.00 (Redis 0.25)"));
    let alone = Step {
        broker_cores: None,
        ..step
    };
    assert_eq!(broker_cpu_per_delivery(&alone), None);
    assert!(step_cells(&alone).ends_with("| 1.00"));
}
