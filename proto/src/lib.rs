//! The proxyfleet wire protocol, generated from `proto/proxyfleet/v1/proxyfleet.proto`.

#![allow(clippy::large_enum_variant, clippy::derive_partial_eq_without_eq)]

pub mod addr;
pub mod auth;
pub mod guard;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod results;
pub mod tls;
pub mod url;

pub mod v1 {
    tonic::include_proto!("proxyfleet.v1");
}

/// Encoded `FileDescriptorSet` of every proxyfleet proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/proxyfleet_descriptor.bin"));
