//! The arithmetic over runs: a figure's median and spread, the ratio of two medians, and the
//! loss counts summed over every run. Plain functions over numbers (tested in `tests.rs`).

use serde::Serialize;

use super::{SystemResults, CHAT_HEADLINE};
use crate::scenarios::Losses;

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
pub(super) fn add_losses(total: Losses, l: &Losses) -> Losses {
    Losses {
        lost: total.lost + l.lost,
        duplicated: total.duplicated + l.duplicated,
        out_of_order: total.out_of_order + l.out_of_order,
        refused: total.refused + l.refused,
    }
}

/// The losses one run of one system counted in `scenario` (`None` when it did not run it;
/// `idle` counts no messages).
pub(super) fn scenario_losses(r: &SystemResults, scenario: Scenario) -> Option<Losses> {
    match scenario {
        Scenario::Fanout => r.fanout.as_ref().map(|f| f.losses),
        Scenario::ChatSingle => r.chat_single.as_ref().map(|c| c.losses),
        Scenario::ChatCluster => r.chat_cluster.as_ref().map(|c| c.losses),
        Scenario::Storm => r.storm.as_ref().map(|s| s.losses),
    }
}

/// The scenarios that count messages, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scenario {
    Fanout,
    ChatSingle,
    ChatCluster,
    Storm,
}

impl Scenario {
    pub(super) const COUNTED: [Scenario; 4] = [
        Scenario::Fanout,
        Scenario::ChatSingle,
        Scenario::ChatCluster,
        Scenario::Storm,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::ChatSingle => "chat, 1 node",
            Scenario::ChatCluster => "chat, cluster",
            Scenario::Storm => "storm",
        }
    }
}

/// The losses of `scenario` summed over `runs`, and how many runs counted them.
pub(super) fn summed_losses(runs: &[&SystemResults], scenario: Scenario) -> (Losses, usize) {
    runs.iter()
        .filter_map(|r| scenario_losses(r, scenario))
        .fold((Losses::default(), 0), |(t, n), l| {
            (add_losses(t, &l), n + 1)
        })
}

/// Whether `l` has a message lost, duplicated or out of order (refusals are not failures: a
/// refused publish is never stored).
pub(super) fn delivery_failed(l: &Losses) -> bool {
    l.lost + l.duplicated + l.out_of_order > 0
}
