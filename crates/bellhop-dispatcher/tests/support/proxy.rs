//! A loopback TCP proxy in front of a server that can silence one connection: the server's bytes
//! stop reaching the client while the connection stays open, which is how a pub/sub connection
//! fails after a failover behind a middlebox (no error, no close, just nothing). It can also delay
//! the server's bytes, to give loopback the round-trip time of a network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// Where clients connect.
    port: u16,
    /// One switch per accepted connection, in accept order: set, and the server's bytes are
    /// dropped.
    silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Forwards a loopback port to `127.0.0.1:<upstream>`.
    pub(crate) async fn start(upstream: u16) -> Proxy {
        Self::start_with_latency(upstream, Duration::ZERO).await
    }

    /// Like [`Proxy::start`], and every byte from the server reaches the client `latency` late
    /// (in order, without limiting throughput): each round trip takes `latency` longer.
    pub(crate) async fn start_with_latency(upstream: u16, latency: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silenced = Arc::new(Mutex::new(Vec::new()));
        let switches = silenced.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let silence = Arc::new(AtomicBool::new(false));
                switches.lock().push(silence.clone());
                tokio::spawn(forward(client, server, silence, latency));
            }
        });
        Proxy {
            port,
            silenced,
            task,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.silenced.lock().len()
    }

    /// Stops passing the server's bytes to the `index`-th connection accepted (from 0).
    pub(crate) fn silence(&self, index: usize) {
        self.silenced.lock()[index].store(true, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes; the server's bytes only while not silenced, each
/// `latency` after it arrived.
async fn forward(
    client: TcpStream,
    server: TcpStream,
    silence: Arc<AtomicBool>,
    latency: Duration,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (delayed_tx, mut delayed) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    let down = async {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) if !silence.load(Ordering::SeqCst) => {
                    let due = Instant::now() + latency;
                    if delayed_tx.send((due, buffer[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    };
    let deliver = async {
        while let Some((due, bytes)) = delayed.recv().await {
            tokio::time::sleep_until(due).await;
            if client_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        () = deliver => {}
    }
}
