//! The listeners: the main port (WebSocket upgrades on `WS_PATH` and the HTTP API, over TLS when
//! `SSL_ENABLED`) and the admin port (`/metrics`, `/healthz`, `/readyz`, always plain HTTP), both
//! on hyper: accepting, the limits a connection meets before anything is spent on it, HTTP/1
//! serving and routing. The WebSocket handshake itself is in [`crate::upgrade`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bellhop_dispatcher::BreakerState;
use bellhop_protocol::ErrorCode;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::api;
use crate::edge::Edge;
use crate::http::{error_response, json, with_status, Body};
use crate::limits::PendingSlot;
use crate::node::Node;
use crate::tls::Terminator;

/// How the HTTP side of a listener is bounded (from [`crate::GatewayConfig`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpSettings {
    /// Slowest time allowed to send a request head, and longest a keep-alive connection idles.
    pub(crate) header_read_timeout: Duration,
    /// Largest request head (`MAX_HEADER_BYTES`).
    pub(crate) max_header_bytes: usize,
    /// Most connections accepted and not yet upgraded or closed (`MAX_PENDING_CONNECTIONS`).
    pub(crate) max_pending: usize,
    /// Longest a response write may make no progress before the connection is dropped.
    pub(crate) write_timeout: Duration,
}

impl HttpSettings {
    pub(crate) fn of(config: &crate::GatewayConfig) -> Self {
        HttpSettings {
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.edge.max_header_bytes,
            max_pending: config.edge.max_pending,
            write_timeout: config.write_timeout,
        }
    }
}

/// Accepts connections on `listener` until `stop` turns true, serving each with `handler`, over
/// TLS when `tls` is given.
///
/// A connection costs nothing until it may: the loop waits for one of `max_pending` permits
/// before it accepts (beyond that, connections wait in the kernel's backlog), and with an
/// [`Edge`] (the main port) refuses an address that is banned, over its attempt rate or at its
/// pending cap before the TLS handshake and before reading a byte. Each admitted connection
/// then runs in its own task: the TLS handshake (bounded by its timeout) and the request head
/// (bounded by `header_read_timeout` and `max_header_bytes`) are waited for there, so a slow or
/// hostile client never holds up the loop. The permit and the address's place are given back
/// when the connection is upgraded to a WebSocket or closed.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    settings: HttpSettings,
    tls: Option<Terminator>,
    edge: Option<Arc<Edge>>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let pending = Arc::new(Semaphore::new(settings.max_pending));
    loop {
        let permit = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            permit = pending.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pending = match &edge {
            None => Pending::new(permit, None, None),
            Some(edge) => {
                let peer = remote.ip().to_canonical();
                match edge.admit(peer) {
                    Ok(slot) => Pending::new(
                        permit,
                        slot,
                        Some(edge.node.metrics().pending_connections.clone()),
                    ),
                    Err(refusal) => {
                        edge.refuse_connection(stream, peer, refusal, tls.is_some());
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, remote, settings, handler).await,
                Some(tls) => {
                    if let Some(stream) = tls.handshake(stream, remote).await {
                        serve_connection(stream, remote, settings, handler).await;
                    }
                }
            }
            // Upgraded (the session holds a `MAX_CONNECTIONS` slot now) or closed.
            drop(pending);
        });
    }
}

/// One pending connection: its place in the listener's total and in its address's count, and
/// the gauge that shows them (main port).
struct Pending {
    _permit: OwnedSemaphorePermit,
    _slot: Option<PendingSlot>,
    gauge: Option<IntGauge>,
}

impl Pending {
    fn new(
        permit: OwnedSemaphorePermit,
        slot: Option<PendingSlot>,
        gauge: Option<IntGauge>,
    ) -> Self {
        if let Some(g) = &gauge {
            g.inc();
        }
        Pending {
            _permit: permit,
            _slot: slot,
            gauge,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection, plain or TLS, until it ends or is
/// upgraded.
async fn serve_connection<S, F, Fut>(
    stream: S,
    remote: SocketAddr,
    settings: HttpSettings,
    handler: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, remote).await) }
    });
    let upgraded = Arc::new(AtomicBool::new(false));
    let stream = WriteDeadline {
        io: stream,
        timeout: settings.write_timeout,
        stalled: None,
        upgraded: upgraded.clone(),
    };
    // hyper checks the header size of a complete head only; the buffer's cap is what bounds
    // an unfinished one (hyper's default is ~400 KB, and 8 KiB its smallest).
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.max_header_bytes.max(MIN_HYPER_BUFFER))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    // From here a WebSocket session (if any) writes with its own timeouts.
    upgraded.store(true, Ordering::Relaxed);
    if let Err(e) = served {
        tracing::debug!(error = %e, %remote, "http connection ended with an error");
    }
}

/// A connection's IO before it is upgraded: a write or flush that makes no progress for
/// `timeout` fails, so a client that stops reading (say, after pipelining thousands of requests,
/// no token needed) cannot hold its connection and its pending place forever. hyper has no write
/// timeout of its own, and the head timeout does not run while a response is being written.
/// After an upgrade it only passes through: the session has its own write timeout (close 4008).
struct WriteDeadline<S> {
    io: S,
    timeout: Duration,
    /// Armed when a write is first left pending, disarmed by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set once hyper handed the connection over to a WebSocket session.
    upgraded: Arc<AtomicBool>,
}

impl<S: AsyncWrite + Unpin> WriteDeadline<S> {
    /// What to answer for a write that made no progress now.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.upgraded.load(Ordering::Relaxed) {
            self.stalled = None;
            return Poll::Pending;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading: write timed out",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(result, cx)
    }
}

/// hyper's smallest read buffer cap.
const MIN_HYPER_BUFFER: usize = 8192;

/// Routes a request on the main port.
pub(crate) async fn main_handler(
    edge: Arc<Edge>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path();
    if path == edge.node.config().ws_path {
        return crate::upgrade::upgrade(&edge, req, remote);
    }
    if path.starts_with("/api/") {
        return api_request(&edge, req, remote).await;
    }
    with_status(
        error_response(&edge.node, ErrorCode::BadRequest, "not found", None),
        StatusCode::NOT_FOUND,
    )
}

/// An HTTP API request: the address's limits first, then CORS (a preflight needs no token),
/// then the API itself; responses to an allowed origin carry the CORS headers.
async fn api_request(edge: &Edge, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let node = &edge.node;
    let cors = api::cors_origin(&node.config().edge.cors_allowed_origins, req.headers());
    let mut response = match edge.check_request(remote, req.headers()) {
        Err((client, refusal)) => edge.refuse_request("HTTP API request", client, refusal),
        Ok(client) if api::is_preflight(&req) => {
            api::preflight(node, &edge.refusals, client, cors.as_ref())
        }
        Ok(client) => api::handle(node.clone(), &edge.refusals, client, req).await,
    };
    if let Some(origin) = cors {
        api::allow_origin(&mut response, origin);
    }
    response
}

/// Routes a request on the admin port.
pub(crate) async fn admin_handler(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    match req.uri().path() {
        "/metrics" => {
            node.breaker_state();
            node.broker_live();
            text(
                StatusCode::OK,
                node.metrics().render(),
                "text/plain; version=0.0.4",
            )
        }
        "/healthz" => json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "node": node.config().node_id}),
        ),
        "/readyz" => {
            // An open breaker leaves the node ready (the body says `degraded`): every node shares
            // the same Redis, so turning them all unready at once would only take the whole fleet
            // out of the load balancer, and no other node could do better. Staying in, a node
            // keeps its connections and answers at once with `unavailable` and a retry hint.
            let ready = node.is_ready();
            let breaker = node.breaker_state();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let live = node.broker_live();
            let state = match (ready, breaker, live) {
                (false, _, _) => "draining",
                (true, BreakerState::Closed, true) => "serving",
                (true, _, _) => "degraded",
            };
            let body = serde_json::json!({
                "ready": ready,
                "node": node.config().node_id,
                "state": state,
                "connections": node.metrics().connections.get(),
                "channels": node.hub().channel_count(),
                "broker": {"breaker": breaker.as_str(), "live": if live { "healthy" } else { "reconnecting" }},
            });
            json(status, &body)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
