//! What the main port's two kinds of request (WebSocket upgrades in `server`, the HTTP API in
//! `api`) have in common: the response body type, JSON and error responses, the bearer token of
//! a request, and percent-decoding of paths and queries. It depends on neither of them, so
//! `server` routes to `api` without the two depending on each other.

use bellhop_protocol::ErrorCode;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

use crate::limits::LogThrottle;
use crate::node::Node;

/// Refusals logged at the default level (`info`), with the client address, what the client got
/// (`answer`: a status, or a closed connection), the reason and the message; at most [`REFUSALS_LOGGED_PER_SECOND`] lines a second,
/// the next line saying how many were left out (`suppressed`).
#[derive(Debug)]
pub(crate) struct RefusalLog {
    throttle: LogThrottle,
}

/// Refusal log lines a second, at most.
pub(crate) const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

impl RefusalLog {
    pub(crate) fn new() -> Self {
        RefusalLog {
            throttle: LogThrottle::new(REFUSALS_LOGGED_PER_SECOND),
        }
    }

    /// Logs one refusal of `what` (`connection`, `upgrade`, `HTTP API request`), unless this
    /// second's lines are used up.
    pub(crate) fn log(
        &self,
        what: &'static str,
        client: std::net::IpAddr,
        answer: &dyn std::fmt::Display,
        reason: &str,
        detail: &str,
    ) {
        if let Some(suppressed) = self.throttle.admit() {
            tracing::info!(%client, %answer, reason, detail, suppressed, "{what} refused");
        }
    }
}

/// The response body type of every handler.
pub(crate) type Body = Full<Bytes>;

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON error body `{"error": {"code": "...", "message": "...", "retryAfterMs": n}}`.
pub(crate) fn error_body(
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) -> serde_json::Value {
    let mut body = serde_json::json!({"error": {"code": code, "message": message}});
    if let Some(ms) = retry_after_ms {
        body["error"]["retryAfterMs"] = ms.into();
    }
    body
}

/// `Retry-After` in whole seconds for a hint in milliseconds: rounded up, at least 1.
pub(crate) fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// A JSON error response with the code's status (and `Retry-After` with a retry hint); counted
/// in `bellhop_errors_total`.
pub(crate) fn error_response(
    node: &Node,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Response<Body> {
    node.count_error(code);
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, &error_body(code, message, retry_after_ms));
    if let Some(ms) = retry_after_ms {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(ms)));
    }
    response
}

/// Replaces a response's status (for statuses without a wire error code: 404, 405, 408, 426).
pub(crate) fn with_status(mut response: Response<Body>, status: StatusCode) -> Response<Body> {
    *response.status_mut() = status;
    response
}

/// The bearer token of a request: `Authorization: Bearer`, else `?token=`.
pub(crate) fn request_token<B>(req: &Request<B>) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") {
            return Some(value[7..].trim().to_owned());
        }
    }
    query_pairs(req.uri().query().unwrap_or(""))
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// Decodes the `%XX` escapes of a path segment (`+` is a plus sign there); invalid escapes are
/// kept as they are, invalid UTF-8 becomes U+FFFD.
pub(crate) fn decode_path_segment(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The `key=value` pairs of a query string, decoded as HTML forms encode them (`+` is a space,
/// then `%XX` escapes); pairs without `=` are skipped.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(move |(k, v)| (decode(k), decode(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_decode_escapes_and_keep_plus_signs() {
        assert_eq!(decode_path_segment("room%3A101"), "room:101");
        assert_eq!(decode_path_segment("a+b"), "a+b");
        assert_eq!(decode_path_segment("100%"), "100%");
        assert_eq!(decode_path_segment("%zz"), "%zz");
        assert_eq!(decode_path_segment("%4"), "%4");
        assert_eq!(decode_path_segment("%41"), "A");
        assert_eq!(decode_path_segment("%ff"), "\u{fffd}");
    }

    #[test]
    fn query_values_decode_plus_as_space() {
        let pairs: Vec<_> = query_pairs("since=1-0&limit=5&x=a+b%2Bc&flag&token=t%2E1").collect();
        assert_eq!(
            pairs,
            [
                ("since".to_string(), "1-0".to_string()),
                ("limit".into(), "5".into()),
                ("x".into(), "a b+c".into()),
                ("token".into(), "t.1".into()),
            ]
        );
        let req = Request::get("/ws?a=1&token=abc.def").body(()).unwrap();
        assert_eq!(request_token(&req).as_deref(), Some("abc.def"));
        let req = Request::get("/ws?token=q")
            .header("authorization", "bearer  h ")
            .body(())
            .unwrap();
        assert_eq!(request_token(&req).as_deref(), Some("h"), "the header wins");
    }
}
