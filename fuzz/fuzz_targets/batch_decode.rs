//! geokv-replication's batch wire format: never panics; what decodes round-trips.
//! The checks live in [`geokv_fuzz::batch`], so `cargo test` replays the corpus without libFuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geokv_fuzz::batch::check(data));
