//! proxyfleet test kit: simulated proxies, process harness.

pub mod certs;
pub mod harness;
pub mod lists;
pub mod sim;
pub mod third_party;
