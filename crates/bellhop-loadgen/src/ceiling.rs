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
//! Once the publisher's read buffer is handled, every connection whose queue went from empty to
//! non-empty is flushed at once from the publisher's task with non-blocking vectored writes
//! (as nats-server flushes its subscribers from the publisher's read loop): no task wakes per
//! subscriber unless its socket is full, when its writer task waits for the socket to drain
//! and writes the rest, again vectored. Nothing is stored, there is no
//! acknowledgement, no authentication, no rate limit and no history: everything Bellhop does
//! beyond this is what the ratio to the ceiling prices.
//!
//! Every client-controlled size is bounded: the upgrade request ([`MAX_REQUEST`]), a frame
//! ([`MAX_FRAME`], no fragmentation), and a connection's queue ([`MAX_QUEUED`]: a subscriber
//! that falls that far behind is disconnected).

use std::collections::{HashMap, VecDeque};
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
    /// Every write to the socket happens with this lock held (non-blocking), so frames never
    /// interleave and leave in queue order.
    queue: Mutex<Queue>,
    write: OwnedWriteHalf,
    /// The writer task's wake-up: the socket was full.
    wake: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Conn {
    /// Queues `frame`; returns true if the queue went from empty to non-empty (the caller then
    /// flushes it). Over its bound, the connection is closed instead.
    fn push(&self, frame: Bytes) -> bool {
        let mut q = self.queue.lock();
        if q.bytes + frame.len() > MAX_QUEUED {
            drop(q);
            self.close();
            return false;
        }
        q.bytes += frame.len();
        q.frames.push_back(frame);
        q.frames.len() == 1
    }

    /// Queues a frame and flushes at once (replies to this connection's own requests).
    fn send(&self, frame: Bytes) {
        if self.push(frame) {
            self.flush_or_wake();
        }
    }

    /// Writes what is queued without blocking; if the socket is full, the writer task takes
    /// over.
    fn flush_or_wake(&self) {
        match self.flush() {
            Ok(true) => {}
            Ok(false) => self.wake.notify_one(),
            Err(_) => self.close(),
        }
    }

    /// Non-blocking vectored writes of the queue; true when it is empty.
    fn flush(&self) -> std::io::Result<bool> {
        let mut q = self.queue.lock();
        while !q.frames.is_empty() {
            let slices: Vec<IoSlice<'_>> = q
                .frames
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut written = match self.write.try_write_vectored(&slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            drop(slices);
            q.bytes = q.bytes.saturating_sub(written);
            while written > 0 {
                let Some(head) = q.frames.front_mut() else {
                    break;
                };
                if written >= head.len() {
                    written -= head.len();
                    q.frames.pop_front();
                } else {
                    head.advance(written);
                    written = 0;
                }
            }
        }
        Ok(true)
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

    /// Builds the `message` frame once and queues it on every subscriber of `channel`; those
    /// whose queue was empty go to `pending`, to be flushed once the read buffer is handled.
    fn publish(
        &self,
        channel: &str,
        event: &str,
        payload: &RawValue,
        pending: &mut Vec<Arc<Conn>>,
    ) {
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
                if c.push(frame.clone()) {
                    pending.push(Arc::clone(c));
                }
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
    let (read, write) = stream.into_split();
    let conn = Arc::new(Conn {
        id,
        queue: Mutex::new(Queue::default()),
        write,
        wake: Notify::new(),
        closed: AtomicBool::new(false),
    });
    let writer = tokio::spawn(writer(Arc::clone(&conn)));
    conn.send(text_frame(&format!(
        r#"{{"type":"welcome","sessionId":"c{id}","node":"ceiling","userId":"u{id}","role":"staff","property":"h1","heartbeatSeconds":30}}"#
    )));
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
    let mut pending = Vec::new();
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
                OpCode::Data(Data::Text | Data::Binary) => request(hub, conn, &frame, &mut pending),
                OpCode::Control(Control::Ping) => {
                    conn.send(control_frame(OpCode::Control(Control::Pong), &frame));
                }
                OpCode::Control(Control::Close) => return Ok(()),
                _ => {}
            }
        }
        // One flush per subscriber for everything this read brought.
        for c in pending.drain(..) {
            c.flush_or_wake();
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
fn request(hub: &Hub, conn: &Arc<Conn>, text: &[u8], pending: &mut Vec<Arc<Conn>>) {
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
            conn.send(text_frame(&format!(
                r#"{{"type":"subscribed","id":{id},"channel":"{channel}","offset":"0-0","recovered":false,"unread":0}}"#
            )));
        }
        "publish" => {
            if let Some(payload) = frame.payload {
                let event = frame.event.filter(|e| plain(e)).unwrap_or("message");
                hub.publish(channel, event, payload, pending);
            }
        }
        _ => {}
    }
}

/// Writes what the publishers' flushes could not: waits for the socket to drain, then writes
/// the queue, vectored, until it is empty; ends when the connection closes.
async fn writer(conn: Arc<Conn>) {
    loop {
        conn.wake.notified().await;
        loop {
            if conn.closed.load(Ordering::Acquire) {
                return;
            }
            if conn.write.writable().await.is_err() {
                conn.close();
                return;
            }
            match conn.flush() {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => {
                    conn.close();
                    return;
                }
            }
        }
    }
}
