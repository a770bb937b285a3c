#![allow(clippy::print_stdout)] // the result is the program's output
//! `bellhop-loadgen`: load generator and side-by-side benchmark. See docs/BENCHMARKS.md.
//!
//! - `bellhop-loadgen bench` starts each system on free loopback ports, runs every scenario
//!   against it, repeats the headline's measurements (`--runs`), and writes
//!   `docs/bench/results.json`, the charts and the generated part of `docs/BENCHMARKS.md` (what
//!   `make bench` runs).
//! - `bellhop-loadgen run <scenario> --system bellhop --url ws://...` runs one scenario against
//!   servers that are already running and prints its result as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bellhop_loadgen::report::{self, Report, SystemResults};
use bellhop_loadgen::scenarios::{self, Target};
use bellhop_loadgen::servers::{self, Binaries, Topology};
use bellhop_loadgen::stats::ProcSet;
use bellhop_loadgen::systems::System;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "bellhop-loadgen",
    version,
    about = "Bellhop's load generator and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start each system, run every scenario, write the report.
    Bench(BenchArgs),
    /// Run one scenario against running servers; print the result as JSON.
    Run(RunArgs),
    /// Serve the ceiling server (system `ceiling`): Bellhop's wire subset, fan-out of
    /// pre-framed bytes with vectored writes and nothing else, to find this machine's limit.
    CeilingServer(CeilingArgs),
}

#[derive(Args, Debug)]
struct CeilingArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:3101")]
    listen: std::net::SocketAddr,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Idle,
    Fanout,
    Chat,
    Storm,
}

#[derive(Args, Debug, Clone)]
struct Params {
    /// idle: connections.
    #[arg(long, default_value_t = 19_000)]
    idle_connections: usize,
    /// fanout: subscribers of the one channel.
    #[arg(long, default_value_t = 2_000)]
    fanout_subscribers: usize,
    /// fanout: publish rates of the ramp, messages per second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5,10,25,50,100,200,400,800,1600"
    )]
    fanout_rates: Vec<f64>,
    /// fanout: seconds measured per step (after one second of warm-up).
    #[arg(long, default_value_t = 4)]
    fanout_step_seconds: u64,
    /// chat: rooms.
    #[arg(long, default_value_t = 4_000)]
    chat_rooms: usize,
    /// chat: members per room, each a connection that publishes.
    #[arg(long, default_value_t = 4)]
    chat_members: usize,
    /// chat: total messages per second, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
    chat_rates: Vec<f64>,
    /// chat: seconds measured per step (after a warm-up).
    #[arg(long, default_value_t = 5)]
    chat_seconds: u64,
    /// storm: clients that drop and reconnect at once.
    #[arg(long, default_value_t = 10_000)]
    storm_clients: usize,
    /// storm: messages per second published while they reconnect.
    #[arg(long, default_value_t = 1_000.0)]
    storm_rate: f64,
}

impl Params {
    /// What run `run` (from 0) measures: the first every step, the later ones only the
    /// headline's chat rate.
    fn for_run(&self, run: u32) -> Params {
        let mut p = self.clone();
        if run > 0 {
            p.chat_rates = report::repeat_chat_rates(&self.chat_rates);
        }
        p
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(
            "idle".into(),
            format!(
                "{} connections, each subscribed to its user: channel and a 4-member room",
                self.idle_connections
            ),
        );
        m.insert(
            "fanout".into(),
            format!(
                "{} subscribers of one channel; one publisher ramping {:?} messages/s, {} s per step after 1 s warm-up; ramp stops when p99 > 1 s or deliveries fall under half the offered load",
                self.fanout_subscribers, self.fanout_rates, self.fanout_step_seconds
            ),
        );
        m.insert(
            "chat".into(),
            format!(
                "{} rooms x {} members, every member publishing; {:?} messages/s in all, {} s per step after a warm-up",
                self.chat_rooms, self.chat_members, self.chat_rates, self.chat_seconds
            ),
        );
        m.insert(
            "storm".into(),
            format!(
                "{} clients (4-member rooms + user: channel) all drop at once and reconnect while {} messages/s are published",
                self.storm_clients, self.storm_rate
            ),
        );
        m.insert(
            "payload".into(),
            format!(
                "JSON object of about {} bytes (timestamp, sequence, publisher, padding)",
                scenarios::PAD + 40
            ),
        );
        m
    }
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Systems to measure (`ceiling` runs the fan-out scenario only).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bellhop,nats,socketio,ceiling"
    )]
    systems: Vec<System>,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "idle,fanout,chat,storm"
    )]
    scenarios: Vec<Scenario>,
    /// The bellhop binary.
    #[arg(long, default_value = "target/release/bellhop")]
    bellhop: PathBuf,
    /// The Socket.IO peer (server.js and node_modules).
    #[arg(long, default_value = "bench/peers/socketio")]
    socketio_dir: PathBuf,
    /// The report to rewrite (its generated section).
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    doc: PathBuf,
    /// Where results.json and the charts go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Scratch directory for server logs and configuration.
    #[arg(long, default_value = "target/bench")]
    scratch: PathBuf,
    /// Runs of the headline's measurements, reported as medians with their spread. Run 1 is
    /// every scenario and step; the later runs repeat only what the headline reads (idle,
    /// fanout and storm whole, chat at the headline's 2,500 messages/s only), with the systems
    /// taking turns in every run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    #[command(flatten)]
    params: Params,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Which scenario.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Which system the servers are.
    #[arg(long, value_enum, default_value = "bellhop")]
    system: System,
    /// WebSocket base URL of a node (repeat for several; clients are spread over them).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Server processes to sample for RSS and CPU (repeatable).
    #[arg(long = "pid")]
    pids: Vec<i32>,
    /// Bellhop's HS256 secret (JWT_SECRET of the nodes).
    #[arg(long, env = "JWT_SECRET", default_value = "")]
    secret: String,
    #[command(flatten)]
    params: Params,
}

/// Raises the open-file limit to the hard limit; returns it.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Connections one process can hold: the fd limit less room for everything else.
fn cap(wanted: usize, limit: u64) -> usize {
    let room = usize::try_from(limit.saturating_sub(400)).unwrap_or(usize::MAX);
    if wanted > room {
        tracing::warn!(
            "{wanted} connections asked for, but the open-file limit is {limit}: using {room}"
        );
    }
    wanted.min(room)
}

async fn run_scenario(
    scenario: Scenario,
    target: &Target,
    p: &Params,
    limit: u64,
    results: &mut SystemResults,
) -> anyhow::Result<()> {
    match scenario {
        Scenario::Idle => {
            results.idle = Some(scenarios::idle(target, cap(p.idle_connections, limit)).await);
        }
        Scenario::Fanout => {
            results.fanout = Some(
                scenarios::fanout(
                    target,
                    cap(p.fanout_subscribers, limit),
                    &p.fanout_rates,
                    Duration::from_secs(p.fanout_step_seconds),
                )
                .await,
            );
        }
        Scenario::Chat => {
            let rooms = cap(p.chat_rooms * p.chat_members, limit) / p.chat_members.max(1);
            let r = scenarios::chat(
                target,
                rooms,
                p.chat_members,
                &p.chat_rates,
                Duration::from_secs(p.chat_seconds),
            )
            .await;
            if target.urls.len() > 1 {
                results.chat_cluster = Some(r);
            } else {
                results.chat_single = Some(r);
            }
        }
        Scenario::Storm => {
            results.storm =
                Some(scenarios::storm(target, cap(p.storm_clients, limit), p.storm_rate).await);
        }
    }
    Ok(())
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not found".to_owned())
}

fn machine(limit: u64) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .next()
        .unwrap_or("")
        .replace("MemTotal:", "")
        .trim()
        .to_owned();
    vec![
        format!(
            "{} CPUs ({model}), shared by the servers and the load generator",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        format!("memory {mem}"),
        format!("kernel {}", command_output("uname", &["-sr"])),
        format!(
            "open-file limit {limit} per process (hard limit; it caps connections per process)"
        ),
        "everything on loopback (127.0.0.1; clients from 127.0.0.2 upwards)".to_owned(),
    ]
}

fn versions(args: &BenchArgs) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let bellhop = args.bellhop.to_string_lossy().to_string();
    v.insert("bellhop".into(), command_output(&bellhop, &["--version"]));
    v.insert(
        "nats-server".into(),
        command_output("nats-server", &["--version"]),
    );
    v.insert("node".into(), command_output("node", &["--version"]));
    let pkg = args
        .socketio_dir
        .join("node_modules/socket.io/package.json");
    let sio = std::fs::read_to_string(pkg)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|j| j["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "not installed".into());
    v.insert("socket.io".into(), sio);
    v.insert(
        "redis-server".into(),
        command_output("redis-server", &["--version"]),
    );
    v
}

async fn bench(args: BenchArgs, limit: u64) -> anyhow::Result<()> {
    let bins = Binaries {
        bellhop: args.bellhop.clone(),
        socketio_dir: args.socketio_dir.clone(),
        scratch: args.scratch.clone(),
    };
    let mut report = Report {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        commit: command_output("git", &["describe", "--always", "--dirty"]),
        machine: machine(limit),
        versions: versions(&args),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        parameters: args.params.describe(),
        run_seconds: Vec::new(),
        runs: Vec::new(),
    };
    let later = match args.runs {
        1 => None,
        2 => Some("run 2".to_owned()),
        n => Some(format!("runs 2 to {n}")),
    };
    let repeats = later.map_or_else(String::new, |later| {
        format!(
            "; {later}: idle, fanout and storm again, chat at {:?} messages/s only; the systems take turns in every run",
            report::repeat_chat_rates(&args.params.chat_rates)
        )
    });
    report.parameters.insert(
        "runs".into(),
        format!("{} (run 1: every scenario and step{repeats})", args.runs),
    );
    for run in 0..args.runs {
        let started = Instant::now();
        let params = args.params.for_run(run);
        let mut results = BTreeMap::new();
        for system in &args.systems {
            results.insert(
                system.label().to_owned(),
                bench_system(*system, run, &args, &params, &bins, limit).await?,
            );
        }
        report.runs.push(results);
        report.run_seconds.push(started.elapsed().as_secs_f64());
        eprintln!(
            "== run {} of {} took {:.1} min",
            run + 1,
            args.runs,
            started.elapsed().as_secs_f64() / 60.0
        );
        // After every run, so a long bench that fails later keeps what it measured.
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(
            args.out.join("results.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    report::charts(&report, &args.out)?;
    let section = report::markdown(&report);
    report::rewrite_doc(&args.doc, &section)?;
    println!("{section}");
    eprintln!(
        "wrote {}, {}/results.json and the charts ({:.1} min in all)",
        args.doc.display(),
        args.out.display(),
        report.run_seconds.iter().sum::<f64>() / 60.0
    );
    let failures = report::delivery_failures(&report);
    if !failures.is_empty() {
        eprintln!("\n!!! DELIVERY FAILURE: Bellhop must lose, duplicate and reorder nothing !!!");
        for f in &failures {
            eprintln!("!!! {f}");
        }
        eprintln!("!!! (flagged at the top of the report too)\n");
    }
    Ok(())
}

/// One run of every scenario of `args` against `system`, each on freshly started servers.
async fn bench_system(
    system: System,
    run: u32,
    args: &BenchArgs,
    params: &Params,
    bins: &Binaries,
    limit: u64,
) -> anyhow::Result<SystemResults> {
    let mut results = SystemResults::default();
    for scenario in &args.scenarios {
        if system == System::Ceiling && *scenario != Scenario::Fanout {
            // The ceiling is a fan-out limit: it has no history, resume or cluster.
            continue;
        }
        let topologies: &[Topology] = if *scenario == Scenario::Chat {
            &[Topology::Single, Topology::Cluster]
        } else {
            &[Topology::Single]
        };
        for topology in topologies {
            eprintln!(
                "== run {}/{}: {} {:?} ({:?})",
                run + 1,
                args.runs,
                system.label(),
                scenario,
                topology
            );
            let servers = match servers::start(system, *topology, bins).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("   could not start: {e:#}");
                    results
                        .failures
                        .push(format!("{scenario:?} {topology:?}: could not start: {e:#}"));
                    continue;
                }
            };
            if let Err(e) =
                run_scenario(*scenario, &servers.target, params, limit, &mut results).await
            {
                results
                    .failures
                    .push(format!("{scenario:?} {topology:?}: {e:#}"));
            }
            servers.stop().await;
        }
    }
    eprintln!(
        "{}",
        serde_json::to_string(&results)?
            .chars()
            .take(2000)
            .collect::<String>()
    );
    Ok(results)
}

async fn run(args: RunArgs, limit: u64) -> anyhow::Result<()> {
    let target = Target {
        system: args.system,
        topology: format!("{} node(s)", args.urls.len()),
        urls: args.urls,
        procs: ProcSet {
            pids: args.pids,
            broker: Vec::new(),
        },
        secret: args.secret,
    };
    let mut results = SystemResults::default();
    run_scenario(args.scenario, &target, &args.params, limit, &mut results).await?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let limit = raise_fd_limit();
    let _ = bellhop_loadgen::stats::epoch();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Bench(args) => bench(args, limit).await,
            Cmd::Run(args) => run(args, limit).await,
            Cmd::CeilingServer(args) => {
                let ceiling = bellhop_loadgen::ceiling::Ceiling::bind(args.listen).await?;
                eprintln!("ceiling server on ws://{}/ws", ceiling.local_addr());
                tokio::signal::ctrl_c().await?;
                Ok(())
            }
        }
    })
}
