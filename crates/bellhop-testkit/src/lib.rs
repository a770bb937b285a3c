//! Test support shared by Bellhop's crates: real servers, not doubles, started on free loopback
//! ports and stopped when dropped, the clients and books of fault-injection tests, throwaway
//! TLS certificates, the envelopes tests publish, the forwarding that broker doubles share, and how a test skips for a missing tool (`skip`). Used only as a dev-dependency.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod envelope;
pub mod forward;
pub mod jwt;
pub mod ledger;
pub mod redis_cluster;
pub mod redis_server;
pub mod skip;
pub mod tls;
pub mod traffic;

pub use jwt::{jwks, KeyFiles, KeyKind, TestSigningKey};
pub use ledger::{Figures, Offset, Progress, PublishLog, Received};
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisOptions, RedisServer};
pub use tls::TestCerts;
pub use traffic::{Follower, HttpPublisher, Targets, WsPublisher};
