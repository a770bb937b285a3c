//! Bellhop's load generator: opens many authenticated WebSocket connections, subscribes them by a
//! scenario, publishes at a target rate and measures end-to-end latency, deliveries, errors and
//! the server's RSS and CPU. The same scenarios run against NATS and Socket.IO through small
//! adapters ([`systems`]), so every figure can be given as a ratio. See docs/BENCHMARKS.md.

pub mod ceiling;
pub mod client;
pub mod report;
pub mod scenarios;
pub mod servers;
pub mod stats;
pub mod systems;
