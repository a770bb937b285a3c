//! Opening one WebSocket to a node: `ws://` or `wss://` (the public web CAs, or exactly the CA
//! certificates of a PEM file), an optional `Authorization: Bearer` header, and an upgrade the
//! node refused turned into its status and the reason it gave. Used by [`crate::Client`] and by
//! `bellhop connect`.

use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// An open WebSocket to a node.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A TLS client configuration that trusts exactly the CA certificates in a PEM file.
pub use bellhop_tls::{trusting, CaFileError};

/// Most bytes of a refusal's body shown: the server's reason is one short JSON object.
const MAX_REASON_BYTES: usize = 512;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL or the token cannot make a request.
    #[error("{0}")]
    Invalid(String),
    /// The node answered the upgrade with an HTTP error (401, 403, 429, 503, ...).
    #[error("the server refused the upgrade: HTTP {status}{reason}{retry}",
        status = status_text(*status),
        reason = if reason.is_empty() { String::new() } else { format!(": {reason}") },
        retry = retry_after.as_ref().map(|s| format!(" (retry after {s} s)")).unwrap_or_default())]
    Refused {
        /// The HTTP status.
        status: u16,
        /// `code: message` from the body, or the body's text.
        reason: String,
        /// The `Retry-After` header, when given.
        retry_after: Option<String>,
    },
    /// Anything else: DNS, TCP, TLS, the WebSocket handshake.
    #[error(transparent)]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
}

/// `401 Unauthorized`: the code and its reason phrase.
fn status_text(status: u16) -> String {
    match tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    }
}

fn refusal(error: tokio_tungstenite::tungstenite::Error) -> OpenError {
    use tokio_tungstenite::tungstenite::Error;
    let Error::Http(response) = &error else {
        return error.into();
    };
    let body = response.body().as_deref().unwrap_or_default();
    let body = &body[..body.len().min(MAX_REASON_BYTES)];
    let reason = match serde_json::from_slice::<Value>(body) {
        Ok(v) => match v.pointer("/error/message").and_then(Value::as_str) {
            Some(message) => {
                let code = v.pointer("/error/code").and_then(Value::as_str);
                format!("{}: {message}", code.unwrap_or("error"))
            }
            None => v.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(16).collect());
    OpenError::Refused {
        status: response.status().as_u16(),
        reason,
        retry_after,
    }
}

/// Opens a WebSocket to `url`. `tls`: the configuration for `wss://` (`None`: the public web
/// CAs). `bearer`: a token sent in the upgrade's `Authorization` header (`None`: authenticate
/// with an `auth` frame afterwards, as [`crate::Client`] does).
pub async fn open(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    bearer: Option<&str>,
) -> Result<Ws, OpenError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| OpenError::Invalid(format!("invalid URL: {e}")))?;
    if let Some(token) = bearer {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| OpenError::Invalid("invalid token".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let connector = tls.map(Connector::Rustls);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
        .await
        .map_err(refusal)?;
    Ok(ws)
}
