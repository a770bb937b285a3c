//! Shared by the integration tests of the dispatcher: real servers, not doubles.
// Each test binary uses a part of this.
#![allow(dead_code)]

pub(crate) mod proxy;
pub(crate) use bellhop_testkit::redis_server;
