//! The main port's own state ([`Edge`]): the node, the connections per address that are not
//! sessions yet, and the refusal log, with the checks every connection and request meets before
//! anything is spent on it. Shared by the listener ([`crate::server`]) and the WebSocket
//! handshake ([`crate::upgrade`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bellhop_protocol::ErrorCode;
use hyper::{Response, StatusCode};
use tokio::net::TcpStream;

use crate::http::{error_body, error_response, retry_after_secs, Body, RefusalLog};
use crate::limits::{PendingByAddress, PendingSlot, Refusal};
use crate::node::{ms_ceil, Node};

/// The main port's own state: the node, the pending connections per address, the refusal log.
#[derive(Debug)]
pub(crate) struct Edge {
    /// Shared state of the node.
    pub(crate) node: Arc<Node>,
    /// Connections per client address that are not sessions yet (`MAX_PENDING_PER_IP`).
    pending: Arc<PendingByAddress>,
    /// Refusals, logged at the default level but at most a few lines a second.
    pub(crate) refusals: RefusalLog,
}

impl Edge {
    pub(crate) fn new(node: Arc<Node>) -> Arc<Edge> {
        Arc::new(Edge {
            pending: PendingByAddress::new(node.config().edge.max_pending_per_ip),
            refusals: RefusalLog::new(),
            node,
        })
    }

    /// The checks a freshly accepted connection passes before anything is spent on it (no TLS
    /// handshake, not one byte read): the peer's ban, its connection-attempt rate (the attempt
    /// is counted here) and its pending connections. A trusted proxy's connections are checked
    /// per request instead, by the client address it forwards.
    pub(crate) fn admit(&self, peer: IpAddr) -> Result<Option<PendingSlot>, Refusal> {
        let limits = self.node.limits();
        if limits.trusted(peer) {
            return Ok(None);
        }
        limits.check_connection(peer)?;
        self.pending.enter(peer).map(Some).ok_or(Refusal::Pending)
    }

    /// The checks of each request (an upgrade or an API call) before its token is looked at:
    /// a direct peer's ban (its attempt was counted when it connected; a ban may have come
    /// since), or, behind a trusted proxy, the forwarded client's ban and attempt rate. Returns
    /// the client address.
    pub(crate) fn check_request(
        &self,
        remote: SocketAddr,
        headers: &hyper::HeaderMap,
    ) -> Result<IpAddr, (IpAddr, Refusal)> {
        let limits = self.node.limits();
        let peer = remote.ip().to_canonical();
        if !limits.trusted(peer) {
            return limits.check_ban(peer).map(|()| peer).map_err(|r| (peer, r));
        }
        let client = limits.client_ip(remote, headers).to_canonical();
        limits
            .check_connection(client)
            .map(|()| client)
            .map_err(|r| (client, r))
    }

    /// Counts a refusal by a limit (metrics, a strike towards a ban, the refusal log, where
    /// `answer` says what the client got) and returns the message the client gets.
    fn refused(
        &self,
        what: &'static str,
        client: IpAddr,
        refusal: Refusal,
        answer: &dyn std::fmt::Display,
    ) -> String {
        let node = &self.node;
        let limits = &node.config().rate_limits;
        let message = match refusal {
            Refusal::RateLimited(_) => format!(
                "too many connection attempts: at most {} a minute per address",
                limits.connections_per_ip_per_minute
            ),
            Refusal::Banned(_) => {
                "this address is refused for a while after too many connection attempts".into()
            }
            Refusal::Pending => format!(
                "too many connections from this address still opening: at most {}",
                node.config().edge.max_pending_per_ip
            ),
        };
        node.metrics()
            .rate_limited
            .with_label_values(&[refusal.what()])
            .inc();
        self.refusals
            .log(what, client, answer, refusal.what(), &message);
        if matches!(refusal, Refusal::RateLimited(_)) && node.limits().strike(client) {
            node.metrics().bans.inc();
            tracing::warn!(
                %client,
                seconds = limits.ban_duration.as_secs(),
                "address banned after repeatedly exceeding the connection rate"
            );
            node.announce_ban(client);
        }
        message
    }

    /// HTTP 429 with `Retry-After` for a request refused by a limit.
    pub(crate) fn refuse_request(
        &self,
        what: &'static str,
        client: IpAddr,
        refusal: Refusal,
    ) -> Response<Body> {
        let message = self.refused(what, client, refusal, &StatusCode::TOO_MANY_REQUESTS);
        error_response(
            &self.node,
            ErrorCode::RateLimited,
            &message,
            Some(ms_ceil(refusal.wait())),
        )
    }

    /// Refuses a connection the moment it was accepted. Over plain HTTP it gets a complete 429
    /// response, written without waiting (what the client already sent is read and dropped
    /// first, so the close is a FIN and the response arrives); over TLS it is closed before
    /// the handshake, which is the point: a refused address costs no handshake.
    pub(crate) fn refuse_connection(
        &self,
        stream: TcpStream,
        peer: IpAddr,
        refusal: Refusal,
        tls: bool,
    ) {
        let answer: &dyn std::fmt::Display = if tls {
            &"closed before the TLS handshake"
        } else {
            &StatusCode::TOO_MANY_REQUESTS
        };
        let message = self.refused("connection", peer, refusal, answer);
        let reason = match refusal {
            Refusal::Pending => "pending",
            _ => "rate_limited",
        };
        self.node
            .metrics()
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
        if tls {
            return;
        }
        self.node.count_error(ErrorCode::RateLimited);
        let mut sink = [0u8; 2048];
        for _ in 0..8 {
            match stream.try_read(&mut sink) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        let wait = ms_ceil(refusal.wait());
        let body = error_body(ErrorCode::RateLimited, &message, Some(wait)).to_string();
        let response = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            retry_after_secs(wait),
            body.len()
        );
        let _ = stream.try_write(response.as_bytes());
    }
}
