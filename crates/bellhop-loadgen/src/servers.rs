//! Starting the systems under test on free loopback ports: Bellhop nodes (embedded broker or
//! Redis), nats-server (one, or a cluster of three), Socket.IO processes (one, or two over
//! Redis), and the Redis they share. Every process is killed when its [`Servers`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::scenarios::Target;
use crate::stats::ProcSet;
use crate::systems::{nats, System};

/// Where the servers come from.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The `bellhop` binary (release build).
    pub bellhop: PathBuf,
    /// `bench/peers/socketio` (server.js and its node_modules).
    pub socketio_dir: PathBuf,
    /// Scratch directory for configuration files and logs.
    pub scratch: PathBuf,
}

/// How many nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One node, no shared broker (Bellhop: embedded broker; Socket.IO: in-memory adapter).
    Single,
    /// Several nodes: Bellhop 3 nodes over one Redis, NATS a 3-server cluster, Socket.IO 2
    /// processes over one Redis with `@socket.io/redis-adapter`.
    Cluster,
}

/// Running servers of one system; killed on drop.
#[derive(Debug)]
pub struct Servers {
    children: Vec<Child>,
    /// What the load generator connects to.
    pub target: Target,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

impl Servers {
    /// Stops every process and waits for them to exit, the nodes before the Redis they use.
    pub async fn stop(mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }
}

/// How many times [`start`] starts a system again, on fresh ports, when one of its processes
/// exited before it listened (most likely: a port picked free was taken before it bound it).
const START_ATTEMPTS: usize = 5;

/// A process of the system under test exited before it listened or was ready.
#[derive(Debug)]
struct Exited {
    what: &'static str,
    status: std::process::ExitStatus,
    port: u16,
    log: String,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited ({}) before listening on {}:\n{}",
            self.what, self.status, self.port, self.log
        )
    }
}

impl std::error::Error for Exited {}

/// Fails with [`Exited`] when `child` has exited.
fn check_alive(child: &mut Child, what: &'static str, port: u16, log: &Path) -> anyhow::Result<()> {
    match child.try_wait()? {
        Some(status) => Err(Exited {
            what,
            status,
            port,
            log: std::fs::read_to_string(log).unwrap_or_default(),
        }
        .into()),
        None => Ok(()),
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it right after, and
/// [`start`] starts again on other ports when another process took it meanwhile).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_for_port(
    port: u16,
    child: &mut Child,
    what: &'static str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        check_alive(child, what, port, log)?;
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on {port} within 30 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /readyz` until it answers 200.
async fn wait_ready(port: u16, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s
                .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
            if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        check_alive(child, "bellhop", port, log)?;
        if Instant::now() > deadline {
            bail!("bellhop was not ready within 30 s (log: {})", log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting {:?}", cmd.as_std().get_program()))
}

fn pid(child: &Child) -> i32 {
    child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0)
}

async fn redis(bins: &Binaries, name: &str) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let log = bins.scratch.join(format!("{name}-redis.log"));
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]);
    let mut child = spawn(cmd, &log)?;
    wait_for_port(port, &mut child, "redis-server", &log).await?;
    Ok((child, port))
}

/// The settings every Bellhop node of the benchmark runs with: the defaults, except the
/// per-client abuse limits, which a load generator on one address would trip by design.
pub const BELLHOP_BENCH_ENV: &[(&str, &str)] = &[
    ("MAX_CONNECTIONS", "200000"),
    ("RATE_LIMIT_PER_IP", "1000000"),
    ("RATE_LIMIT_FRAMES_PER_SECOND", "1000000"),
    ("RATE_LIMIT_PUBLISHES_PER_MINUTE", "10000000"),
    ("MAX_CONNECTIONS_PER_USER", "1000"),
    ("MAX_PENDING_PER_IP", "1000000"),
    ("MAX_PENDING_CONNECTIONS", "1000000"),
    ("PUBLISH_BYTES_PER_USER_PER_MINUTE", "4294967295"),
    ("LOG_LEVEL", "warn"),
];

async fn bellhop_node(
    bins: &Binaries,
    secret: &str,
    n: usize,
    redis_url: Option<&str>,
) -> anyhow::Result<(Child, String)> {
    let ws = free_port()?;
    let admin = free_port()?;
    let log = bins.scratch.join(format!("bellhop-{n}.log"));
    let mut cmd = Command::new(&bins.bellhop);
    cmd.arg("serve")
        .env("BIND_ADDR", "127.0.0.1")
        .env("WS_PORT", ws.to_string())
        .env("METRICS_PORT", admin.to_string())
        .env("NODE_ID", format!("bench-{n}"))
        .env("JWT_SECRET", secret)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_HOST");
    for (k, v) in BELLHOP_BENCH_ENV {
        cmd.env(k, v);
    }
    if let Some(url) = redis_url {
        cmd.env("REDIS_URL", url);
    }
    let mut child = spawn(cmd, &log)?;
    wait_ready(admin, &mut child, &log).await?;
    Ok((child, format!("ws://127.0.0.1:{ws}/ws")))
}

async fn nats_server(
    bins: &Binaries,
    n: usize,
    cluster: Option<(u16, Vec<u16>)>,
) -> anyhow::Result<(Child, u16)> {
    let client = free_port()?;
    let ws = free_port()?;
    let conf = bins.scratch.join(format!("nats-{n}.conf"));
    std::fs::write(&conf, nats::server_config(client, ws, cluster))?;
    let log = bins.scratch.join(format!("nats-{n}.log"));
    let mut cmd = Command::new("nats-server");
    cmd.arg("-c").arg(&conf);
    let mut child = spawn(cmd, &log)?;
    wait_for_port(ws, &mut child, "nats-server", &log).await?;
    Ok((child, ws))
}

async fn socketio(
    bins: &Binaries,
    n: usize,
    redis_url: Option<&str>,
) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let log = bins.scratch.join(format!("socketio-{n}.log"));
    let mut cmd = Command::new("node");
    cmd.arg(bins.socketio_dir.join("server.js"))
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("NODE_ENV", "production")
        .env_remove("REDIS_URL");
    if let Some(url) = redis_url {
        cmd.env("REDIS_URL", url);
    }
    let mut child = spawn(cmd, &log)?;
    wait_for_port(port, &mut child, "socket.io server", &log).await?;
    Ok((child, port))
}

/// The ceiling server: this program's `ceiling-server` subcommand on a free port.
async fn ceiling(bins: &Binaries) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let log = bins.scratch.join("ceiling.log");
    let mut cmd = Command::new(std::env::current_exe().context("finding bellhop-loadgen")?);
    cmd.arg("ceiling-server")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let mut child = spawn(cmd, &log)?;
    wait_for_port(port, &mut child, "ceiling server", &log).await?;
    Ok((child, port))
}

/// Starts `system` in `topology`, again on fresh ports (up to [`START_ATTEMPTS`] times) when a
/// process exited before it listened; the processes of a failed attempt are killed.
pub async fn start(system: System, topology: Topology, bins: &Binaries) -> anyhow::Result<Servers> {
    let mut attempt = 1;
    loop {
        match start_once(system, topology, bins).await {
            Err(e) if attempt < START_ATTEMPTS && e.downcast_ref::<Exited>().is_some() => {
                eprintln!("   starting again on other ports (attempt {attempt}): {e:#}");
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn start_once(
    system: System,
    topology: Topology,
    bins: &Binaries,
) -> anyhow::Result<Servers> {
    std::fs::create_dir_all(&bins.scratch)?;
    let secret = format!(
        "bench-{}-0123456789abcdef0123456789abcdef",
        std::process::id()
    );
    let mut children = Vec::new();
    let mut urls = Vec::new();
    // The Redis behind a cluster, by its place in `children`.
    let mut broker = None;
    let label;
    match (system, topology) {
        (System::Bellhop, Topology::Single) => {
            let (c, url) = bellhop_node(bins, &secret, 1, None).await?;
            children.push(c);
            urls.push(url);
            label = "1 node, embedded broker".to_owned();
        }
        (System::Bellhop, Topology::Cluster) => {
            let (r, port) = redis(bins, "bellhop").await?;
            broker = Some(children.len());
            children.push(r);
            let redis_url = format!("redis://127.0.0.1:{port}");
            for n in 1..=3 {
                let (c, url) = bellhop_node(bins, &secret, n, Some(&redis_url)).await?;
                children.push(c);
                urls.push(url);
            }
            label = "3 nodes + Redis".to_owned();
        }
        (System::Nats, Topology::Single) => {
            let (c, ws) = nats_server(bins, 1, None).await?;
            children.push(c);
            urls.push(format!("ws://127.0.0.1:{ws}"));
            label = "1 server".to_owned();
        }
        (System::Nats, Topology::Cluster) => {
            let routes: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
            for n in 0..3 {
                let others: Vec<u16> = routes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != n)
                    .map(|(_, p)| *p)
                    .collect();
                let (c, ws) = nats_server(bins, n + 1, Some((routes[n], others))).await?;
                children.push(c);
                urls.push(format!("ws://127.0.0.1:{ws}"));
            }
            label = "3-server cluster".to_owned();
        }
        (System::Socketio, Topology::Single) => {
            let (c, port) = socketio(bins, 1, None).await?;
            children.push(c);
            urls.push(format!("ws://127.0.0.1:{port}"));
            label = "1 process".to_owned();
        }
        (System::Socketio, Topology::Cluster) => {
            let (r, port) = redis(bins, "socketio").await?;
            broker = Some(children.len());
            children.push(r);
            let redis_url = format!("redis://127.0.0.1:{port}");
            for n in 1..=2 {
                let (c, port) = socketio(bins, n, Some(&redis_url)).await?;
                children.push(c);
                urls.push(format!("ws://127.0.0.1:{port}"));
            }
            label = "2 processes + Redis".to_owned();
        }
        (System::Ceiling, Topology::Single) => {
            let (c, port) = ceiling(bins).await?;
            children.push(c);
            urls.push(format!("ws://127.0.0.1:{port}/ws"));
            label = "1 process".to_owned();
        }
        (System::Ceiling, Topology::Cluster) => {
            bail!("the ceiling server has no cluster: it measures one machine's fan-out")
        }
    }
    let procs = ProcSet {
        pids: children.iter().map(pid).collect(),
        broker: broker.map(|i| pid(&children[i])).into_iter().collect(),
    };
    Ok(Servers {
        children,
        target: Target {
            system,
            urls,
            procs,
            secret,
            topology: label,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_exits_before_listening_is_started_again_then_reported() {
        let dir = std::env::temp_dir().join(format!(
            "bellhop-servers-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let starts = dir.join("starts");
        let fake = dir.join("bellhop");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho started >> {}\necho 'address in use' >&2\nexit 3\n",
                starts.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let bins = Binaries {
            bellhop: fake,
            socketio_dir: dir.clone(),
            scratch: dir.join("scratch"),
        };
        let e = start(System::Bellhop, Topology::Single, &bins)
            .await
            .expect_err("a node that exits cannot start");
        let text = format!("{e:#}");
        assert!(
            text.contains("bellhop exited") && text.contains("address in use"),
            "{text}"
        );
        let attempts = std::fs::read_to_string(&starts).unwrap().lines().count();
        assert_eq!(attempts, START_ATTEMPTS);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
