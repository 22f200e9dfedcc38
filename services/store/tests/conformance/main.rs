//! Integration tests of `quickp2p-store`: the conformance suite ([`cases`]) run against every
//! backend — embedded, the machine's Redis (`QP_REDIS_URL`), and a three-master Redis Cluster
//! the test starts itself — plus a white-box check of the raw Redis index (`redis_single`) and
//! resilience tests that kill and restart a Redis server.
//!
//! One test binary with modules (see DEPENDENCIES.md: fewer, smaller test binaries).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod cases;
mod cluster;
mod embedded;
mod redis_single;
mod resilience;
mod support;
