//! The ceiling server: a minimal fan-out server written only to find what this machine can
//! deliver, so Bellhop's fan-out can be reported as a fraction of it (`bellhop-loadgen
//! ceiling-server`, system `ceiling` of the benchmark).
//!
//! It speaks the subset of Bellhop's wire protocol v1 (JSON codec) the load generator uses, so
//! the same [`crate::systems::bellhop::BellhopWire`] drives it: the WebSocket upgrade is
//! accepted whatever its query (no token check), a `welcome` frame follows, every `subscribe`
//! is answered by `subscribed`, and every `publish` is fanned out as one `message` frame built
//! once (complete WebSocket frame bytes: server frames are unmasked, so they are the same for
//! every subscriber) and queued, as a shared [`Bytes`], on every subscriber of the channel.
//! Each connection's writer drains its whole queue with vectored writes per wake-up, and is
//! woken only when its queue goes from empty to non-empty. Nothing is stored, there is no
//! acknowledgement, no authentication, no rate limit and no history: everything Bellhop does
//! beyond this is what the ratio to the ceiling prices.
//!
//! Every client-controlled size is bounded: the upgrade request ([`MAX_REQUEST`]), a frame
//! ([`MAX_FRAME`], no fragmentation), and a connection's queue ([`MAX_QUEUED`]: a subscriber
//! that falls that far behind is disconnected).

use std::collections::HashMap;
use std::io::{Cursor, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The largest upgrade request read, bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// The largest client frame accepted, bytes of payload.
pub const MAX_FRAME: u64 = 64 * 1024;
/// Bytes queued on one connection before it is dropped as too slow.
pub const MAX_QUEUED: usize = 16 * 1024 * 1024;
/// Frames written by one vectored write at most (under the kernel's IOV_MAX of 1024).
const MAX_IOV: usize = 512;

/// One connection as the fan-out sees it: a queue of complete frames and its writer's wake-up.
struct Conn {
    id: u64,
    queue: Mutex<Queue>,
    wake: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct Queue {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl Conn {
    /// Queues `frame`; wakes the writer only if the queue was empty. Returns false (and marks
    /// the connection closed) when the queue is over its bound.
    fn push(&self, frame: Bytes) -> bool {
        let was_empty = {
            let mut q = self.queue.lock();
            if q.bytes + frame.len() > MAX_QUEUED {
                drop(q);
                self.close();
                return false;
            }
            q.bytes += frame.len();
            q.frames.push(frame);
            q.frames.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The server's state: who is subscribed to what.
#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, Vec<Arc<Conn>>>>,
    offset: AtomicU64,
    next_conn: AtomicU64,
}

impl Hub {
    fn subscribe(&self, channel: &str, conn: &Arc<Conn>) {
        let mut channels = self.channels.lock();
        let subs = channels.entry(channel.to_owned()).or_default();
        if !subs.iter().any(|c| c.id == conn.id) {
            subs.push(Arc::clone(conn));
        }
    }

    fn forget(&self, conn: &Conn) {
        let mut channels = self.channels.lock();
        channels.retain(|_, subs| {
            subs.retain(|c| c.id != conn.id);
            !subs.is_empty()
        });
    }

    /// Builds the `message` frame once and queues it on every subscriber of `channel`.
    fn publish(&self, channel: &str, event: &str, payload: &RawValue) {
        let offset = self.offset.fetch_add(1, Ordering::Relaxed) + 1;
        // The field order of the gateway's `message` frame (the load generator's fast path).
        let text = format!(
            r#"{{"type":"message","channel":"{channel}","offset":"{offset}-0","message":{{"event":"{event}","channel":"{channel}","payload":{}}}}}"#,
            payload.get()
        );
        let frame = text_frame(&text);
        let channels = self.channels.lock();
        if let Some(subs) = channels.get(channel) {
            for c in subs {
                c.push(frame.clone());
            }
        }
    }
}

/// A complete unmasked server text frame.
fn text_frame(text: &str) -> Bytes {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(text.len() + 10);
    // Writing into a Vec cannot fail.
    let _ = header.format(text.len() as u64, &mut out);
    out.extend_from_slice(text.as_bytes());
    Bytes::from(out)
}

fn control_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 2);
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A running ceiling server; stopped when dropped.
#[derive(Debug)]
pub struct Ceiling {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Ceiling {
    /// Binds `addr` and serves on the current runtime.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener));
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections on `listener` forever.
pub async fn serve(listener: TcpListener) {
    let hub = Arc::new(Hub::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections there are.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            if let Err(e) = connection(&hub, stream).await {
                tracing::debug!("connection ended: {e:#}");
            }
        });
    }
}

/// Reads the upgrade request (up to the blank line), answers 101; returns what followed it.
async fn upgrade(stream: &mut TcpStream) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed during the upgrade");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf)? {
            httparse::Status::Complete(len) => {
                let key = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                    .map(|h| h.value)
                    .context("no Sec-WebSocket-Key")?;
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key)
                );
                stream.write_all(response.as_bytes()).await?;
                buf.advance(len);
                return Ok(buf);
            }
            httparse::Status::Partial if buf.len() < MAX_REQUEST => {}
            httparse::Status::Partial => bail!("upgrade request over {MAX_REQUEST} bytes"),
        }
    }
}

#[derive(Deserialize)]
struct ClientFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, borrow)]
    event: Option<&'a str>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// Channel and event names the server accepts: what goes into a frame without escaping.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b))
}

async fn connection(hub: &Arc<Hub>, mut stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let rest = upgrade(&mut stream).await?;
    let id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        id,
        queue: Mutex::new(Queue::default()),
        wake: Notify::new(),
        closed: AtomicBool::new(false),
    });
    conn.push(text_frame(&format!(
        r#"{{"type":"welcome","sessionId":"c{id}","node":"ceiling","userId":"u{id}","role":"staff","property":"h1","heartbeatSeconds":30}}"#
    )));
    let (read, write) = stream.into_split();
    let writer = tokio::spawn(writer(Arc::clone(&conn), write));
    let result = reader(hub, &conn, read, rest).await;
    hub.forget(&conn);
    conn.close();
    let _ = writer.await;
    result
}

/// Reads client frames: subscribes, publishes, answers pings, ends on close.
async fn reader(
    hub: &Hub,
    conn: &Arc<Conn>,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
) -> anyhow::Result<()> {
    loop {
        // Every complete frame in the buffer.
        loop {
            let mut cursor = Cursor::new(&buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
                break;
            };
            if len > MAX_FRAME {
                bail!("frame of {len} bytes");
            }
            let start = usize::try_from(cursor.position())?;
            let end = start + usize::try_from(len)?;
            if buf.len() < end {
                break;
            }
            let mut frame = buf.split_to(end);
            frame.advance(start);
            if !header.is_final {
                bail!("fragmented frames are not supported");
            }
            let Some(mask) = header.mask else {
                bail!("unmasked client frame");
            };
            for (i, b) in frame.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match header.opcode {
                OpCode::Data(Data::Text | Data::Binary) => request(hub, conn, &frame),
                OpCode::Control(Control::Ping) => {
                    conn.push(control_frame(OpCode::Control(Control::Pong), &frame));
                }
                OpCode::Control(Control::Close) => return Ok(()),
                _ => {}
            }
        }
        if conn.closed.load(Ordering::Acquire) {
            bail!("closed by the writer (slow or gone)");
        }
        buf.reserve(4096);
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// One client request; anything else than `subscribe` and `publish` is ignored.
fn request(hub: &Hub, conn: &Arc<Conn>, text: &[u8]) {
    let Ok(frame) = serde_json::from_slice::<ClientFrame<'_>>(text) else {
        return;
    };
    let Some(channel) = frame.channel.filter(|c| plain(c)) else {
        return;
    };
    match frame.kind {
        "subscribe" => {
            hub.subscribe(channel, conn);
            let id = frame.id.unwrap_or(0);
            conn.push(text_frame(&format!(
                r#"{{"type":"subscribed","id":{id},"channel":"{channel}","offset":"0-0","recovered":false,"unread":0}}"#
            )));
        }
        "publish" => {
            if let Some(payload) = frame.payload {
                let event = frame.event.filter(|e| plain(e)).unwrap_or("message");
                hub.publish(channel, event, payload);
            }
        }
        _ => {}
    }
}

/// Drains the queue on each wake-up with vectored writes, until the connection closes.
async fn writer(conn: Arc<Conn>, mut write: OwnedWriteHalf) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        {
            let mut q = conn.queue.lock();
            std::mem::swap(&mut batch, &mut q.frames);
            q.bytes = 0;
        }
        if batch.is_empty() {
            if conn.closed.load(Ordering::Acquire) {
                break;
            }
            conn.wake.notified().await;
            continue;
        }
        if write_all_vectored(&mut write, &mut batch).await.is_err() {
            conn.close();
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Writes every frame of `batch` (emptying it), [`MAX_IOV`] slices per call.
async fn write_all_vectored(
    write: &mut OwnedWriteHalf,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..]
            .iter()
            .take(MAX_IOV)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut written = write.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        drop(slices);
        while written > 0 {
            let head = &mut batch[first];
            if written >= head.len() {
                written -= head.len();
                first += 1;
            } else {
                head.advance(written);
                written = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}
