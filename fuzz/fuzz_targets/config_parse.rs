//! Topology files and residency policies: never panic; bad input is an error naming the file.
//! The checks live in [`geokv_fuzz::config`], so `cargo test` replays the corpus without libFuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geokv_fuzz::config::check(data));
