//! The checks behind geokv's fuzz targets (`fuzz_targets/*.rs` are one line each), kept in a
//! library so `cargo test` can replay the committed seed corpus without libFuzzer.
//!
//! | target         | decoder                                           | property                     |
//! |----------------|---------------------------------------------------|------------------------------|
//! | `value_decode` | `geokv_storage::codec::decode` (on-disk values)   | no panic; decode ∘ encode round trip |
//! | `batch_decode` | `geokv_replication::Batch::decode` (wire batches) | no panic; round trip; zstd bombs refused |
//! | `config_parse` | `Topology::parse`, `Policy::parse` (TOML files)   | no panic; errors name the file; validated data keeps its invariants |
//!
//! A panic (a failed assertion included), an out-of-memory or a timeout is a finding: fix the
//! decoder and add the input as a unit test next to it.

pub mod batch;
pub mod config;
pub mod value;

#[cfg(test)]
mod seeds;
