//! The listeners: the main port (WebSocket upgrades on `WS_PATH` and the HTTP API, over TLS when
//! `SSL_ENABLED`) and the admin port (`/metrics`, `/healthz`, `/readyz`, always plain HTTP), both
//! on hyper, and the WebSocket handshake.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::BreakerState;
use bellhop_protocol::{Codec, ErrorCode, MSGPACK_SUBPROTOCOL};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::auth::AuthError;
use crate::http::{error_response, json, request_token, with_status, Body};
use crate::limits::Refusal;
use crate::node::{ms_ceil, Node};
use crate::session::{self, Opening};
use crate::tls::Terminator;

/// Accepts connections on `listener` until `stop` turns true, serving each with `handler`, over
/// TLS when `tls` is given. Each connection runs in its own task from the moment it is accepted:
/// the TLS handshake (bounded by its timeout) and the request head (bounded by
/// `header_read_timeout`) are waited for there, so a slow or hostile client never holds up the
/// loop.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: Duration,
    tls: Option<Terminator>,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    loop {
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, remote, header_read_timeout, handler).await,
                Some(tls) => {
                    if let Some(stream) = tls.handshake(stream, remote).await {
                        serve_connection(stream, remote, header_read_timeout, handler).await;
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 (with upgrades) on one connection, plain or TLS, until it ends.
async fn serve_connection<S, F, Fut>(
    stream: S,
    remote: SocketAddr,
    header_read_timeout: Duration,
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
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, %remote, "http connection ended with an error");
    }
}

/// Routes a request on the main port.
pub(crate) async fn main_handler(
    node: Arc<Node>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path();
    if path == node.config.ws_path {
        return upgrade(node, req, remote);
    }
    if path.starts_with("/api/") {
        return crate::api::handle(node, req).await;
    }
    with_status(
        error_response(&node, ErrorCode::BadRequest, "not found", None),
        StatusCode::NOT_FOUND,
    )
}

/// Validates a WebSocket upgrade, answers 101, and runs the session on the upgraded socket.
fn upgrade(node: Arc<Node>, mut req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let reject = |node: &Node, reason: &str, code: ErrorCode, message: &str| {
        node.metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
        error_response(node, code, message, None)
    };
    if !node.is_ready() {
        node.metrics
            .connections_rejected
            .with_label_values(&["draining"])
            .inc();
        return error_response(
            &node,
            ErrorCode::Unavailable,
            "node is draining: connect to another node",
            Some(1000),
        );
    }
    // Limits first: a flood must cost as little as possible, so before the token is verified.
    let client = node.limits.client_ip(remote, req.headers());
    if let Err(refusal) = node.limits.check_connection(client) {
        return refuse_rate_limited(&node, client, refusal);
    }
    if !origin_allowed(&node.config.allowed_origins, req.headers()) {
        return reject(
            &node,
            "origin",
            ErrorCode::Forbidden,
            "this Origin may not open connections",
        );
    }
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let is_upgrade = req.method() == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket");
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return reject(
            &node,
            "bad_request",
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade request",
        );
    };
    if !is_upgrade {
        return reject(
            &node,
            "bad_request",
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade (version 13)",
        );
    }
    if !version_ok {
        // RFC 6455 §4.2.2: 426 with the versions the server speaks, so the client can retry.
        let mut response = with_status(
            reject(
                &node,
                "bad_request",
                ErrorCode::BadRequest,
                "unsupported WebSocket version: this server speaks version 13",
            ),
            StatusCode::UPGRADE_REQUIRED,
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let principal = match request_token(&req) {
        Some(token) => match node.verifier.verify(&token) {
            Ok(p) => Some(p),
            Err(e) => {
                let message = match e {
                    AuthError::Expired => "token expired".to_string(),
                    other => other.to_string(),
                };
                return reject(&node, "unauthorized", ErrorCode::Unauthorized, &message);
            }
        },
        None => None,
    };
    let Ok(permit) = node.slots.clone().try_acquire_owned() else {
        node.metrics
            .connections_rejected
            .with_label_values(&["capacity"])
            .inc();
        return error_response(
            &node,
            ErrorCode::Unavailable,
            "node at capacity: try another node",
            Some(1000),
        );
    };
    let msgpack = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == MSGPACK_SUBPROTOCOL);
    let codec = if msgpack { Codec::MsgPack } else { Codec::Json };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = node.config.max_frame_bytes;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, %remote, "upgrade failed");
                return;
            }
        };
        // tungstenite's default read buffer is 128 KiB per connection, allocated up front; clients
        // send small frames, and the buffer grows for a large one (up to the frame limit).
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let opening = Opening {
            principal,
            codec,
            permit,
        };
        if let Some(mut ws) = session::run(node, ws, opening).await {
            linger(ws.get_mut()).await;
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if msgpack {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(MSGPACK_SUBPROTOCOL),
        );
    }
    response
}

/// Read buffer of a WebSocket connection, and how much one read asks the socket for: client
/// frames are small, and a large one only takes more reads (the buffer grows to hold it).
const READ_BUFFER_BYTES: usize = 1024;

/// Whether a request's `Origin` may open a connection: any when no list is configured; a
/// request without `Origin` (not a browser) is allowed.
fn origin_allowed(allowed: &[String], headers: &hyper::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/'))),
        Some(Err(_)) => false,
    }
}

/// HTTP 429 with `Retry-After` for an address over its connection rate or banned; counts the
/// refusal towards a ban.
fn refuse_rate_limited(node: &Node, client: IpAddr, refusal: Refusal) -> Response<Body> {
    let (what, wait, message) = match refusal {
        Refusal::RateLimited(wait) => (
            "connection",
            wait,
            format!(
                "too many connection attempts: at most {} a minute per address",
                node.config.rate_limits.connections_per_ip_per_minute
            ),
        ),
        Refusal::Banned(left) => (
            "banned",
            left,
            "this address is refused for a while after too many connection attempts".to_string(),
        ),
    };
    node.metrics.rate_limited.with_label_values(&[what]).inc();
    node.metrics
        .connections_rejected
        .with_label_values(&["rate_limited"])
        .inc();
    if matches!(refusal, Refusal::RateLimited(_)) && node.limits.strike(client) {
        node.metrics.bans.inc();
        tracing::warn!(
            %client,
            seconds = node.config.rate_limits.ban_duration.as_secs(),
            "address banned after repeatedly exceeding the connection rate"
        );
        node.announce_ban(client);
    }
    error_response(node, ErrorCode::RateLimited, &message, Some(ms_ceil(wait)))
}

/// Longest a finished WebSocket connection keeps reading what its peer still sends.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Ends a connection whose close frame was sent: stops writing (FIN), then reads and discards
/// whatever the peer still sends until it closes too, for at most [`CLOSE_LINGER`]. Dropping a
/// socket with unread input makes the kernel answer with a reset, and a peer that was still
/// writing (the rest of an oversized frame, say) would then fail on its write and never read
/// the close frame that says why (1009). Found by the Autobahn run (docs/AUTOBAHN.md).
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T) {
    if io.shutdown().await.is_err() {
        return;
    }
    let mut discard = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(n) = io.read(&mut discard).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
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
                node.metrics.render(),
                "text/plain; version=0.0.4",
            )
        }
        "/healthz" => json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "node": node.config.node_id}),
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
                "node": node.config.node_id,
                "state": state,
                "connections": node.metrics.connections.get(),
                "channels": node.hub.channel_count(),
                "broker": {"breaker": breaker.as_str(), "live": if live { "healthy" } else { "reconnecting" }},
            });
            json(status, &body)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
