//! The WebSocket upgrade on the main port: the request's checks (readiness, the client's limits,
//! its origin, the handshake headers, its token, a connection slot), the `101` answer, the session
//! on the upgraded socket, and the linger after its close. It never serves HTTP or touches the
//! listener: [`crate::server`] routes a request on `WS_PATH` here.

use std::net::SocketAddr;
use std::time::Duration;

use bellhop_protocol::{Codec, ErrorCode, MSGPACK_SUBPROTOCOL};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::auth::AuthError;
use crate::edge::Edge;
use crate::http::{error_response, request_token, Body};
use crate::session::{self, Opening};

/// Validates a WebSocket upgrade, answers 101, and runs the session on the upgraded socket.
pub(crate) fn upgrade(
    edge: &Edge,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let node = edge.node.clone();
    if !node.is_ready() {
        node.metrics()
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
    let client = match edge.check_request(remote, req.headers()) {
        Ok(client) => client,
        Err((client, refusal)) => {
            node.metrics()
                .connections_rejected
                .with_label_values(&["rate_limited"])
                .inc();
            return edge.refuse_request("upgrade", client, refusal);
        }
    };
    // Every other refusal: counted by reason, logged, answered with the code's JSON body (and
    // `status` when it is not the code's own).
    let reject = |reason: &str, code: ErrorCode, status: Option<StatusCode>, message: &str| {
        node.metrics()
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
        let retry = (code == ErrorCode::Unavailable).then_some(1000);
        let mut response = error_response(&node, code, message, retry);
        if let Some(status) = status {
            *response.status_mut() = status;
        }
        edge.refusals
            .log("upgrade", client, &response.status(), reason, message);
        response
    };
    if !origin_allowed(&node.config().allowed_origins, req.headers()) {
        return reject(
            "origin",
            ErrorCode::Forbidden,
            None,
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
            "bad_request",
            ErrorCode::BadRequest,
            None,
            "expected a WebSocket upgrade request",
        );
    };
    if !is_upgrade {
        return reject(
            "bad_request",
            ErrorCode::BadRequest,
            None,
            "expected a WebSocket upgrade (version 13)",
        );
    }
    if !version_ok {
        // RFC 6455 §4.2.2: 426 with the versions the server speaks, so the client can retry.
        let mut response = reject(
            "bad_request",
            ErrorCode::BadRequest,
            Some(StatusCode::UPGRADE_REQUIRED),
            "unsupported WebSocket version: this server speaks version 13",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let principal = match request_token(&req) {
        Some(token) => match node.verifier().verify(&token) {
            Ok(p) => Some(Box::new(p)),
            Err(e) => {
                let message = match e {
                    AuthError::Expired => "token expired".to_string(),
                    other => other.to_string(),
                };
                return reject("unauthorized", ErrorCode::Unauthorized, None, &message);
            }
        },
        None => None,
    };
    let Some(permit) = node.connections().try_reserve() else {
        return reject(
            "capacity",
            ErrorCode::Unavailable,
            None,
            "node at capacity: try another node",
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
    let opening = Opening {
        principal,
        codec,
        permit,
    };
    tokio::spawn(async move {
        // What only the handshake needs is scoped to it, and the session future is made in the
        // same scope: while the session runs, the task holds that future and nothing else.
        let session = {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, %remote, "upgrade failed");
                    return;
                }
            };
            // tungstenite's default read buffer is 128 KiB per connection, allocated up front;
            // clients send small frames, and the buffer grows for a large one (up to the frame
            // limit).
            let max = node.config().max_frame_bytes;
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER_BYTES)
                .max_message_size(Some(max))
                .max_frame_size(Some(max));
            // tungstenite reads and handles the closing handshake; the session's writer writes
            // the socket itself (crate::wire).
            let (stream, wire) = crate::wire::split(
                |io| WebSocketStream::from_raw_socket(io, Role::Server, Some(config)),
                TokioIo::new(upgraded),
            )
            .await;
            session::run(node, stream, wire, opening)
        };
        // Boxed, and made before it is awaited: the task would otherwise keep room for the
        // linger and for what the session hands back all the session long.
        let finish = session.await.map(|(stream, wire)| {
            Box::pin(async move {
                if let Ok(mut ws) = stream.reunite(wire.sink) {
                    let mut write = wire.io;
                    linger(&mut ws.get_mut().read, &mut write).await;
                }
            })
        });
        if let Some(finish) = finish {
            finish.await;
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

/// tungstenite's read buffer of a WebSocket connection, and how much it takes at once: client
/// frames are small, and the buffer grows to hold a large one. It is filled from the socket
/// through `wire::Duplex`, which reads up to 4 KiB at a time and keeps what does not fit only
/// until tungstenite takes it.
const READ_BUFFER_BYTES: usize = 128;

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

/// Longest a finished WebSocket connection keeps reading what its peer still sends.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Ends a connection whose close frame was sent: stops writing (FIN), then reads and discards
/// whatever the peer still sends until it closes too, for at most [`CLOSE_LINGER`]. Dropping a
/// socket with unread input makes the kernel answer with a reset, and a peer that was still
/// writing (the rest of an oversized frame, say) would then fail on its write and never read
/// the close frame that says why (1009). Found by the Autobahn run (docs/AUTOBAHN.md).
async fn linger<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(read: &mut R, write: &mut W) {
    if write.shutdown().await.is_err() {
        return;
    }
    let mut discard = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(n) = read.read(&mut discard).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}
