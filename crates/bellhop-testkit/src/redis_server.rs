//! A real `redis-server` for one test: started on a free loopback port, killed when dropped.
//! Readiness is the server's own "Ready to accept connections" log line and a `PING`, each with a
//! deadline; nothing waits a fixed time.
//!
//! By default persistence is off. [`RedisServer::start_with`] can turn on the append-only file
//! with `appendfsync always` (every write is on disk before Redis answers it), in a data
//! directory of the server's own; with it, [`RedisServer::kill`] (SIGKILL) and
//! [`RedisServer::restart`] (same port, same data) are a crash and a recovery that lose nothing
//! Redis acknowledged.
//!
//! A machine without `redis-server` fails these tests with a message saying so: the Redis
//! backend is tested against the real thing or not at all, never skipped silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::tls::TestCerts;

/// How long a server may take to start, and a command to answer.
const DEADLINE: Duration = Duration::from_secs(10);

/// How a [`RedisServer`] runs.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Keep an append-only file with `appendfsync always` (`--appendonly yes --appendfsync
    /// always --dir <its own temporary directory>`), so a SIGKILL loses nothing Redis answered
    /// and [`RedisServer::restart`] brings every acknowledged write back.
    pub aof: bool,
    /// Require this password (`--requirepass`); [`RedisServer::url`] carries it.
    pub password: Option<String>,
    /// Also listen with TLS (`--tls-port`, a certificate from a throwaway CA, no client
    /// certificates required) on a port of its own: [`RedisServer::tls_url`],
    /// [`RedisServer::ca_path`]. The plain port stays open for the test's own commands.
    pub tls: bool,
}

/// A running `redis-server`, killed on drop (its data directory, if any, removed).
#[derive(Debug)]
pub struct RedisServer {
    /// The process (`kill_on_drop`); `None` between [`RedisServer::kill`] and
    /// [`RedisServer::restart`].
    child: Mutex<Option<Child>>,
    /// Its loopback port, the same across restarts.
    port: u16,
    /// How it was started, to start it again the same way.
    options: RedisOptions,
    /// Where the append-only file lives (with [`RedisOptions::aof`]); removed on drop, after the
    /// process is gone.
    dir: Option<DataDir>,
    /// With [`RedisOptions::tls`]: its TLS port and certificates.
    tls: Option<(u16, TestCerts)>,
}

/// Why one start attempt failed.
enum StartError {
    /// Someone took the port between our probe and the server's bind: try another.
    PortTaken,
    /// Anything else: fail the test with this.
    Failed(String),
}

impl RedisServer {
    /// Starts a server without persistence, or fails the test saying why.
    pub async fn start() -> RedisServer {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts a server with `options`, or fails the test saying why.
    pub async fn start_with(options: RedisOptions) -> RedisServer {
        let dir = options.aof.then(DataDir::new);
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let tls = options
                .tls
                .then(|| (free_port(), TestCerts::new("redis.test")));
            let args = server_args(&options, dir.as_ref(), tls.as_ref());
            match spawn(port, &args, options.password.as_deref()).await {
                Ok(child) => {
                    return RedisServer {
                        child: Mutex::new(Some(child)),
                        port,
                        options,
                        dir,
                        tls,
                    }
                }
                Err(StartError::PortTaken) => last = "port taken".into(),
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("could not start redis-server on a free port: {last}");
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, with `:<password>@` when it has one.
    pub fn url(&self) -> String {
        format!("redis://{}127.0.0.1:{}", self.auth(), self.port)
    }

    /// `rediss://127.0.0.1:<tls port>` (with the password, if any). Panics without
    /// [`RedisOptions::tls`].
    pub fn tls_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("started without tls");
        format!("rediss://{}127.0.0.1:{port}", self.auth())
    }

    /// The CA certificate (PEM) that signed the server's certificate. Panics without
    /// [`RedisOptions::tls`].
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.tls.as_ref().expect("started without tls").1.ca()
    }

    fn auth(&self) -> String {
        self.options
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default()
    }

    /// How it runs.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// SIGKILLs the server (a crash: no shutdown, no final save) and waits until the process is
    /// gone, so its port is free. Panics when it is not running.
    pub async fn kill(&self) {
        let child = self.child.lock().take();
        let mut child = child.expect("redis-server is not running: nothing to kill");
        // `Child::kill` sends SIGKILL and reaps the process.
        tokio::time::timeout(DEADLINE, child.kill())
            .await
            .expect("redis-server gone within the deadline after SIGKILL")
            .expect("SIGKILL redis-server");
    }

    /// Starts the server again after [`RedisServer::kill`], on the same port with the same
    /// options (and, with [`RedisOptions::aof`], the same data, which it loads before it is
    /// ready). Panics when it is running, or when it cannot start within the deadline.
    pub async fn restart(&self) {
        assert!(
            self.child.lock().is_none(),
            "redis-server is still running: kill it first"
        );
        let args = server_args(&self.options, self.dir.as_ref(), self.tls.as_ref());
        let started = tokio::time::Instant::now();
        let child = loop {
            match spawn(self.port, &args, self.options.password.as_deref()).await {
                Ok(child) => break child,
                // The old process is reaped, so its socket is closed; something else may hold
                // the port for a moment (a connection's ephemeral port): try again, briefly.
                Err(StartError::PortTaken) if started.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(StartError::PortTaken) => {
                    panic!(
                        "port {} stayed taken; cannot restart redis-server",
                        self.port
                    )
                }
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        };
        *self.child.lock() = Some(child);
    }

    /// Sends one command on a fresh connection and returns its reply flattened: every scalar in
    /// order, as text (`OK`, `1`, a bulk string, `nil`; an error as `-ERR ...`). Enough for tests
    /// that poke at the server behind the broker's back.
    pub async fn command(&self, args: &[&str]) -> Vec<String> {
        command_on(self.port, self.options.password.as_deref(), args).await
    }
}

/// The server's arguments besides `--port`.
fn server_args(
    options: &RedisOptions,
    aof_dir: Option<&DataDir>,
    tls: Option<&(u16, TestCerts)>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
    for a in ["--bind", "127.0.0.1", "--save", ""] {
        push(&a);
    }
    match aof_dir {
        Some(dir) => {
            for a in ["--appendonly", "yes", "--appendfsync", "always", "--dir"] {
                push(&a);
            }
            push(&dir.path());
        }
        None => {
            push(&"--appendonly");
            push(&"no");
        }
    }
    if let Some(password) = &options.password {
        push(&"--requirepass");
        push(password);
    }
    if let Some((port, certs)) = tls {
        push(&"--tls-port");
        push(&port.to_string());
        push(&"--tls-cert-file");
        push(&certs.cert());
        push(&"--tls-key-file");
        push(&certs.key());
        push(&"--tls-ca-cert-file");
        push(&certs.ca());
        push(&"--tls-auth-clients");
        push(&"no");
    }
    args
}

/// Starts `redis-server` on `port` with `args` and waits until it is ready and answers `PING`
/// (after `AUTH`, given a password).
async fn spawn(
    port: u16,
    args: &[std::ffi::OsString],
    password: Option<&str>,
) -> Result<Child, StartError> {
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string()]).args(args);
    let spawned = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StartError::Failed(
                "redis-server is not on PATH: the Redis backend tests need a real server \
                 (Debian/Ubuntu: apt-get install redis-server)"
                    .into(),
            ))
        }
        Err(e) => return Err(StartError::Failed(format!("cannot run redis-server: {e}"))),
    };
    let Some(stdout) = child.stdout.take() else {
        return Err(StartError::Failed("redis-server has no stdout".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut log = Vec::new();
    let ready = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let ready = line.contains("Ready to accept connections");
            log.push(line);
            if ready {
                return true;
            }
        }
        false
    })
    .await;
    match ready {
        Ok(true) => {}
        Ok(false) if log.iter().any(|l| l.contains("Address already in use")) => {
            return Err(StartError::PortTaken)
        }
        Ok(false) => {
            return Err(StartError::Failed(format!(
                "redis-server exited before it was ready:\n{}",
                log.join("\n")
            )))
        }
        Err(_) => {
            return Err(StartError::Failed(format!(
                "redis-server was not ready within {DEADLINE:?}:\n{}",
                log.join("\n")
            )))
        }
    }
    // Keep reading its log, so a full pipe never stalls it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pong = command_on(port, password, &["PING"]).await;
    if pong != ["PONG"] {
        return Err(StartError::Failed(format!(
            "redis-server answered PING with {pong:?}"
        )));
    }
    Ok(child)
}

/// See [`RedisServer::command`]; `AUTH`s first when given a password.
async fn command_on(port: u16, password: Option<&str>, args: &[&str]) -> Vec<String> {
    let encode = |args: &[&str]| {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request
    };
    let mut request = Vec::new();
    if let Some(password) = password {
        request.extend(encode(&["AUTH", password]));
    }
    request.extend(encode(args));
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(&request).await?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut rest = buffer.as_slice();
            if password.is_some() {
                // Skip the AUTH reply.
                match parse_value(rest, &mut Vec::new()) {
                    Some(used) => rest = &rest[used..],
                    None => rest = &[],
                }
            }
            if let Some(values) = (!rest.is_empty()).then(|| parse_reply(rest)).flatten() {
                return Ok(values);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed mid-reply"));
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(DEADLINE, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => panic!("redis command {args:?} failed: {e}"),
        Err(_) => panic!("redis command {args:?} got no reply within {DEADLINE:?}"),
    }
}

/// A directory of its own under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "bellhop-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier run with the same pid would hold stale data.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        DataDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One complete RESP2 reply at the start of `buffer`, flattened; `None` while incomplete.
fn parse_reply(buffer: &[u8]) -> Option<Vec<String>> {
    let mut values = Vec::new();
    parse_value(buffer, &mut values).map(|_| values)
}

/// Parses one value into `out`; returns the bytes it took.
fn parse_value(buffer: &[u8], out: &mut Vec<String>) -> Option<usize> {
    let end = buffer.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buffer[1..end]).into_owned();
    let mut used = end + 2;
    match buffer.first()? {
        b'+' | b':' => out.push(line),
        b'-' => out.push(format!("-{line}")),
        b'$' => {
            let Ok(len) = line.parse::<usize>() else {
                out.push("nil".into());
                return Some(used);
            };
            let data = buffer.get(used..used + len)?;
            buffer.get(used + len..used + len + 2)?;
            out.push(String::from_utf8_lossy(data).into_owned());
            used += len + 2;
        }
        b'*' => {
            let Ok(count) = line.parse::<usize>() else {
                out.push("nil".into());
                return Some(used);
            };
            for _ in 0..count {
                used += parse_value(&buffer[used..], out)?;
            }
        }
        other => panic!("unexpected RESP type byte {other}"),
    }
    Some(used)
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}
