//! proxyfleet test kit: simulated proxies, process harness.
pub mod sim;
