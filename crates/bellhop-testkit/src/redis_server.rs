//! A real `redis-server` for one test: started on a free loopback port with persistence off,
//! killed when dropped. Readiness is the server's own "Ready to accept connections" log line and
//! a `PING`, each with a deadline; nothing waits a fixed time.
//!
//! A machine without `redis-server` fails these tests with a message saying so: the Redis
//! backend is tested against the real thing or not at all, never skipped silently.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a server may take to start, and a command to answer.
const DEADLINE: Duration = Duration::from_secs(10);

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// The process (`kill_on_drop`).
    _child: Child,
    /// Its loopback port.
    port: u16,
}

/// Why one start attempt failed.
enum StartError {
    /// Someone took the port between our probe and the server's bind: try another.
    PortTaken,
    /// Anything else: fail the test with this.
    Failed(String),
}

impl RedisServer {
    /// Starts a server, or fails the test saying why.
    pub async fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(free_port()).await {
                Ok(server) => return server,
                Err(StartError::PortTaken) => last = "port taken".into(),
                Err(StartError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!("could not start redis-server on a free port: {last}");
    }

    async fn try_start(port: u16) -> Result<RedisServer, StartError> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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
        let server = RedisServer {
            _child: child,
            port,
        };
        let pong = server.command(&["PING"]).await;
        if pong != ["PONG"] {
            return Err(StartError::Failed(format!(
                "redis-server answered PING with {pong:?}"
            )));
        }
        Ok(server)
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command on a fresh connection and returns its reply flattened: every scalar in
    /// order, as text (`OK`, `1`, a bulk string, `nil`; an error as `-ERR ...`). Enough for tests
    /// that poke at the server behind the broker's back.
    pub async fn command(&self, args: &[&str]) -> Vec<String> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
            stream.write_all(&request).await?;
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(values) = parse_reply(&buffer) {
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
