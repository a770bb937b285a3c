//! What a client is given: its options ([`ClientOptions`]), where its token comes from
//! ([`Token`]), and the optional parts of a publish ([`PublishOptions`]). Plain data: nothing here
//! connects or decides.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::Priority;

use crate::Backoff;

/// An async function returning a fresh token (`Err`: the user has no session; the client stops).
pub type TokenFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Where the client's token comes from.
#[derive(Clone)]
pub enum Token {
    /// Used as is; when it expires the node closes with `4001` and the client stops.
    Fixed(String),
    /// Called when connecting without a usable token, before the token's `exp`, after a `4001`.
    Callback(TokenFn),
}

impl Token {
    /// A token callback from an async closure.
    pub fn callback<F, Fut>(f: F) -> Token
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Token::Callback(Arc::new(move || Box::pin(f())))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Fixed(_) => f.write_str("Token::Fixed(..)"),
            Token::Callback(_) => f.write_str("Token::Callback(..)"),
        }
    }
}

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Node URLs (`ws://` or `wss://`); after a failure the next one is tried.
    pub urls: Vec<String>,
    /// The token or the function that gets one.
    pub token: Token,
    /// Reconnect timing.
    pub backoff: Backoff,
    /// A reply must come within this (default 10 s).
    pub request_timeout: Duration,
    /// Opening and authenticating must finish within this (default 10 s).
    pub connect_timeout: Duration,
    /// A publish gives up after this long (default 60 s) ...
    pub publish_deadline: Duration,
    /// ... or this many sends (default 10).
    pub publish_max_attempts: u32,
    /// Re-authenticate this long before `exp` (default: a minute, or a tenth of the lifetime).
    pub token_refresh_lead: Option<Duration>,
    /// At most one `typing` per channel this often (default 3 s).
    pub typing_throttle: Duration,
    /// TLS configuration for `wss://` (default: the public web CAs).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Seed of the jitter's random source (tests fix it; default from the OS).
    pub seed: Option<u64>,
    /// Events a subscription buffers before the connection waits for the app to read them
    /// (default 1,024). A slow reader slows the connection, and the node may then close it with
    /// `4008`; the subscription resumes from its offset.
    pub subscription_buffer: usize,
}

impl ClientOptions {
    /// Options with the defaults for `urls` and `token`.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>, token: Token) -> Self {
        ClientOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            token,
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            publish_deadline: Duration::from_secs(60),
            publish_max_attempts: 10,
            token_refresh_lead: None,
            typing_throttle: Duration::from_secs(3),
            tls: None,
            seed: None,
            subscription_buffer: 1024,
        }
    }
}

/// Optional parts of a publish.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Raise or lower the event's default priority, as the role allows.
    pub priority: Option<Priority>,
    /// Ties this message to an earlier one.
    pub correlation_id: Option<String>,
    /// Default: a random UUID. 1 to 64 characters of `[A-Za-z0-9_.:-]`.
    pub idempotency_key: Option<String>,
    /// Default: [`ClientOptions::publish_deadline`].
    pub deadline: Option<Duration>,
}
