//! The Rust client for Bellhop, with the semantics of the TypeScript SDK (`clients/typescript`):
//!
//! - connection states ([`State`]: `Disconnected`, `Connecting`, `Connected`, `Closed`) on a
//!   [`tokio::sync::watch`], and every transition and notable thing as an [`Event`] on a
//!   [`tokio::sync::broadcast`];
//! - the token as a string or an async callback ([`Token`]) that is called again before the
//!   token expires (an `auth` frame on the open connection, no reconnect) and after a `4001`;
//! - reconnects with full-jitter exponential backoff, decided by the close code
//!   ([`backoff::plan_after_close`]), across every node URL given;
//! - subscriptions ([`Subscription`]) that own the offset of the last message they delivered,
//!   resubscribe with `since` after any reconnect, drop anything at or before it, and surface
//!   `recovered: false` as [`SubEvent::RecoveryFailed`];
//! - [`Client::publish`] resolving with the stored message's ack, with an idempotency key that
//!   every retry (`unavailable`, `rate_limited`, timeouts, lost connections) reuses;
//! - history with paging (`more`), presence, throttled typing, read markers.
//!
//! All JSON; frames are the protocol crate's types.

pub mod backoff;
mod client;
mod connection;
mod events;
mod options;
mod session;
mod shared;
pub mod token;
pub mod transport;

pub use backoff::{Backoff, Plan};
pub use bellhop_protocol as protocol;
pub use client::{Client, HistoryPages, Subscription};
pub use events::{Error, Event, HistoryPage, PublishAck, ReadAck, State, SubEvent, SubState};
pub use options::{ClientOptions, PublishOptions, Token, TokenFn};
