//! Generated gRPC types and stubs for `proto/geokv/v1`. Shared by the server and the client
//! library; nothing here knows about storage.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("geokv.v1");
}

/// Encoded `FileDescriptorSet` of every geokv proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("geokv_descriptor");
