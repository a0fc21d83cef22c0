//! proxyfleet test kit: simulated proxies, process harness, a relay that partitions on demand, a
//! poison proxy that kills the worker that connects to it, web sites (public-style judges, a shop
//! to check proxies against), and a real browser driven over WebDriver.

pub mod certs;
pub mod harness;
pub mod poison;
pub mod relay;
pub mod sites;
pub mod third_party;
pub mod webdriver;

// The simulated proxy farm and its list server live in `proxyfleet-farm`, which the CLI links
// too; the kit re-exports them under their old paths.
pub use proxyfleet_farm::{lists, sim};
