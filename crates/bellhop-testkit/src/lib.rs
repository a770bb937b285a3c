//! Test support shared by Bellhop's crates: real servers, not doubles, started on free loopback
//! ports and stopped when dropped. Used only as a dev-dependency.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod redis_server;

pub use redis_server::RedisServer;
