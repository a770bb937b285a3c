//! Server-to-client WebSocket frames as the bytes that go on the wire, and the connection's
//! write side.
//!
//! A server's frames are unmasked, so a frame is the same bytes for every subscriber: the hub
//! builds each message's frame once per codec ([`WireFrame`], a shared `Bytes`) and every
//! subscriber's queue holds a reference to it. The writer writes a whole batch of them with
//! vectored writes straight to the socket ([`SocketWire`]); tungstenite has no way to send
//! pre-framed bytes without copying them into its own buffer per connection (tokio-tungstenite
//! issue 271, tungstenite-rs issue 96), so it is used for what it does well: reading, its
//! automatic replies to pings and closes, and the closing handshake. What it writes goes into
//! [`Capture`] and is written by the writer between two batches, so frames never interleave.

use std::future::Future;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::outbound::Outbound;

#[cfg(test)]
pub(crate) use crate::frame::decode;
pub use crate::frame::WireFrame;

/// Where a connection's writer puts its frames.
pub(crate) trait Wire: Send + 'static {
    /// Called once, before anything is written, with the connection's queue.
    fn attach(&mut self, _outbound: &Arc<Outbound>) {}

    /// Writes these complete frames, in order (and anything tungstenite wrote before them),
    /// and flushes.
    fn write(&mut self, frames: &[WireFrame]) -> impl Future<Output = Result<(), WsError>> + Send;

    /// Sends the close frame (through tungstenite, which keeps the closing handshake) and
    /// flushes.
    fn close(&mut self, frame: CloseFrame) -> impl Future<Output = Result<(), WsError>> + Send;
}

/// Most bytes tungstenite may have waiting in a [`Capture`]: it writes only pongs (one pending
/// at a time) and close frames.
const MAX_CAPTURED: usize = 64 << 10;

/// What tungstenite wrote and the writer has not yet written to the socket.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    bytes: Mutex<Vec<u8>>,
    /// Woken when tungstenite wrote something.
    outbound: OnceLock<Arc<Outbound>>,
}

impl Captured {
    fn take(&self) -> Option<Bytes> {
        let mut bytes = self.bytes.lock();
        (!bytes.is_empty()).then(|| std::mem::take(&mut *bytes).into())
    }
}

/// The write half tungstenite is given: every write is taken whole (tungstenite writes whole
/// frames from its buffer, so what is taken always ends on a frame boundary) and kept for the
/// connection's writer.
#[derive(Debug)]
pub(crate) struct Capture(Arc<Captured>);

/// Most bytes one read takes from the socket. They are read onto the stack: what tungstenite's
/// small buffer cannot take at once waits in [`Duplex`]'s `unread`, which is allocated only
/// while it holds something, so an idle connection holds no read buffer beyond tungstenite's
/// (`server::READ_BUFFER_BYTES`), and a burst of frames still costs one read.
const SOCKET_READ_BYTES: usize = 4096;

/// The stream tungstenite reads from and writes to: the socket's read half, and [`Capture`].
#[derive(Debug)]
pub(crate) struct Duplex<T> {
    /// The socket's read half.
    pub(crate) read: ReadHalf<T>,
    capture: Capture,
    /// Bytes read from the socket that tungstenite has not taken yet, from `unread_at` on;
    /// empty and unallocated otherwise.
    unread: Vec<u8>,
    /// Where the untaken part of `unread` starts.
    unread_at: usize,
}

impl<T: AsyncRead> AsyncRead for Duplex<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.unread_at < this.unread.len() {
            let n = buf.remaining().min(this.unread.len() - this.unread_at);
            buf.put_slice(&this.unread[this.unread_at..this.unread_at + n]);
            this.unread_at += n;
            if this.unread_at == this.unread.len() {
                this.unread = Vec::new();
                this.unread_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SOCKET_READ_BYTES {
            // tungstenite's buffer grew for a large frame: read straight into it.
            return Pin::new(&mut this.read).poll_read(cx, buf);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); SOCKET_READ_BYTES];
        let mut chunk = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut this.read).poll_read(cx, &mut chunk))?;
        let read = chunk.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.unread = read[n..].to_vec();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T> AsyncWrite for Duplex<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let captured = &self.capture.0;
        {
            let mut bytes = captured.bytes.lock();
            if bytes.len() + buf.len() > MAX_CAPTURED {
                return Poll::Ready(Err(std::io::Error::other(
                    "the peer reads none of the node's control frames",
                )));
            }
            bytes.extend_from_slice(buf);
        }
        if let Some(outbound) = captured.outbound.get() {
            outbound.wake_writer();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The writer's side of a real connection (TCP or TLS alike: `T` is whatever carries it).
#[derive(Debug)]
pub(crate) struct SocketWire<T> {
    /// tungstenite's sink, used for the close frame only.
    pub(crate) sink: SplitSink<WebSocketStream<Duplex<T>>, Message>,
    /// The socket's write half.
    pub(crate) io: WriteHalf<T>,
    captured: Arc<Captured>,
}

/// A WebSocket over `io` whose writes go through the returned [`SocketWire`] (see the module
/// documentation): the stream half for the reader, the wire for the writer.
pub(crate) async fn split<T, F, Fut>(
    ws: F,
    io: T,
) -> (
    futures_util::stream::SplitStream<WebSocketStream<Duplex<T>>>,
    SocketWire<T>,
)
where
    T: AsyncRead + AsyncWrite,
    F: FnOnce(Duplex<T>) -> Fut,
    Fut: Future<Output = WebSocketStream<Duplex<T>>>,
{
    use futures_util::StreamExt;
    let (read, write) = tokio::io::split(io);
    let captured = Arc::new(Captured::default());
    let duplex = Duplex {
        read,
        capture: Capture(captured.clone()),
        unread: Vec::new(),
        unread_at: 0,
    };
    let (sink, stream) = ws(duplex).await.split();
    (
        stream,
        SocketWire {
            sink,
            io: write,
            captured,
        },
    )
}

/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 512;

/// Writes every byte of `parts` with as few vectored writes as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < parts.len() {
        let end = (index + MAX_SLICES).min(parts.len());
        let mut slices = Vec::with_capacity(end - index);
        slices.push(IoSlice::new(&parts[index][offset..]));
        slices.extend(parts[index + 1..end].iter().map(|p| IoSlice::new(p)));
        let mut written = io.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < parts.len() && written >= parts[index].len() - offset {
            written -= parts[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

impl<T> SocketWire<T>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    async fn write_captured_and(&mut self, frames: &[WireFrame]) -> std::io::Result<()> {
        let captured = self.captured.take();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() + 1);
        if let Some(c) = &captured {
            parts.push(c);
        }
        parts.extend(frames.iter().map(|f| &f.bytes()[..]));
        write_all_vectored(&mut self.io, &parts).await?;
        self.io.flush().await
    }
}

impl<T> Wire for SocketWire<T>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    fn attach(&mut self, outbound: &Arc<Outbound>) {
        let _ = self.captured.outbound.set(outbound.clone());
    }

    async fn write(&mut self, frames: &[WireFrame]) -> Result<(), WsError> {
        Ok(self.write_captured_and(frames).await?)
    }

    async fn close(&mut self, frame: CloseFrame) -> Result<(), WsError> {
        // tungstenite writes its close frame into the capture. When the peer closed first it
        // refuses ours (`SendAfterClosing`) and its closing flushes the reply it owes instead;
        // either way it reports an error once a server's handshake is complete: what it wrote
        // is what counts.
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
        Ok(self.write_captured_and(&[]).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_encoding() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let text = "x".repeat(len);
            let frame = WireFrame::text(text.as_bytes());
            let header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(frame.len(), header + len);
            assert_eq!(decode(frame.bytes()), vec![Message::text(text)]);
        }
        let close = WireFrame::from(Message::Close(Some(CloseFrame {
            code: 4008.into(),
            reason: "slow".into(),
        })));
        assert_eq!(&close.bytes()[..4], &[0x88, 6, 0x0f, 0xa8]);
    }

    #[tokio::test]
    async fn small_reads_take_every_byte_in_order_and_keep_no_buffer_once_taken() {
        use tokio::io::AsyncReadExt;
        let (mut peer, socket) = tokio::io::duplex(64 << 10);
        let (read, _write) = tokio::io::split(socket);
        let mut duplex = Duplex {
            read,
            capture: Capture(Arc::new(Captured::default())),
            unread: Vec::new(),
            unread_at: 0,
        };
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        // Small reads (tungstenite's buffer) and, in between, one larger than a socket read.
        let (mut small, mut large) = ([0u8; 100], vec![0u8; 2 * SOCKET_READ_BYTES]);
        for i in 0.. {
            let n = if i % 50 == 49 && duplex.unread.is_empty() {
                let n = duplex.read(&mut large).await.unwrap();
                got.extend_from_slice(&large[..n]);
                n
            } else {
                let n = duplex.read(&mut small).await.unwrap();
                got.extend_from_slice(&small[..n]);
                n
            };
            if duplex.unread_at == 0 {
                assert_eq!(duplex.unread.capacity(), duplex.unread.len());
            }
            if n == 0 {
                break;
            }
        }
        assert_eq!(got, sent);
        assert_eq!(duplex.unread.capacity(), 0, "nothing kept once taken");
    }

    #[tokio::test]
    async fn a_vectored_write_that_stops_anywhere_still_writes_every_byte_in_order() {
        // A writer that takes at most 7 bytes per call, across buffer boundaries.
        struct Trickle(Vec<u8>);
        impl AsyncWrite for Trickle {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                let n = buf.len().min(7);
                self.0.extend_from_slice(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                let mut left = 7;
                for b in bufs {
                    let n = b.len().min(left);
                    self.0.extend_from_slice(&b[..n]);
                    left -= n;
                    if left == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(7 - left))
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let parts: Vec<Vec<u8>> = (0..700u32)
            .map(|i| i.to_string().into_bytes().repeat((i % 5) as usize))
            .collect();
        let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let mut out = Trickle(Vec::new());
        write_all_vectored(&mut out, &slices).await.unwrap();
        assert_eq!(out.0, parts.concat());
    }
}
