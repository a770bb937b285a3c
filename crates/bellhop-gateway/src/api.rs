//! The HTTP API for hotel systems: publish, history and presence, with a `service` (or manager or
//! admin) bearer token. Errors are JSON bodies `{"error": {"code", "message"}}` with the status
//! of their code (400, 401, 403, 404, 405, 408, 413, 429, 503). Browser pages of the origins in
//! `CORS_ALLOWED_ORIGINS` may call it (CORS, with preflights answered without a token).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::requests::{Filter, Status, MAX_LIST};
use bellhop_protocol::{Channel, ErrorCode, Offset, PublishFrame, Role};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::http::{
    decode_path_segment, error_response, json, query_pairs, request_token, Body, RefusalLog,
};
use crate::node::{Node, RequestError};

/// Answers one API request from `client`, whose address limits were checked: the token, then
/// the route, all within `HTTP_REQUEST_TIMEOUT_SECONDS` of the request head. Refusals of the
/// token or by a limit are logged.
pub(crate) async fn handle(
    node: Arc<Node>,
    refusals: &RefusalLog,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let deadline = node.config().edge.request_timeout;
    let Ok(outcome) = tokio::time::timeout(deadline, route(&node, req)).await else {
        let message = format!(
            "the request was not answered within {} s: retry it (a publish with the same Idempotency-Key is stored once)",
            deadline.as_secs_f64()
        );
        let mut response = error_response(&node, ErrorCode::Unavailable, &message, Some(1000));
        close_after(&mut response);
        return response;
    };
    match outcome {
        Ok(response) => response,
        Err(ApiError {
            status,
            error: e,
            close,
        }) => {
            let mut response = error_response(&node, e.code, &e.message, e.retry_after_ms);
            if let Some(status) = status {
                *response.status_mut() = status;
            }
            if close {
                close_after(&mut response);
            }
            if matches!(
                e.code,
                ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::RateLimited
            ) {
                let status = response.status();
                refusals.log(
                    "HTTP API request",
                    client,
                    &status,
                    e.code.as_str(),
                    &e.message,
                );
            }
            response
        }
    }
}

/// Tells the client the connection ends with this response (its body was not read to the end).
fn close_after(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// A failed API request: the wire error, an HTTP status when it is not the code's own (404,
/// 405 and 408 have no wire error code), and whether the connection is closed after it.
struct ApiError {
    status: Option<StatusCode>,
    error: RequestError,
    close: bool,
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        ApiError {
            status: None,
            error,
            close: false,
        }
    }
}

/// The `Access-Control-Allow-Origin` of a request whose `Origin` is in `CORS_ALLOWED_ORIGINS`
/// (`allowed`): that origin, or `*` when the list allows any; `None` for any other request.
pub(crate) fn cors_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    if allowed.iter().any(|a| a == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let text = origin.to_str().ok()?.trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Browsers send it without credentials, so it is answered
/// without a token.
pub(crate) fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Answers a preflight: 204 with what a page of an allowed origin may send (the CORS headers
/// themselves are added by [`allow_origin`]), 403 for any other origin.
pub(crate) fn preflight(
    node: &Node,
    refusals: &RefusalLog,
    client: IpAddr,
    origin: Option<&HeaderValue>,
) -> Response<Body> {
    if origin.is_none() {
        let message = "this Origin may not call the HTTP API (CORS_ALLOWED_ORIGINS)";
        refusals.log(
            "HTTP API request",
            client,
            &StatusCode::FORBIDDEN,
            "cors",
            message,
        );
        return error_response(node, ErrorCode::Forbidden, message, None);
    }
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE.as_secs()),
    );
    response
}

/// Lets a page of `origin` read `response` (and its `Retry-After`). No credentials: the API's
/// token is a header the page sets, never a cookie.
pub(crate) fn allow_origin(response: &mut Response<Body>, origin: HeaderValue) {
    let h = response.headers_mut();
    if origin != "*" {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
}

fn bad_request(message: impl Into<String>) -> ApiError {
    RequestError::new(ErrorCode::BadRequest, message).into()
}

fn with_status(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status: Some(status),
        error: RequestError::new(ErrorCode::BadRequest, message),
        close: false,
    }
}

async fn route(node: &Node, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let token = request_token(&req).ok_or_else(|| {
        RequestError::new(
            ErrorCode::Unauthorized,
            "missing token: send Authorization: Bearer <jwt>",
        )
    })?;
    let principal = node
        .verifier()
        .verify(&token)
        .map_err(|e| RequestError::new(ErrorCode::Unauthorized, e.to_string()))?;
    if !matches!(principal.role, Role::Service | Role::Manager | Role::Admin) {
        return Err(RequestError::new(
            ErrorCode::Forbidden,
            format!(
                "the HTTP API needs a service, manager or admin token, not {}",
                principal.role.as_str()
            ),
        )
        .into());
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "publish"] => {
            if method != Method::POST {
                return Err(with_status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use POST",
                ));
            }
            let header_key = match req.headers().get("idempotency-key") {
                None => None,
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| bad_request("Idempotency-Key must be plain ASCII"))?
                        .to_owned(),
                ),
            };
            let body = read_body(node, req).await?;
            let mut frame: PublishFrame = serde_json::from_slice(&body)
                .map_err(|e| bad_request(format!("invalid publish body: {e}")))?;
            if let Some(key) = header_key {
                match &frame.idempotency_key {
                    Some(in_body) if *in_body != key => {
                        return Err(bad_request(
                            "the Idempotency-Key header and the body's idempotencyKey differ",
                        ))
                    }
                    _ => frame.idempotency_key = Some(key),
                }
            }
            let acked = node.publish(&principal, frame).await?;
            let mut body = json!({"messageId": acked.message_id, "offset": acked.offset});
            if acked.duplicate {
                body["duplicate"] = true.into();
            }
            Ok(json(StatusCode::OK, &body))
        }
        ["api", "v1", "channels", channel, what @ ("history" | "presence")] => {
            if method != Method::GET {
                return Err(with_status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use GET",
                ));
            }
            let channel: Channel = decode_path_segment(channel)
                .parse()
                .map_err(|e| bad_request(format!("{e}")))?;
            if *what == "presence" {
                let users = node.presence(&principal, &channel).await?;
                return Ok(json(
                    StatusCode::OK,
                    &json!({"channel": channel, "users": users}),
                ));
            }
            let mut since = None;
            let mut limit = None;
            for (k, v) in query_pairs(&query) {
                match k.as_str() {
                    "since" => {
                        since = Some(
                            v.parse::<Offset>()
                                .map_err(|e| bad_request(e.to_string()))?,
                        )
                    }
                    "limit" => {
                        limit = Some(
                            v.parse::<u32>()
                                .map_err(|_| bad_request("limit must be a number from 1 to 100"))?,
                        )
                    }
                    _ => {}
                }
            }
            let page = node.history(&principal, &channel, since, limit).await?;
            let mut body = json!({"channel": channel, "messages": page.messages});
            if page.more {
                body["more"] = true.into();
            }
            Ok(json(StatusCode::OK, &body))
        }
        ["api", "v1", "requests"] => {
            if method != Method::GET {
                return Err(with_status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use GET",
                ));
            }
            let mut filter = Filter {
                limit: 100,
                ..Filter::default()
            };
            for (k, v) in query_pairs(&query) {
                match k.as_str() {
                    "status" => {
                        filter.status = Some(Status::parse(&v).ok_or_else(|| {
                            bad_request(
                            "status must be open, acknowledged, in_progress, resolved or cancelled",
                        )
                        })?)
                    }
                    "dept" => filter.department = Some(valid_id("dept", v)?),
                    "room" => filter.room = Some(valid_id("room", v)?),
                    "limit" => {
                        filter.limit = v
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=MAX_LIST).contains(n))
                            .ok_or_else(|| {
                                bad_request(format!("limit must be a number from 1 to {MAX_LIST}"))
                            })?
                    }
                    _ => {}
                }
            }
            let found = node
                .requests()
                .list(&principal.property, &filter)
                .await
                .map_err(RequestError::from)?;
            Ok(json(StatusCode::OK, &json!({ "requests": found })))
        }
        ["api", "v1", "requests", id] => {
            if method != Method::GET {
                return Err(with_status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use GET",
                ));
            }
            let id = decode_path_segment(id);
            match node
                .requests()
                .get(&principal.property, &id)
                .await
                .map_err(RequestError::from)?
            {
                Some(request) => Ok(json(StatusCode::OK, &json!({ "request": request }))),
                None => Err(with_status(
                    StatusCode::NOT_FOUND,
                    format!(
                        "unknown request {:?}",
                        id.chars().take(64).collect::<String>()
                    ),
                )),
            }
        }
        _ => Err(with_status(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    }
}

/// A query value that must be an id (`[A-Za-z0-9_.-]{1,64}`).
fn valid_id(name: &str, value: String) -> Result<String, ApiError> {
    if bellhop_protocol::is_valid_id(&value) {
        Ok(value)
    } else {
        Err(bad_request(format!(
            "{name} must match [A-Za-z0-9_.-]{{1,64}}"
        )))
    }
}

/// Reads a request body of at most `max_body_bytes`, whole within `HTTP_BODY_TIMEOUT_SECONDS`.
async fn read_body(node: &Node, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let max = node.config().max_body_bytes;
    let timeout = node.config().edge.body_timeout;
    let too_large = || ApiError {
        close: true,
        ..RequestError::new(
            ErrorCode::TooLarge,
            format!("request body exceeds {max} bytes"),
        )
        .into()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    match read_limited(req.into_body(), declared.unwrap_or(0), max, timeout).await {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge) => Err(too_large()),
        Err(BodyError::Broken(e)) => Err(bad_request(format!("cannot read body: {e}"))),
        Err(BodyError::TimedOut) => Err(ApiError {
            status: Some(StatusCode::REQUEST_TIMEOUT),
            close: true,
            ..bad_request(format!(
                "request body not received within {} s",
                timeout.as_secs_f64()
            ))
        }),
    }
}

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    /// More than the limit.
    TooLarge,
    /// Not all there within the timeout.
    TimedOut,
    /// The connection failed or the framing was invalid.
    Broken(String),
}

/// Reads `body` (at most `max` bytes, all of it within `timeout`) into one buffer of `size_hint`
/// bytes to start (the declared length, already checked against `max`).
///
/// Each chunk is copied into the buffer and dropped at once. Keeping the chunks (as `collect()`
/// does) kept hyper's whole read buffer alive for each of them, 8 KiB per chunk: a body sent one
/// byte at a time cost 8 KiB a byte (issue 10, item 7).
async fn read_limited<B>(
    body: B,
    size_hint: usize,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(Limited::new(body, max));
    let mut buf = Vec::with_capacity(size_hint.min(max));
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                buf.extend_from_slice(data);
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Err(_) => Err(BodyError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;

    use super::*;

    /// A body of one-byte chunks, each a slice of its own 8 KiB allocation (as hyper's are of its
    /// read buffer). Asking for the next chunk while the reader still holds the previous one is
    /// recorded: that is the per-chunk growth.
    struct Dribble {
        sent: Vec<Bytes>,
        left: usize,
        held: usize,
    }

    impl hyper::body::Body for Dribble {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(previous) = self.sent.last() {
                if !previous.is_unique() {
                    self.held += 1;
                }
            }
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            let allocation = Bytes::from(vec![b'x'; 8192]);
            let chunk = allocation.slice(0..1);
            self.sent.push(allocation);
            Poll::Ready(Some(Ok(Frame::data(chunk))))
        }
    }

    #[tokio::test]
    async fn a_body_of_tiny_chunks_is_copied_and_each_chunk_dropped_at_once() {
        let mut body = Dribble {
            sent: Vec::new(),
            left: 1000,
            held: 0,
        };
        let read = read_limited(&mut body, 0, 64 * 1024, Duration::from_secs(5)).await;
        assert_eq!(read.unwrap(), vec![b'x'; 1000]);
        assert_eq!(body.held, 0, "chunks held while the next was read");
        assert!(body.sent.iter().all(Bytes::is_unique), "no chunk kept");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let body = http_body_util::Full::new(Bytes::from(vec![b'x'; 101]));
        let read = read_limited(body, 0, 100, Duration::from_secs(5)).await;
        assert_eq!(read, Err(BodyError::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_times_out() {
        use futures_util::StreamExt;
        let first = Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"{")));
        let never_more = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
        let body = http_body_util::StreamBody::new(never_more);
        let started = tokio::time::Instant::now();
        let read = read_limited(body, 10, 100, Duration::from_secs(10)).await;
        assert_eq!(read, Err(BodyError::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn cors_allows_listed_origins_only() {
        let headers = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            h
        };
        let listed = vec!["https://app.hotel.example".to_string()];
        assert_eq!(
            cors_origin(&listed, &headers("https://app.hotel.example")).unwrap(),
            "https://app.hotel.example"
        );
        assert!(cors_origin(&listed, &headers("https://evil.example")).is_none());
        assert!(cors_origin(&listed, &HeaderMap::new()).is_none());
        assert!(cors_origin(&[], &headers("https://app.hotel.example")).is_none());
        let any = vec!["*".to_string()];
        assert_eq!(
            cors_origin(&any, &headers("https://x.example")).unwrap(),
            "*"
        );
    }
}
