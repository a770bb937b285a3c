//! The HTTP API for hotel systems: publish, history and presence, with a `service` (or manager or
//! admin) bearer token. Errors are JSON bodies `{"error": {"code", "message"}}` with the status
//! of their code (400, 401, 403, 404, 405, 413, 503).

use std::sync::Arc;

use bellhop_protocol::{Channel, ErrorCode, Offset, PublishFrame, Role};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::http::{decode_path_segment, error_response, json, query_pairs, request_token, Body};
use crate::node::{Node, RequestError};

/// Answers one API request.
pub(crate) async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    match route(&node, req).await {
        Ok(response) => response,
        Err(ApiError { status, error: e }) => {
            let mut response = error_response(&node, e.code, &e.message, e.retry_after_ms);
            if let Some(status) = status {
                *response.status_mut() = status;
            }
            response
        }
    }
}

/// A failed API request: the wire error, and an HTTP status when it is not the code's own
/// (404 and 405 have no wire error code).
struct ApiError {
    status: Option<StatusCode>,
    error: RequestError,
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        ApiError {
            status: None,
            error,
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    RequestError::new(ErrorCode::BadRequest, message).into()
}

fn with_status(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status: Some(status),
        error: RequestError::new(ErrorCode::BadRequest, message),
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
        .verifier
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
            let body = read_body(node, req).await?;
            let frame: PublishFrame = serde_json::from_slice(&body)
                .map_err(|e| bad_request(format!("invalid publish body: {e}")))?;
            let (message_id, offset) = node.publish(&principal, frame).await?;
            Ok(json(
                StatusCode::OK,
                &json!({"messageId": message_id, "offset": offset}),
            ))
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
            let messages = node.history(&principal, &channel, since, limit).await?;
            Ok(json(
                StatusCode::OK,
                &json!({"channel": channel, "messages": messages}),
            ))
        }
        _ => Err(with_status(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    }
}

async fn read_body(node: &Node, req: Request<Incoming>) -> Result<bytes::Bytes, ApiError> {
    let max = node.config.max_body_bytes;
    let too_large = || {
        RequestError::new(
            ErrorCode::TooLarge,
            format!("request body exceeds {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large().into());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large().into()),
        Err(e) => Err(bad_request(format!("cannot read body: {e}"))),
    }
}
