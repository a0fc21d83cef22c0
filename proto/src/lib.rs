//! The proxyfleet wire protocol, generated from `proto/proxyfleet/v1/proxyfleet.proto`, and its
//! descriptor set for reflection. Nothing else: what the parts share besides the wire is in
//! `proxyfleet-common`.

#![allow(clippy::large_enum_variant, clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    tonic::include_proto!("proxyfleet.v1");
}

/// Encoded `FileDescriptorSet` of every proxyfleet proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/proxyfleet_descriptor.bin"));
