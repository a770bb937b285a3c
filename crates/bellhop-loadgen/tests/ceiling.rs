//! The ceiling server against the load generator, on real sockets in this process: the fan-out
//! it reports as this machine's limit must deliver every message exactly once, or the ratio
//! Bellhop / ceiling would compare against a server that cheats. Small sizes; the figures
//! belong to `make bench`.

use std::time::Duration;

use bellhop_loadgen::ceiling::Ceiling;
use bellhop_loadgen::scenarios::{self, Target};
use bellhop_loadgen::stats::ProcSet;
use bellhop_loadgen::systems::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_against_the_ceiling_loses_and_duplicates_nothing() {
    let ceiling = Ceiling::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("the ceiling server binds");
    let target = Target {
        system: System::Ceiling,
        urls: vec![format!("ws://{}/ws", ceiling.local_addr())],
        procs: ProcSet {
            pids: vec![i32::try_from(std::process::id()).expect("pid")],
            broker: Vec::new(),
        },
        secret: String::new(),
        topology: "test".to_owned(),
    };
    let subscribers = 50;
    let r = scenarios::fanout(
        &target,
        subscribers,
        &[100.0, 200.0],
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r.connected, subscribers as u64, "{:?}", r.error_samples);
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.steps.len(), 2, "{r:?}");
    for step in &r.steps {
        // Every publish reaches all 50 subscribers.
        assert!(step.publish_rate > 50.0, "{step:?}");
        assert!(
            step.deliveries_per_second > 25.0 * step.publish_rate,
            "{step:?}"
        );
        assert!(step.latency.count > 0, "{step:?}");
    }
    assert_eq!(r.losses.lost, 0, "{r:?}");
    assert_eq!(r.losses.duplicated, 0, "{r:?}");
    assert_eq!(r.losses.out_of_order, 0, "{r:?}");
    assert_eq!(r.losses.refused, 0, "{r:?}");
}
