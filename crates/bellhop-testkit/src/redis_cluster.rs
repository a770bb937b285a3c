//! A real Redis Cluster for tests: `masters` `redis-server --cluster-enabled yes` processes on
//! free loopback ports, joined by `redis-cli --cluster create` (no replicas), ready once every
//! node reports `cluster_state:ok` and every slot is covered. Nothing waits a fixed time: each
//! step waits for its event with a deadline.
//!
//! Creating a cluster takes a few seconds (`redis-cli` itself waits for the nodes to agree), so a
//! test binary shares one: [`RedisCluster::shared`] starts it on first use and it lives as long
//! as the test process. Tests keep apart by key prefix, as deployments sharing a cluster do.
//!
//! Every node runs under a small shell guard that kills it when the guard's standard input
//! closes, which happens when the test process exits however it exits (a shared cluster is never
//! dropped): no cluster outlives its tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
// Blocking setup on plain threads, outside any tokio runtime's (pausable) clock.
use std::time::Duration;
#[allow(clippy::disallowed_types)]
use std::time::Instant;

use parking_lot::Mutex;

/// How long the whole cluster may take to start, and any one step.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running Redis Cluster, stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// One per master, in port order.
    nodes: Mutex<Vec<ClusterNode>>,
    /// Client ports of the masters.
    ports: Vec<u16>,
    /// Node config files and logs; removed on drop.
    dir: PathBuf,
}

/// One node: its guard (a shell whose stdin we hold; closing it kills the server).
#[derive(Debug)]
struct ClusterNode {
    guard: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // Closing stdin tells the guard to SIGKILL the server; then reap the guard.
        drop(self.stdin.take());
        let _ = self.guard.wait();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.lock().clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisCluster {
    /// The cluster this test process shares (three masters), started on first use. Panics,
    /// saying why, when it cannot start (no `redis-server` or `redis-cli` on PATH, say).
    pub async fn shared() -> &'static RedisCluster {
        static SHARED: tokio::sync::OnceCell<RedisCluster> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                tokio::task::spawn_blocking(|| RedisCluster::start(3))
                    .await
                    .unwrap_or_else(|e| panic!("starting the Redis Cluster panicked: {e}"))
            })
            .await
    }

    /// Starts a cluster of `masters` nodes (at least 3, as `redis-cli --cluster create` wants),
    /// blocking until it is ready. Panics, saying why, when it cannot.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let dir = data_dir();
        // A port found free can be taken before redis-server binds it (by another test
        // process's server, say): then the whole set is chosen again.
        let mut attempt = 0;
        let (ports, nodes) = loop {
            let ports = free_cluster_ports(masters);
            let spawned: Result<Vec<ClusterNode>, String> =
                ports.iter().map(|&port| spawn_node(port, &dir)).collect();
            match spawned {
                Ok(nodes) => break (ports, nodes),
                Err(taken) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("redis cluster: {taken}; choosing other ports (attempt {attempt})");
                }
                Err(taken) => panic!("redis cluster: {taken}, five times over"),
            }
        };
        for &port in &ports {
            wait_for(&format!("node {port} answers PING"), || {
                cli(port, &["PING"]).is_ok_and(|r| r.trim() == "PONG")
            });
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (apt-get install redis-tools): {e}"));
        let report = String::from_utf8_lossy(&created.stdout).into_owned();
        assert!(
            created.status.success() && report.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{report}{}",
            created.status,
            String::from_utf8_lossy(&created.stderr)
        );
        for &port in &ports {
            wait_for(&format!("node {port} reports cluster_state:ok"), || {
                cli(port, &["CLUSTER", "INFO"]).is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&format!("cluster_known_nodes:{masters}"))
                })
            });
        }
        RedisCluster {
            nodes: Mutex::new(nodes),
            ports,
            dir,
        }
    }

    /// The masters' client ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `redis://127.0.0.1:<port of the first master>`: a seed node; the client discovers the
    /// rest.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// Runs one `redis-cli -c` command against the first master (following redirects) and
    /// returns its raw output.
    pub fn command(&self, args: &[&str]) -> String {
        let mut full = vec!["-c"];
        full.extend_from_slice(args);
        cli(self.ports[0], &full).unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
    }

    /// Runs one `redis-cli` command against the master on `port`.
    pub fn command_on(&self, port: u16, args: &[&str]) -> String {
        cli(port, args).unwrap_or_else(|e| panic!("redis-cli -p {port} {args:?}: {e}"))
    }
}

/// Starts one cluster-enabled server under its guard and waits for its ready line; `Err` when
/// its port (or bus port) turned out to be taken.
fn spawn_node(port: u16, dir: &Path) -> Result<ClusterNode, String> {
    // The guard starts the server in the background, then waits for its stdin to close (the
    // test process exited or dropped the cluster) and kills it.
    const GUARD: &str = r#"redis-server "$@" & server=$!; cat >/dev/null; kill -9 $server 2>/dev/null; wait $server 2>/dev/null; exit 0"#;
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(GUARD)
        .arg("redis-guard")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .args(["--logfile", &format!("redis-{port}.log")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh to start redis-server: {e}"));
    let stdin = guard.stdin.take();
    let node = ClusterNode { guard, stdin };
    let log = dir.join(format!("redis-{port}.log"));
    let mut taken = false;
    wait_for(&format!("redis-server on port {port} is ready"), || {
        std::fs::File::open(&log).is_ok_and(|f| {
            BufReader::new(f).lines().map_while(Result::ok).any(|l| {
                taken |= l.contains("Address already in use");
                taken || l.contains("Ready to accept connections")
            })
        })
    });
    if taken {
        return Err(format!("port {port} or {} was taken", port + 10_000));
    }
    Ok(node)
}

/// Runs `redis-cli -p <port> <args>`; its output, or why it failed.
fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli (apt-get install redis-tools): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `ready` (every 20 ms: a cluster node offers no event to wait on) until it holds, or
/// panics after [`DEADLINE`] naming `what`.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_types)]
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` ports in 20000..30000 whose cluster bus ports (+10000) are free too (outside the
/// ephemeral range, so a client's connection cannot take them meanwhile).
fn free_cluster_ports(n: usize) -> Vec<u16> {
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut seed = std::process::id() as u64 ^ now_nanos();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..10_000 {
        // xorshift: a different walk per process, so parallel test binaries rarely collide.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 20_000 + (seed % 10_000) as u16;
        if !ports.contains(&port) && bindable(port) && bindable(port + 10_000) {
            ports.push(port);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("no {n} free port pairs for a Redis Cluster in 20000..40000");
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A fresh directory for node configs and logs.
fn data_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "bellhop-redis-cluster-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    path
}
