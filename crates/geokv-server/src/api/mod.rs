//! The client API: the `Kv` gRPC service and its handlers (`kv.rs`), request metrics around
//! each handler (`observed.rs`), the conversion between protobuf and core types
//! (`convert.rs`), errors to gRPC status codes, in one place (`status.rs`), and requests served
//! through another region (`forward.rs`), the `Watch` stream (`watch.rs`), and operating the deployment with a client's
//! credentials (`admin.rs`).

pub mod admin;
pub mod convert;
pub mod forward;
pub mod kv;
pub mod observed;
pub mod status;
pub mod watch;
